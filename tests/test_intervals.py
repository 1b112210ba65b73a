"""Half-sampling intervals of FID and KID against ground truth on Gaussians.

The truth an interval at (n_gen, n_ref) claims to cover is the statistic's expectation at those
sizes: the mean of the estimate over fresh draws of both sets (computed here from 1,000 fresh
draws; its own error is about se / 30, negligible against the interval's half-width of 2 se).
Coverage is measured over R = 200 independent draws.  With R = 200 the binomial standard error
of a 95% coverage is sqrt(0.95 * 0.05 / 200) = 0.015, so the accepted band [0.90, 0.99] is
about 3 standard errors below and 2.5 above: a correct method fails it with probability
below 0.3%, while an interval of half the right width (coverage ~ 0.68) or twice (~ 1.0) fails.
Every random draw is seeded, so the test is deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.core.errors import MetricError
from benchmark.eval import metrics as M
from benchmark.eval.intervals import half_sample_interval

D, N_GEN, N_REF = 4, 60, 120
SCALE = np.linspace(0.5, 1.5, D)


def _draw(rng, shift):
    gen = rng.normal(size=(N_GEN, D)) * SCALE + shift
    ref = rng.normal(size=(N_REF, D)) * SCALE
    return gen, ref


def _coverage(statistic, shift, *, repeats=200, replicates=40, truth_draws=1000, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.mean([statistic(*_draw(rng, shift)) for _ in range(truth_draws)])
    hits, contains = 0, 0
    for r in range(repeats):
        gen, ref = _draw(rng, shift)
        est = statistic(gen, ref)
        iv = half_sample_interval(statistic, gen, ref, estimate=est, replicates=replicates, seed=r)
        contains += iv.low <= est <= iv.high
        hits += iv.low <= truth <= iv.high
    return hits / repeats, contains / repeats, truth


def _fid(a, b):
    return M.fid(a, b)


def _kid(a, b):
    """KID's unbiased MMD^2 with the cubic kernel on the whole sets (M.kid at subset size >= n, checked
    below), written out in numpy because 10,000 calls of the library function take seconds."""
    d, m, n = a.shape[1], len(a), len(b)
    kxx, kyy, kxy = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.mean())


def test_the_kid_written_out_here_is_the_metric():
    gen, ref = _draw(np.random.default_rng(3), 0.5)
    assert _kid(gen, ref[:N_GEN]) == pytest.approx(M.kid(gen, ref[:N_GEN], subsets=5, subset_size=10_000, seed=0)[0],
                                                   rel=1e-10)


@pytest.mark.parametrize("name,statistic", [("fid", _fid), ("kid", _kid)])
def test_interval_contains_its_estimate_and_covers_the_expectation_at_nominal_rate(name, statistic):
    coverage, contains, truth = _coverage(statistic, shift=0.5)
    print(f"{name}: expectation {truth:.4f} at n={N_GEN}/{N_REF}, coverage of 95% interval {coverage:.3f}")
    assert contains == 1.0
    assert 0.90 <= coverage <= 0.99


def test_interval_is_conservative_when_the_distributions_agree():
    # FID near 0 fluctuates at rate 1/n, not 1/sqrt(n): the 1/n rate correction overstates the spread
    coverage, contains, _ = _coverage(_fid, shift=0.0, repeats=100)
    assert contains == 1.0 and coverage >= 0.95


def test_the_replaced_bootstrap_fails_the_same_check():
    # resampling the generated set with replacement (the old method), 64-d, 200 vs 2000: duplicates inflate
    # FID and its percentile interval lies wholly above the estimate; half-sampling contains it
    rng = np.random.default_rng(1)
    gen, ref = rng.normal(size=(200, 64)) + 0.1, rng.normal(size=(2000, 64))
    est = _fid(gen, ref)
    boot = [_fid(gen[rng.integers(0, 200, 200)], ref) for _ in range(50)]
    assert np.percentile(boot, 2.5) > est
    iv = half_sample_interval(_fid, gen, ref, estimate=est, replicates=20, seed=0)
    assert iv.low < est < iv.high


def test_too_small_a_slice_is_refused_with_the_reason():
    gen, ref = np.zeros((3, D)), np.zeros((40, D))
    with pytest.raises(MetricError, match="too few"):
        half_sample_interval(_fid, gen, ref, estimate=1.0, replicates=10, seed=0)
    with pytest.raises(MetricError, match="not finite"):
        half_sample_interval(_fid, ref, ref, estimate=float("nan"), replicates=10, seed=0)
