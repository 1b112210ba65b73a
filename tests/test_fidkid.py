"""FID and KID by the routes of benchmark.eval.fidkid equal torch-fidelity's and clean-fid's numbers.

Tolerances (relative): 1e-10 where both sides compute the same quantity in float64 (measured
differences 1e-15 to 5e-14); 1e-6 against torch-fidelity when a covariance is singular (n <= D),
because its general eigensolver returns the D - n + 1 zero eigenvalues of S1 S2 as roundoff of size
eps |S1 S2|, whose square roots enter its sum at about sqrt(eps) (measured 1e-9 to 9e-8).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from cleanfid.fid import frechet_distance
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric

from benchmark.eval import fidkid as F
from benchmark.eval import metrics as M


def cloud(n, d, shift=0.0, scale=1.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)) * scale + shift


def tf_fid(a, b):
    s1 = fid_features_to_statistics(torch.from_numpy(a))
    s2 = fid_features_to_statistics(torch.from_numpy(b))
    return fid_statistics_to_metric(s1, s2, False)["frechet_inception_distance"]


def clean_fid(a, b):
    with contextlib.redirect_stdout(io.StringIO()):
        return float(frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))


def svd_fid(a, b):
    """FID with tr sqrt(S1 S2) as the nuclear norm of A B^T by an SVD: exact for any n."""
    n1, n2 = len(a), len(b)
    ca, cb, diff = a - a.mean(0), b - b.mean(0), a.mean(0) - b.mean(0)
    nuclear = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    return diff @ diff + (ca * ca).sum() / (n1 - 1) + (cb * cb).sum() / (n2 - 1) - 2 * nuclear / np.sqrt((n1 - 1) * (n2 - 1))


@pytest.mark.parametrize("d", [8, 64, 256])
@pytest.mark.parametrize("n1,n2", [(1, 1), (2, 3), (10, 10)], ids=["n=D+1", "n=2D,3D", "n=10D"])
def test_full_rank_fid_equals_torch_fidelity_and_clean_fid(d, n1, n2):
    a, b = cloud(n1 * d + 1, d, seed=1), cloud(n2 * d + 2, d, 0.2, 1.1, seed=2)
    ours = M.fid(a, b)
    assert ours == pytest.approx(tf_fid(a, b), rel=1e-10)
    assert ours == pytest.approx(clean_fid(a, b), rel=1e-10)
    s1, s2 = (fid_features_to_statistics(torch.from_numpy(x)) for x in (a, b))
    assert F.frechet(s1["mu"], s1["sigma"], s2["mu"], s2["sigma"]) == pytest.approx(
        fid_statistics_to_metric(s1, s2, False)["frechet_inception_distance"], rel=1e-10)
    assert abs(M.fid(a, a)) < 1e-10 * np.trace(np.cov(a, rowvar=False))


LOW_RANK = {"2 vs 3": lambda d: (2, 3), "3 vs 40": lambda d: (3, 40), "D/2": lambda d: (d // 2, d // 2 + 3),
            "n = D": lambda d: (d, d)}


@pytest.mark.parametrize("d", [8, 64, 256])
@pytest.mark.parametrize("shape", LOW_RANK)
def test_low_rank_fid_equals_the_exact_svd_route_and_torch_fidelity(d, shape):
    n1, n2 = LOW_RANK[shape](d)
    a, b = cloud(n1, d, seed=3), cloud(n2, d, 0.1, seed=4)
    ours = F.fid_low_rank(a, b)
    assert M.fid(a, b) == ours
    assert ours == pytest.approx(svd_fid(a, b), rel=1e-12)
    assert ours == pytest.approx(tf_fid(a, b), rel=1e-6)
    assert abs(F.fid_low_rank(a, a)) < 1e-10 * (a - a.mean(0)).var(0).sum()


def test_a_singular_covariance_above_n_d_takes_the_eigendecomposition_and_agrees():
    a, b = cloud(300, 16, seed=5), cloud(400, 16, 0.3, seed=6)
    b[:, 15] = b[:, 0]  # rank 15: Cholesky fails, the factor comes from eigh with the zero kept at 0
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(np.cov(b, rowvar=False))
    f = F.cov_factor(np.cov(b, rowvar=False))
    assert np.allclose(f @ f.T, np.cov(b, rowvar=False), atol=1e-12)
    assert M.fid(a, b) == pytest.approx(svd_fid(a, b), rel=1e-10)
    assert M.fid(a, b) == pytest.approx(tf_fid(a, b), rel=1e-6)


def test_pooled_statistics_equal_the_statistics_of_the_pooled_features():
    parts = [cloud(n, 12, shift=s, scale=sc, seed=i) for i, (n, s, sc) in enumerate([(50, 0, 1), (7, 3, 0.5), (200, -1, 2)])]
    pooled = F.Gaussian.pooled([F.Gaussian.of(p) for p in parts])
    direct = F.Gaussian.of(np.concatenate(parts))
    assert pooled.n == direct.n == 257
    assert np.allclose(pooled.mean, direct.mean, rtol=0, atol=1e-14)
    assert np.abs(pooled.scatter - direct.scatter).max() <= 1e-12 * np.abs(direct.scatter).max()


def test_scatter_in_chunks_equals_numpys_covariance(monkeypatch):
    x = cloud(257, 12, shift=2.0, scale=3.0, seed=5)
    whole = F.Gaussian.of(x)
    monkeypatch.setattr(F, "_SCATTER_ROWS", 16)  # 17 chunks, the last one short
    chunked = F.Gaussian.of(x)
    assert np.abs(chunked.scatter - whole.scatter).max() <= 1e-12 * np.abs(whole.scatter).max()
    np.testing.assert_allclose(chunked.cov, np.cov(x, rowvar=False), rtol=1e-12, atol=1e-12)


def test_statistics_of_gathered_rows_equal_those_of_a_copy_bit_for_bit(monkeypatch):
    # a paper-scale group is gathered a chunk at a time instead of copied whole (270 MB a side)
    monkeypatch.setattr(F, "_SCATTER_ROWS", 16)
    x = cloud(300, 7, shift=1.5, scale=2.0, seed=9)
    rng = np.random.default_rng(3)
    for rows in (np.sort(rng.choice(300, 120, replace=False)), np.arange(40, 200), np.sort(rng.choice(300, 9, replace=False))):
        got, want = F.Gaussian.of(x, rows), F.Gaussian.of(x[rows])
        assert got.n == want.n == len(rows)
        assert np.array_equal(got.mean, want.mean) and np.array_equal(got.scatter, want.scatter)


def test_a_slice_of_consecutive_rows_is_a_view_and_others_a_copy():
    x = np.arange(20.0).reshape(10, 2)
    consecutive, scattered = np.zeros(10, bool), np.zeros(10, bool)
    consecutive[3:7], scattered[[1, 4, 5]] = True, True
    assert np.shares_memory(M._take(x, consecutive), x) and np.array_equal(M._take(x, consecutive), x[consecutive])
    assert not np.shares_memory(M._take(x, scattered), x) and np.array_equal(M._take(x, scattered), x[scattered])
    assert M._take(x, np.zeros(10, bool)).shape == (0, 2)


def test_group_fid_from_class_statistics_equals_fid_on_the_pooled_features():
    d, per = 6, [40, 25, 30, 5, 50]  # groups above D, pooled from classes above D and the rows of class 3
    rng = np.random.default_rng(7)
    gl, rl = np.repeat(np.arange(5), per), np.repeat(np.arange(5), [45, 30, 20, 4, 60])
    g, r = rng.normal(size=(len(gl), d)) + gl[:, None] * 0.3, rng.normal(size=(len(rl), d)) + rl[:, None] * 0.25
    groups = ["many", "many", "few", "few", "few"]
    rows = M.compute_rows(g, gl, r, rl, groups=groups, kid_subsets=5, kid_subset_size=20, seed=0)
    fid = {(x["group"], x["class"]): x["value"] for x in rows if x["metric"] == "fid"}
    for name, classes in (("many", [0, 1]), ("few", [2, 3, 4])):
        assert fid[(name, None)] == pytest.approx(tf_fid(g[np.isin(gl, classes)], r[np.isin(rl, classes)]), rel=1e-10)
    assert fid[("all", None)] == pytest.approx(tf_fid(g, r), rel=1e-10)
    assert fid[("class", 0)] == pytest.approx(tf_fid(g[gl == 0], r[rl == 0]), rel=1e-10)


def test_slice_statistics_nest_and_the_cache_gives_back_what_a_fresh_computation_gives():
    labels = np.repeat(np.arange(4), [30, 20, 25, 40])
    x = cloud(len(labels), 5, seed=8) + labels[:, None]
    slices = [(None, None), (frozenset({0, 1}), np.isin(labels, [0, 1])), (frozenset({0}), labels == 0),
              (frozenset({3}), labels == 3)]
    key = F.content_key(x, labels, [c for c, _ in slices])
    F.clear_reference_cache()
    fresh = F.slice_statistics(x, slices, cache_key=key)
    for (_, mask), got in zip(slices, fresh):
        want = F.Gaussian.of(x if mask is None else x[mask])
        assert got.n == want.n and np.allclose(got.scatter, want.scatter, rtol=1e-12, atol=1e-12)
    assert F.slice_statistics(x, slices, cache_key=key) is fresh  # kept
    F.clear_reference_cache()
    again = F.slice_statistics(x, slices, cache_key=key)
    assert again is not fresh and all(np.array_equal(a.scatter, b.scatter) for a, b in zip(again, fresh))
    other = x.copy()
    other[0, 0] += 1e-9
    assert F.content_key(other, labels, [c for c, _ in slices]) != key
    assert F.content_key(x, labels, [c for c, _ in slices[:2]]) != key


@pytest.mark.parametrize("n1,n2,m,subsets", [(60, 70, 40, 15), (300, 250, 100, 50), (500, 500, 60, 3), (40, 40, 40, 1)])
@pytest.mark.parametrize("whole", [True, False], ids=["whole-set sums", "per-subset kernels"])
def test_kid_is_torch_fidelitys_for_the_same_seed_by_both_routes(n1, n2, m, subsets, whole, monkeypatch):
    a, b = cloud(n1, 32, seed=9), cloud(n2, 32, 0.2, seed=10)
    want = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=subsets, kid_subset_size=m,
                                  rng_seed=7, verbose=False)
    monkeypatch.setattr(F, "whole_set_is_cheaper", lambda *args: whole)
    mmds = F.mmd2_subsets(a, b, F.subset_draws(n1, n2, m, subsets, 7))
    assert mmds.mean() == pytest.approx(want["kernel_inception_distance_mean"], rel=1e-10)
    assert mmds.std() == pytest.approx(want["kernel_inception_distance_std"], rel=1e-10, abs=1e-15)
    mean, std, used = M.kid(a, b, subsets=subsets, subset_size=m, seed=7)
    assert used == m and mean == pytest.approx(want["kernel_inception_distance_mean"], rel=1e-10)


def test_kid_whole_set_sums_hold_over_many_blocks(monkeypatch):
    a, b = cloud(90, 16, seed=11), cloud(70, 16, 0.3, seed=12)
    draws = F.subset_draws(90, 70, 30, 8, 3)
    one = F._mmd2_from_sums(a, b, draws, 30)
    monkeypatch.setattr(F, "KERNEL_BLOCK", 200)  # blocks of 2-3 rows: the triangle bookkeeping is exercised
    assert np.allclose(F._mmd2_from_sums(a, b, draws, 30), one, rtol=1e-12, atol=0)


def test_the_whole_set_route_is_taken_only_when_it_has_fewer_kernel_entries():
    assert F.whole_set_is_cheaper(1000, 1000, 1000, 1)  # one subset of everything: the same entries
    assert F.whole_set_is_cheaper(5000, 5000, 1000, 100)
    assert not F.whole_set_is_cheaper(50_000, 50_000, 1000, 100)
    assert not F.whole_set_is_cheaper(17_000, 17_000, 1000, 100)


def test_slices_at_or_below_the_dimension_form_no_covariance(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("D x D statistics formed for a slice with n <= D")

    monkeypatch.setattr(M, "slice_statistics", boom)
    monkeypatch.setattr(M, "content_key", boom)
    rows = M.compute_rows(cloud(30, 64, seed=13), np.zeros(30, int), cloud(64, 64, 0.2, seed=14), np.zeros(64, int),
                          groups=["many"], kid_subsets=3, kid_subset_size=20)
    fids = [x for x in rows if x["metric"] == "fid"]
    assert len(fids) == 3 and all(np.isfinite(x["value"]) and "small-n" in x["note"] for x in fids)


@pytest.mark.parametrize("subset_size", [30, 1000], ids=["mixed routes", "every slice whole-set"])
def test_kid_of_every_slice_in_shuffled_rows_is_torch_fidelitys_on_the_slice_alone(subset_size):
    rng = np.random.default_rng(15)
    gl, rl = rng.permutation(np.repeat(np.arange(5), [50, 45, 40, 35, 60])), rng.permutation(np.repeat(np.arange(5), 48))
    g, r = rng.normal(size=(len(gl), 12)) + gl[:, None] * 0.2, rng.normal(size=(len(rl), 12)) + rl[:, None] * 0.2
    groups = ["many", "many", "medium", "few", "few"]
    rows = M.compute_rows(g, gl, r, rl, groups=groups, kid_subsets=10, kid_subset_size=subset_size, seed=4)
    got = {(x["group"], x["class"]): x["value"] for x in rows if x["metric"] == "kid"}
    named = {("all", None): range(5), ("many", None): [0, 1], ("medium", None): [2], ("few", None): [3, 4],
             **{("class", c): [c] for c in range(5)}}
    for key, classes in named.items():
        a, b = g[np.isin(gl, list(classes))], r[np.isin(rl, list(classes))]
        m, subsets = F.kid_plan(len(a), len(b), 10, subset_size)
        want = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=subsets, kid_subset_size=m,
                                      rng_seed=4, verbose=False)["kernel_inception_distance_mean"]
        assert got[key] == pytest.approx(want, rel=1e-10), key


@pytest.mark.parametrize("block", [1 << 22, 300], ids=["one block", "blocks of 2-3 rows"])
def test_nested_slices_share_one_kernel_pass_and_keep_their_own_sums(block, monkeypatch):
    monkeypatch.setattr(F, "KERNEL_BLOCK", block)
    a, b = cloud(120, 8, seed=16), cloud(100, 8, 0.2, seed=17)
    slices = [((0, 120), (0, 100)), ((0, 70), (0, 40)), ((70, 120), (40, 100)), ((10, 30), (5, 25))]
    draws = [[(lo + np.asarray(i), lo2 + np.asarray(j)) for i, j in F.subset_draws(gb - lo, rb - lo2, m, 4, s)]
             for s, (((lo, gb), (lo2, rb)), m) in enumerate(zip(slices, (60, 30, 35, 12)))]
    calls = []
    real = F.poly_kernel
    monkeypatch.setattr(F, "poly_kernel", lambda x, y: calls.append(len(x) * len(y)) or real(x, y))
    shared = F.mmd2_slices(a, b, slices, draws)
    entries = sum(calls)
    calls.clear()
    F.mmd2_slices(a, b, slices[:1], draws[:1])
    assert entries == sum(calls)  # the slices inside add no kernel entries
    assert entries == 120**2 + 100**2 + 120 * 100 or block < 1 << 22
    for ((ga, gb), (ra, rb)), d, got in zip(slices, draws, shared):
        alone = F.mmd2_slices(a[ga:gb], b[ra:rb], [((0, gb - ga), (0, rb - ra))], [[(i - ga, j - ra) for i, j in d]])[0]
        assert np.allclose(got, alone, rtol=1e-12, atol=0)


def test_rows_in_order_are_a_view_for_a_run_and_a_copy_otherwise():
    x = np.arange(40.0).reshape(10, 4)
    run = F._in_order(x, np.arange(3, 8))
    assert np.shares_memory(run, x) and np.array_equal(run, x[3:8])
    shuffled = np.array([3, 5, 4, 6])
    assert not np.shares_memory(F._in_order(x, shuffled), x) and np.array_equal(F._in_order(x, shuffled), x[shuffled])
    assert F._in_order(x, np.array([], dtype=int)).shape == (0, 4)
