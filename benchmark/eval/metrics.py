"""Generation metrics as pure functions of feature arrays, sliced overall / per group / per class.

Every number comes from the features of the generated set and of the reference set, so one
feature pass serves all slices.  The feature-level functions of torch-fidelity are used where
they exist (FID statistics, KID's unbiased MMD, Inception Score).  Improved precision/recall
and density/coverage (Naeem et al. 2020) come together from one chunked set of k-NN passes
(``benchmark.eval.knn``), equal to torch-fidelity's precision/recall (tested against it).

Two speed-ups keep 100 per-class slices close to the cost of one overall pass, both exact:
- FID for a slice with fewer samples than feature dimensions uses tr sqrt(S1 S2) =
  ||A B^T||_* / sqrt((n1-1)(n2-1)) (A, B the centred feature matrices): the nonzero
  eigenvalues of S1 S2 are the squared singular values of A B^T / sqrt(...), so an n x n SVD
  replaces a D x D eigendecomposition.  Tested against torch-fidelity's function.
- KID for a small slice computes the three polynomial-kernel matrices once and evaluates
  torch-fidelity's ``mmd2`` on sub-blocks, with the same subset draws as
  ``kid_features_to_metric`` (same seed gives the same number).

Rules for small and odd slices: every row carries n_gen and n_ref; a metric that cannot be
computed, for whatever reason (too few samples, or a numeric failure inside a library), gives
value NaN and a note ``skipped: <why>`` (never 0) and the other rows are kept; FID with
n <= feature dim (singular covariance) is computed and flagged ``small-n``; the KID subset size
shrinks to the smaller set and is recorded, and when both sets are that small every "subset"
is the whole set: computed once, noted ``degenerate subsets``, and no std is claimed; IS needs
at least 2 images per split (splits shrink to n // 2, recorded) and is skipped below n = 10.
A group with no classes (10-class data under the threshold rule) yields no rows.

Group rows (many / medium / few) pool the group's features into one set (note ``pooled``);
``<metric>_classmean`` rows add the mean of the group's per-class values (the other number
tail papers report), with the class count in the note.

``bootstrap=B`` adds ``fid_ci_low/fid_ci_high`` and ``kid_ci_low/kid_ci_high`` rows: 95%
intervals from B half-samples of both sets without replacement (intervals.py says why this and
not the bootstrap), centred on the estimate.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math

import numpy as np
import torch
from cleanfid.fid import frechet_distance, kernel_distance
from torch_fidelity.metric_fid import (
    fid_features_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric, mmd2

from benchmark.core.errors import MetricError
from benchmark.core.names import (
    ALL,
    CLASS,
    COVERAGE,
    DENSITY,
    FID,
    GROUPS,
    IS,
    KID,
    LABEL_ACC,
    PRECISION,
    RECALL,
    ci_high,
    ci_low,
    class_mean,
    is_interval,
)
from benchmark.eval.intervals import half_sample_interval
from benchmark.eval.knn import knn_metrics

# the version of the statistics' definitions: bumped whenever a row would come out differently from the same
# features (it enters the real-floor cache key, so a cached floor of an older version is recomputed)
STATS_VERSION = 3
_KERNEL_CACHE_LIMIT = 30_000_000  # kernel entries we are willing to hold to reuse across KID subsets


# ---------------------------------------------------------------- single-slice metrics


def _need(n: int, least: int, what: str, side: str) -> None:
    if n < least:
        raise MetricError(f"{what} needs at least {least} {side} samples, got {n}")


def fid(gen: np.ndarray, ref: np.ndarray, *, backend: str = "torch-fidelity") -> float:
    """Frechet distance between Gaussian fits of two feature sets (needs n >= 2 on each side)."""
    _need(len(gen), 2, "FID", "generated")
    _need(len(ref), 2, "FID", "reference")
    if backend == "clean-fid":
        with contextlib.redirect_stdout(io.StringIO()):  # clean-fid prints its singular-product notice
            return float(frechet_distance(gen.mean(0), np.cov(gen, rowvar=False), ref.mean(0), np.cov(ref, rowvar=False)))
    if backend != "torch-fidelity":
        raise MetricError(f"unknown FID backend {backend!r}; use torch-fidelity or clean-fid")
    if min(len(gen), len(ref)) <= gen.shape[1]:
        return _fid_low_rank(gen, ref)
    s1 = fid_features_to_statistics(torch.from_numpy(np.ascontiguousarray(gen, dtype=np.float64)))
    s2 = fid_features_to_statistics(torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float64)))
    return float(fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"])


def _fid_low_rank(gen: np.ndarray, ref: np.ndarray) -> float:
    a = gen - gen.mean(0)
    b = ref - ref.mean(0)
    n1, n2 = len(gen), len(ref)
    diff = gen.mean(0) - ref.mean(0)
    tr1 = np.einsum("ij,ij->", a, a) / (n1 - 1)
    tr2 = np.einsum("ij,ij->", b, b) / (n2 - 1)
    nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    return float(diff @ diff + tr1 + tr2 - 2 * nuclear / math.sqrt((n1 - 1) * (n2 - 1)))


def kid(gen: np.ndarray, ref: np.ndarray, *, subsets: int, subset_size: int, seed: int,
        backend: str = "torch-fidelity") -> tuple[float, float, int]:
    """Unbiased cubic-kernel MMD^2 over random subsets -> (mean, std, subset size actually used).

    When both sets are no larger than the subset size every subset is both whole sets: the
    MMD^2 is computed once and the std is NaN (there is no spread to report)."""
    m = min(subset_size, len(gen), len(ref))
    _need(m, 2, "KID", "generated and reference")
    if m == len(gen) == len(ref):  # every subset is the whole of both sets: one U-statistic, no spread
        subsets = 1
    if backend == "clean-fid":
        state = np.random.get_state()  # clean-fid draws from numpy's global RNG; leave it as we found it
        np.random.seed(seed)
        try:
            return float(kernel_distance(gen, ref, num_subsets=subsets, max_subset_size=m)), float("nan"), m
        finally:
            np.random.set_state(state)
    n1, n2 = len(gen), len(ref)
    if n1 * n1 + n2 * n2 + n1 * n2 <= min(_KERNEL_CACHE_LIMIT, 3 * subsets * m * m):
        d = gen.shape[1]
        k11 = (gen @ gen.T / d + 1) ** 3
        k22 = (ref @ ref.T / d + 1) ** 3
        k12 = (gen @ ref.T / d + 1) ** 3
        rng = np.random.RandomState(seed)  # the same draws kid_features_to_metric makes
        mmds = np.empty(subsets)
        for s in range(subsets):
            i = rng.choice(n1, m, replace=False)
            j = rng.choice(n2, m, replace=False)
            mmds[s] = mmd2(k11[np.ix_(i, i)], k12[np.ix_(i, j)], k22[np.ix_(j, j)])
        return float(mmds.mean()), float(mmds.std()) if subsets > 1 else float("nan"), m
    out = kid_features_to_metric(torch.from_numpy(gen), torch.from_numpy(ref), kid_subsets=subsets,
                                 kid_subset_size=m, rng_seed=seed, verbose=False)
    std = out["kernel_inception_distance_std"] if subsets > 1 else float("nan")
    return out["kernel_inception_distance_mean"], std, m


def precision_recall(gen: np.ndarray, ref: np.ndarray, *, k: int, device=None) -> tuple[float, float]:
    """Improved precision/recall (Kynkaanniemi 2019), equal to torch-fidelity's; needs n > k on both sides."""
    out = knn_metrics(gen, ref, k=k, dc_k=k, device=device)
    return out.get("precision"), out.get("recall")


def density_coverage(gen: np.ndarray, ref: np.ndarray, *, k: int, device=None) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020) from k-NN balls around the reference samples."""
    out = knn_metrics(gen, ref, k=k, dc_k=k, device=device)
    return out.get("density"), out.get("coverage")


IS_MIN_N = 10


def inception_score(logits: np.ndarray, *, splits: int = 10, seed: int = 2020) -> tuple[float, int]:
    """torch-fidelity's IS from unbiased logits.  A split of one image scores exactly 1 (its class
    distribution is its own marginal) and IS never exceeds the split size, so splits shrink to
    keep at least 2 images each (recorded) and n < IS_MIN_N is refused."""
    _need(len(logits), IS_MIN_N, "IS", "generated")
    s = min(splits, len(logits) // 2)
    out = isc_features_to_metric(torch.from_numpy(np.asarray(logits)), splits=s, shuffle=True, rng_seed=seed)
    return out["inception_score_mean"], s


# ---------------------------------------------------------------- slicing into rows


def compute_rows(gen_feats, gen_labels, ref_feats, ref_labels, *, groups: list[str], k: int = 3, dc_k: int = 5,
                 kid_subsets: int = 100, kid_subset_size: int = 1000, gen_probs=None, gen_logits=None,
                 bootstrap: int = 0, seed: int = 0, backend: str = "torch-fidelity",
                 per_class: bool = True, device=None, only: frozenset[str] | None = None) -> list[dict]:
    """All metrics overall, per group and per class.

    ``groups`` has one entry per class; ``gen_probs`` ([N, C] class probabilities of the
    evaluator) gives label accuracy; ``gen_logits`` (Inception's unbiased logits) gives IS;
    ``device`` is where the k-NN passes run (default the CPU; the cell's GPU when it has one);
    ``only``: compute just these metrics (and their class means, no intervals), e.g. {"fid", "kid"}.
    """
    gen_feats = np.asarray(gen_feats, dtype=np.float64)
    ref_feats = np.asarray(ref_feats, dtype=np.float64)
    gen_labels = np.asarray(gen_labels, dtype=np.int64)
    ref_labels = np.asarray(ref_labels, dtype=np.int64)
    if gen_feats.shape[1] != ref_feats.shape[1]:
        raise MetricError(f"feature dims differ: generated {gen_feats.shape[1]}, reference {ref_feats.shape[1]}")
    opts = dict(k=k, dc_k=dc_k, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                bootstrap=bootstrap, seed=seed, backend=backend, device=device, only=only)
    slices = [(ALL, None, np.ones(len(gen_labels), bool), np.ones(len(ref_labels), bool))]
    for g in GROUPS:
        classes = [c for c, name in enumerate(groups) if name == g]
        if classes:
            slices.append((g, None, np.isin(gen_labels, classes), np.isin(ref_labels, classes)))
    if per_class:
        for c in range(len(groups)):
            slices.append((CLASS, c, gen_labels == c, ref_labels == c))
    rows = []
    for group, cls, gm, rm in slices:
        probs = None if gen_probs is None else np.asarray(gen_probs)[gm]
        logits = None if gen_logits is None else np.asarray(gen_logits)[gm]
        part = slice_rows(gen_feats[gm], gen_labels[gm], ref_feats[rm], group=group, cls=cls,
                          probs=probs, logits=logits, **opts)
        if group in GROUPS:
            for row in part:
                row["note"] = _join(row["note"], "pooled")
        rows += part
    if per_class:
        rows += class_mean_rows(rows, groups)
    return rows


def class_mean_rows(rows: list[dict], groups: list[str]) -> list[dict]:
    """``<metric>_classmean`` per group (and ``all``): the mean of the per-class values, NaN with the
    classes named when any of them has no value (a mean over the computable ones would hide them)."""
    per_class: dict[str, dict[int, dict]] = {}
    for row in rows:
        if row["group"] == CLASS and not is_interval(row["metric"]):
            per_class.setdefault(row["metric"], {})[row["class"]] = row
    out = []
    for group in (ALL, *GROUPS):
        classes = [c for c, name in enumerate(groups) if group == ALL or name == group]
        if not classes:
            continue
        for metric, by_class in per_class.items():
            hits = [by_class[c] for c in classes if c in by_class]
            if len(hits) < len(classes):
                continue  # a metric some classes never had (not computed for this data)
            values = np.array([h["value"] for h in hits], dtype=float)
            missing = [c for c, v in zip(classes, values) if not math.isfinite(v)]
            note = f"mean of {len(classes)} per-class values"
            if missing:
                value, note = float("nan"), f"skipped: no per-class value for class(es) {_classes(missing)}"
            else:
                value = float(values.mean())
            out.append(dict(metric=class_mean(metric), group=group, **{"class": None},
                            n_gen=int(sum(h["n_gen"] for h in hits)), n_ref=int(sum(h["n_ref"] for h in hits)),
                            value=value, note=note))
    return out


def _classes(classes: list[int], show: int = 8) -> str:
    text = ",".join(str(c) for c in classes[:show])
    return text + (f" (+{len(classes) - show} more)" if len(classes) > show else "")


def slice_rows(gen, gen_labels, ref, *, group, cls, probs, logits, k, dc_k, kid_subsets, kid_subset_size,
               bootstrap, seed, backend, device=None, only=None) -> list[dict]:
    """Rows for one slice; a metric that cannot be computed is NaN with the reason in ``note``."""
    n_gen, n_ref, dim = len(gen), len(ref), gen.shape[1]
    rows: list[dict] = []

    def add(metric, fn):
        if only is not None and metric not in only:
            return
        try:
            value, note = fn()
        except Exception as err:  # noqa: BLE001 - one failing metric is a NaN row; the other rows are kept
            value, note = float("nan"), _failure(err)
        rows.append(dict(metric=metric, group=group, **{"class": cls}, n_gen=n_gen, n_ref=n_ref,
                         value=float(value), note=note))

    small = "small-n" if min(n_gen, n_ref) <= dim else ""  # n <= D: a sample covariance of rank < D
    add(FID, lambda: (fid(gen, ref, backend=backend), _join(small, f"backend={backend}")))
    kid_out = {}

    def kid_value():
        mean, std, m = kid(gen, ref, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed, backend=backend)
        kid_out["m"] = m
        if m == n_gen == n_ref:
            return mean, f"kid_subset={m};kid_subsets=1 (degenerate subsets: each is the whole set, no std);backend={backend}"
        return mean, f"kid_subset={m};kid_subsets={kid_subsets};std={std:.3g};backend={backend}"

    add(KID, kid_value)
    # all four k-NN metrics come from one set of passes (benchmark.eval.knn), made once per slice
    knn = functools.lru_cache(maxsize=1)(lambda: knn_metrics(gen, ref, k=k, dc_k=dc_k, device=device))
    for metric, kk in ((PRECISION, k), (RECALL, k), (DENSITY, dc_k), (COVERAGE, dc_k)):
        add(metric, lambda metric=metric, kk=kk: (knn().get(metric), f"k={kk}"))
    if logits is not None:
        add(IS, lambda: (lambda v: (v[0], f"is_splits={v[1]}"))(inception_score(logits)))
    if probs is not None:
        add(LABEL_ACC, lambda: _label_acc(probs, gen_labels))
    if bootstrap > 0 and only is None:
        estimates = {r["metric"]: r["value"] for r in rows}
        rows += _interval_rows(gen, ref, estimates=estimates, group=group, cls=cls, replicates=bootstrap, seed=seed,
                               backend=backend, kid_subsets=kid_subsets, kid_m=kid_out.get("m"))
    return rows


def _label_acc(probs: np.ndarray, labels: np.ndarray) -> tuple[float, str]:
    _need(len(labels), 1, "label accuracy", "generated")
    return float((probs.argmax(1) == labels).mean()), ""


def _interval_rows(gen, ref, *, estimates, group, cls, replicates, seed, backend, kid_subsets, kid_m) -> list[dict]:
    """fid/kid _ci_low/_ci_high rows by half-sampling both sets (see intervals.py); NaN with the reason when
    the slice is too small or the estimate itself is NaN."""
    stats = {
        FID: (lambda a, b: fid(a, b, backend=backend), 2),
        KID: (lambda a, b: kid(a, b, subsets=max(1, kid_subsets // 10), subset_size=kid_m or 2, seed=seed,
                                 backend=backend)[0], 2),
    }
    rows = []
    for name, (statistic, least) in stats.items():
        estimate = estimates.get(name, float("nan"))
        try:
            if not math.isfinite(estimate):
                raise MetricError(f"the {name} estimate of this slice is NaN (see its row)")
            iv = half_sample_interval(statistic, gen, ref, estimate=estimate, replicates=replicates, seed=seed,
                                      least=least)
            bounds, note = (iv.low, iv.high), iv.note()
        except Exception as err:  # noqa: BLE001 - any failure of an interval is a NaN row, never an abort
            bounds, note = (float("nan"), float("nan")), _failure(err)
        for metric, v in zip((ci_low(name), ci_high(name)), bounds):
            rows.append(dict(metric=metric, group=group, **{"class": cls}, n_gen=len(gen), n_ref=len(ref),
                             value=float(v), note=note))
    return rows


def _failure(err: BaseException) -> str:
    """The note of a metric that could not be computed: MetricError says why; anything else is named."""
    if isinstance(err, MetricError):
        return f"skipped: {err}"
    return f"skipped: failed with {type(err).__name__}: {err}"


def _join(*parts: str) -> str:
    return ";".join(p for p in parts if p)
