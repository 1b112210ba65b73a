"""Seed-level claims: is the best method of a leaderboard column better than the others?

Why paired: every method of one cell seed samples from the same initial noise per image and is
scored against the same reference images, so a lucky or unlucky seed moves all methods together.
That shared term is most of the seed-to-seed spread a leaderboard shows, and a rule that compares
one method's lead with its seed spread (an unpaired rule) counts it against a lead it does not
touch.  The paired test looks at the per-seed difference d_s between two methods instead, in
which the shared term cancels.

What is computed (``compare``): on the seeds both methods have (``n_seeds`` of them; a seed one
of them lacks is dropped, the note says so), the best method's advantage d_s = badness(other) -
badness(best), where badness is the value for a lower-is-better column, minus the value for a
higher-is-better one, and |value - target| for a column ranked by closeness to a target (the
Vendi ratio: 1).  d_s > 0 means the best method did better on seed s, in the column's units.
Reported: the mean of d_s, its interval mean +- t_{n-1} se (se = std(d, ddof=1) / sqrt(n)), and
the two-sided p-value of the paired t test of mean 0.  With fewer than 2 paired seeds there is
no spread to test against: p and the interval are NaN and the note says why.  When d_s is the
same on every paired seed (no spread at all) the test is degenerate: p = 0 with an interval of
that one value when it is non-zero, p = 1 when it is zero; the note says so.

Assumption: the seed-level differences are roughly normal (the t distribution then gives exact
coverage).  n is the number of seeds, not of images, so with the usual 3 seeds the interval has
2 degrees of freedom and is wide (t = 4.30 against 1.96): that width is honest, it is what three
seeds can tell.  Measured on synthetic seeds with a known truth (tests/test_seeds.py): the false
positive rate at 5% and the interval's coverage of the true mean difference.

The best method is the one with the smallest mean badness over all its seeds (for a target
column: the mean distance to the target per seed, so seeds on both sides of the target do not
average into a perfect score); it is compared with every other method, the runner-up first.
``Comparison.separated`` asks for both: p < ALPHA and a positive mean advantage on the shared
seeds (a best mean that the shared seeds contradict is never called separated).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05  # a lead counts as separated when the paired test's two-sided p is below this
LEVEL = 0.95  # the interval's confidence level
MIN_PAIRED = 2  # a t test needs a spread: at least two paired seeds

PerSeed = Mapping[object, float]  # {seed: value}


@dataclass(frozen=True)
class PairedTest:
    """The best method's advantage over another one on the seeds both have (see the module doc)."""

    mean_diff: float
    ci_low: float
    ci_high: float
    p: float
    n_seeds: int
    note: str = ""

    @property
    def separated(self) -> bool:
        """The advantage is significant at ``ALPHA`` (False when there was no test)."""
        return bool(self.p < ALPHA)  # NaN < x is False


@dataclass(frozen=True)
class Comparison:
    best: str
    other: str
    lead: float  # difference of the two methods' mean badness over all their seeds (>= 0; 0 on a tie of means)
    test: PairedTest

    @property
    def separated(self) -> bool:
        """The best method is ahead and the paired test separates it from ``other``."""
        return self.test.separated and self.test.mean_diff > 0


def badness(values: np.ndarray | Sequence[float], *, lower_is_better: bool, target: float | None = None) -> np.ndarray:
    """What the column ranks by, smaller is better: the value, minus it, or its distance to ``target``."""
    values = np.asarray(values, dtype=float)
    if target is not None:
        return np.abs(values - target)
    return values if lower_is_better else -values


def paired_t(diffs: Sequence[float], *, level: float = LEVEL) -> PairedTest:
    """Mean of per-seed differences, its t interval and the two-sided p of mean 0."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n < MIN_PAIRED:
        mean = float(d.mean()) if n else math.nan
        return PairedTest(mean, math.nan, math.nan, math.nan, n,
                          f"not tested: {n} paired seed{'s' if n != 1 else ''}, a t test needs at least {MIN_PAIRED}")
    mean = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    largest = float(np.abs(d).max())
    if largest == 0.0:
        return PairedTest(0.0, 0.0, 0.0, 1.0, n, "no spread: identical on every paired seed")
    if se <= 1e-9 * largest:  # the same difference on every seed, up to rounding
        return PairedTest(mean, mean, mean, 0.0, n, "no spread: the same difference on every paired seed")
    df = n - 1
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * stats.t.sf(abs(mean) / se, df))
    return PairedTest(mean, mean - half, mean + half, p, n)


def compare(first: PerSeed, second: PerSeed, *, lower_is_better: bool, target: float | None = None,
            level: float = LEVEL) -> PairedTest:
    """``first``'s advantage over ``second`` (positive: first is better) on the seeds both have."""
    first = {s: v for s, v in first.items() if not _missing(v)}
    second = {s: v for s, v in second.items() if not _missing(v)}
    seeds = sorted(set(first) & set(second), key=str)
    b1 = badness([first[s] for s in seeds], lower_is_better=lower_is_better, target=target)
    b2 = badness([second[s] for s in seeds], lower_is_better=lower_is_better, target=target)
    d = b2 - b1
    d[np.abs(d) <= 1e-12 * np.maximum(np.abs(b1), np.abs(b2))] = 0.0  # equal values up to rounding
    test = paired_t(d, level=level)
    dropped = len(set(first) | set(second)) - len(seeds)
    if dropped:
        why = f"{dropped} seed{'s' if dropped != 1 else ''} not shared by both methods dropped"
        test = PairedTest(test.mean_diff, test.ci_low, test.ci_high, test.p, test.n_seeds,
                          f"{test.note}; {why}" if test.note else why)
    return test


def rank(per_seed: Mapping[str, PerSeed], *, lower_is_better: bool, target: float | None = None) -> dict[str, float]:
    """{method: mean badness over its seeds} of the methods with a value, best first (stable on ties)."""
    means = {}
    for method, values in per_seed.items():
        kept = [v for v in values.values() if not _missing(v)]
        if kept:
            means[method] = float(badness(kept, lower_is_better=lower_is_better, target=target).mean())
    return {m: means[m] for m in sorted(means, key=means.get)}


def compare_best(per_seed: Mapping[str, PerSeed], *, lower_is_better: bool, target: float | None = None,
                 level: float = LEVEL) -> list[Comparison]:
    """The best method against each other one, runner-up first; [] with fewer than two methods."""
    means = rank(per_seed, lower_is_better=lower_is_better, target=target)
    if len(means) < 2:
        return []
    best, *others = means

    def lead(other: str) -> float:  # equal means up to rounding are a tie
        gap = means[other] - means[best]
        return 0.0 if gap <= 1e-12 * max(abs(means[other]), abs(means[best])) else gap

    return [Comparison(best, other, lead(other),
                       compare(per_seed[best], per_seed[other], lower_is_better=lower_is_better, target=target,
                               level=level))
            for other in others]  # fmt: skip


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(float(value))
