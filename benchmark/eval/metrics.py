"""Generation metrics as pure functions of feature arrays, sliced overall / per group / per class.

Every number comes from the features of the generated set and of the reference set, so one
feature pass serves all slices.  The estimators are torch-fidelity's (FID from Gaussian
statistics, KID's unbiased MMD ``mmd2`` with the same subset draws as ``kid_features_to_metric``,
so the same seed gives the same number; Inception Score); FID and KID are computed by the exact
routes of ``benchmark.eval.fidkid`` (tested against torch-fidelity and clean-fid).  Improved
precision/recall and density/coverage (Naeem et al. 2020) come together from one chunked set of
k-NN passes (``benchmark.eval.knn``), equal to torch-fidelity's precision/recall (tested against it).

Why all the rows of a cell (overall, 3 groups, every class) cost little more than the overall
row, all exact up to float rounding:
- one set of k-NN passes serves every slice (``knn_slices``: with rows ordered by group and class,
  a slice's distances are a sub-block of the overall pass's blocks);
- FID takes tr sqrt(S1 S2) from a symmetric eigenproblem: D x D against the Cholesky factor of the
  reference covariance when n > D, n x n from the two centred feature matrices when n <= D;
- the statistics of full-rank slices pool exactly from their parts (overall from groups), and the
  reference's are kept between calls with the same reference features, labels and slices;
- KID sums each subset's kernel blocks from the whole-set kernels when those have fewer entries
  than the subsets together (groups and classes inside such a slice share its kernel blocks), and
  otherwise forms each subset's kernels as torch-fidelity does;
- the torch work of all slices (k-NN, IS) runs before the numpy work, because handing the cores
  back and forth between torch's OpenMP threads and OpenBLAS's, slice by slice, cost more than
  the arithmetic of a small slice; LAPACK's factorizations and the products of small slices run
  on one BLAS thread (``fidkid.one_blas_thread`` says why).

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
import io
import math

import numpy as np
import torch
from cleanfid.fid import frechet_distance, kernel_distance
from torch_fidelity.metric_isc import isc_features_to_metric

from benchmark.core.errors import MetricError, failure_note
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
from benchmark.eval.fidkid import (
    SMALL_BLAS_MACS,
    Gaussian,
    content_key,
    fid_gaussians,
    fid_low_rank,
    kid_plan,
    mmd2_slices,
    mmd2_subsets,
    one_blas_thread,
    slice_statistics,
    subset_draws,
    whole_set_is_cheaper,
)
from benchmark.eval.intervals import half_sample_interval
from benchmark.eval.knn import Rows, knn_metrics, knn_slices

# the version of the statistics' definitions: bumped whenever a row would come out differently from the same
# features (it enters the real-floor cache key, so a cached floor of an older version is recomputed)
# 4: the vendi_inlier rows; 5: the memorisation floor's queries outside the training set, deduplicated training images
STATS_VERSION = 5

# ---------------------------------------------------------------- single-slice metrics


def _need(n: int, least: int, what: str, side: str) -> None:
    if n < least:
        raise MetricError(f"{what} needs at least {least} {side} samples, got {n}")


def fid(gen: np.ndarray, ref: np.ndarray, *, backend: str = "torch-fidelity",
        stats: tuple[Gaussian, Gaussian] | None = None) -> float:
    """Frechet distance between Gaussian fits of two feature sets (needs n >= 2 on each side).

    ``stats`` are the two sets' statistics when the caller already has them (pooled from parts,
    or the cached reference); they are used only where the covariances are full rank (n > D)."""
    _need(len(gen), 2, "FID", "generated")
    _need(len(ref), 2, "FID", "reference")
    if backend == "clean-fid":
        with contextlib.redirect_stdout(io.StringIO()):  # clean-fid prints its singular-product notice
            return float(frechet_distance(gen.mean(0), np.cov(gen, rowvar=False), ref.mean(0), np.cov(ref, rowvar=False)))
    if backend != "torch-fidelity":
        raise MetricError(f"unknown FID backend {backend!r}; use torch-fidelity or clean-fid")
    if min(len(gen), len(ref)) <= gen.shape[1]:
        return fid_low_rank(gen, ref)
    g, r = stats if stats is not None else (Gaussian.of(gen), Gaussian.of(ref))
    return fid_gaussians(g, r)


def kid(gen: np.ndarray, ref: np.ndarray, *, subsets: int, subset_size: int, seed: int,
        backend: str = "torch-fidelity", mmds: np.ndarray | None = None) -> tuple[float, float, int]:
    """Unbiased cubic-kernel MMD^2 over random subsets -> (mean, std, subset size actually used).

    When both sets are no larger than the subset size every subset is both whole sets: the
    MMD^2 is computed once and the std is NaN (there is no spread to report).  ``mmds``: the
    subsets' MMD^2 when the caller computed them already (``compute_rows``, same draws)."""
    m, subsets = kid_plan(len(gen), len(ref), subsets, subset_size)
    _need(m, 2, "KID", "generated and reference")
    if backend == "clean-fid":
        state = np.random.get_state()  # clean-fid draws from numpy's global RNG; leave it as we found it
        np.random.seed(seed)
        try:
            return float(kernel_distance(gen, ref, num_subsets=subsets, max_subset_size=m)), float("nan"), m
        finally:
            np.random.set_state(state)
    if mmds is None:
        mmds = mmd2_subsets(gen, ref, subset_draws(len(gen), len(ref), m, subsets, seed))
    return float(mmds.mean()), float(mmds.std()) if subsets > 1 else float("nan"), m


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
    slices = [(ALL, None, None)]  # (group, class, the slice's classes; None: every row)
    for g in GROUPS:
        classes = frozenset(c for c, name in enumerate(groups) if name == g)
        if classes:
            slices.append((g, None, classes))
    if per_class:
        slices += [(CLASS, c, frozenset((c,))) for c in range(len(groups))]
    masks = [(_mask(gen_labels, classes), _mask(ref_labels, classes)) for _, _, classes in slices]
    # The torch work of every slice (one set of k-NN passes for all of them, IS) first, then the numpy
    # work: interleaved slice by slice, torch's OpenMP workers and OpenBLAS's threads spun against each
    # other at each hand-over, which cost more than the arithmetic of a small slice (0.1-0.7 s each on 2 cores).
    gen_order, gen_ranges = _contiguous(gen_labels, groups, [c for _, _, c in slices])
    ref_order, ref_ranges = _contiguous(ref_labels, groups, [c for _, _, c in slices])
    knns = [None] * len(slices)
    if _wanted(only, PRECISION, RECALL, DENSITY, COVERAGE):
        every_knn = _attempt(knn_slices, Rows(gen_feats, gen_order), Rows(ref_feats, ref_order),
                             list(zip(gen_ranges, ref_ranges)), k=k, dc_k=dc_k, device=device)
        knns = [lambda i=i: every_knn()[i] for i in range(len(slices))]
    scores = [] if gen_logits is None or not _wanted(only, IS) else [
        _attempt(inception_score, _take(np.asarray(gen_logits), gm)) for gm, _ in masks]
    stats = {}
    # full-rank slices: statistics pooled from their parts, the reference's cached
    if backend == "torch-fidelity" and _wanted(only, FID):
        full = [i for i, (gm, rm) in enumerate(masks)
                if min(_count(gm, len(gen_feats)), _count(rm, len(ref_feats))) > gen_feats.shape[1]]
        parts = [(slices[i][2], *masks[i]) for i in full]
        if parts:
            gen_stats = slice_statistics(gen_feats, [(c, gm) for c, gm, _ in parts])
            ref_stats = slice_statistics(ref_feats, [(c, rm) for c, _, rm in parts],
                                         cache_key=content_key(ref_feats, ref_labels, [c for c, _, _ in parts]))
            stats = dict(zip(full, zip(gen_stats, ref_stats)))
    kid_mmds = {} if backend != "torch-fidelity" or not _wanted(only, KID) else _shared_kid(
        gen_feats, ref_feats, masks, gen_order, ref_order, list(zip(gen_ranges, ref_ranges)),
        subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    rows = []
    for i, ((group, cls, _), (gm, rm)) in enumerate(zip(slices, masks)):
        probs = None if gen_probs is None else _take(np.asarray(gen_probs), gm)
        gen, ref = _take(gen_feats, gm), _take(ref_feats, rm)
        # a small slice's products are too small to share between threads; on a busy machine every
        # multi-threaded call waits for a time slice for its second thread (measured 100x slower)
        small = len(gen) * len(ref) * gen.shape[1] < SMALL_BLAS_MACS
        with one_blas_thread() if small else contextlib.nullcontext():
            part = slice_rows(gen, _take(gen_labels, gm), ref, group=group, cls=cls, probs=probs, logits=None,
                              knn=knns[i], inception=scores[i] if scores else None, fid_stats=stats.get(i),
                              kid_mmds=kid_mmds.get(i), **opts)
        if group in GROUPS:
            for row in part:
                row["note"] = _join(row["note"], "pooled")
        rows += part
        del gen, ref, probs  # before the next slice's copies: a group's are 270 MB a side at paper scale
    if per_class:
        rows += class_mean_rows(rows, groups)
    return rows


def _shared_kid(gen_feats, ref_feats, masks, gen_order, ref_order, ranges, *, subsets, subset_size, seed) -> dict:
    """slice index -> callable giving its subsets' MMD^2, for every slice that takes KID's whole-set
    route, all from one kernel pass per outermost such slice (``mmd2_slices``), with the draws
    ``kid`` would make on the slice alone, moved to the group-class row order."""
    plans = {}
    for i, (gm, rm) in enumerate(masks):
        n_gen, n_ref = _count(gm, len(gen_feats)), _count(rm, len(ref_feats))
        m, count = kid_plan(n_gen, n_ref, subsets, subset_size)
        if m >= 2 and whole_set_is_cheaper(n_gen, n_ref, m, count):
            plans[i] = (m, count)
    if not plans:
        return {}
    gen_at, ref_at = np.argsort(gen_order), np.argsort(ref_order)  # row -> its position in the order
    draws = []
    for i, (m, count) in plans.items():
        gm, rm = masks[i]
        gen_rows = np.arange(len(gen_feats)) if gm is None else np.flatnonzero(gm)
        ref_rows = np.arange(len(ref_feats)) if rm is None else np.flatnonzero(rm)
        draws.append([(gen_at[gen_rows[g]], ref_at[ref_rows[r]])
                      for g, r in subset_draws(len(gen_rows), len(ref_rows), m, count, seed)])
    shared = _attempt(mmd2_slices, gen_feats, ref_feats, [ranges[i] for i in plans], draws, gen_order=gen_order,
                      ref_order=ref_order)
    return {i: (lambda j=j: shared()[j]) for j, i in enumerate(plans)}


def _mask(labels: np.ndarray, classes: frozenset | None) -> np.ndarray | None:
    """Rows of a slice (None: every row, so the overall slice needs no copy)."""
    return None if classes is None else np.isin(labels, sorted(classes))


def _contiguous(labels: np.ndarray, groups: list[str], slices: list[frozenset | None]):
    """A row order (by group, then class) in which every slice is one range, and those ranges."""
    table = np.array([GROUPS.index(g) if g in GROUPS else len(GROUPS) for g in groups] + [len(GROUPS)])
    known = (labels >= 0) & (labels < len(groups))
    order = np.lexsort((labels, table[np.where(known, labels, len(groups))]))
    ordered = labels[order]
    ranges = []
    for classes in slices:
        if classes is None:
            ranges.append((0, len(labels)))
            continue
        at = np.flatnonzero(np.isin(ordered, sorted(classes)))
        if len(at) and at[-1] + 1 - at[0] != len(at):
            raise RuntimeError(f"slice {sorted(classes)} is not contiguous in the group-class order")
        ranges.append((int(at[0]), int(at[-1]) + 1) if len(at) else (0, 0))
    return order, ranges


def _take(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The slice's rows: a view when they are consecutive (the generated set is in class order, so its
    groups and classes are), else a copy."""
    if mask is None:
        return x
    rows = np.flatnonzero(mask)
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1:  # sorted and unique: consecutive exactly then
        return x[rows[0] : rows[-1] + 1]
    return x[rows]


def _count(mask: np.ndarray | None, n: int) -> int:
    return n if mask is None else int(mask.sum())


def _wanted(only, *metrics: str) -> bool:
    """Whether any of ``metrics`` is asked for (``only`` None: every metric)."""
    return only is None or any(m in only for m in metrics)


def _attempt(fn, *args, **kwargs):
    """Run ``fn`` now; the returned callable gives its result or raises its error where the row is made."""
    try:
        value = fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - raised again inside the row, which becomes NaN with the reason
        failure = err

        def fail():
            raise failure

        return fail
    return lambda: value


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
               bootstrap, seed, backend, device=None, knn=None, inception=None, fid_stats=None,
               kid_mmds=None, only=None) -> list[dict]:
    """Rows for one slice; a metric that cannot be computed is NaN with the reason in ``note``.

    ``knn`` and ``inception`` are the slice's k-NN and IS outcomes when the caller ran them already
    (``_attempt`` callables), ``fid_stats`` its (generated, reference) statistics for ``fid``,
    ``kid_mmds`` a callable giving its subsets' MMD^2 for ``kid``; ``only``: just these metrics."""
    n_gen, n_ref, dim = len(gen), len(ref), gen.shape[1]
    rows: list[dict] = []

    def add(metric, fn):
        if not _wanted(only, metric):
            return
        try:
            value, note = fn()
        except Exception as err:  # noqa: BLE001 - one failing metric is a NaN row; the other rows are kept
            value, note = float("nan"), failure_note(err)
        rows.append(dict(metric=metric, group=group, **{"class": cls}, n_gen=n_gen, n_ref=n_ref,
                         value=float(value), note=note))

    small = "small-n" if min(n_gen, n_ref) <= dim else ""  # n <= D: a sample covariance of rank < D
    add(FID, lambda: (fid(gen, ref, backend=backend, stats=fid_stats), _join(small, f"backend={backend}")))
    kid_out = {}

    def kid_value():
        mean, std, m = kid(gen, ref, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed, backend=backend,
                           mmds=kid_mmds() if kid_mmds is not None else None)
        kid_out["m"] = m
        if m == n_gen == n_ref:
            return mean, f"kid_subset={m};kid_subsets=1 (degenerate subsets: each is the whole set, no std);backend={backend}"
        return mean, f"kid_subset={m};kid_subsets={kid_subsets};std={std:.3g};backend={backend}"

    add(KID, kid_value)
    # all four k-NN metrics come from one set of passes (benchmark.eval.knn), made once per slice
    if knn is None and _wanted(only, PRECISION, RECALL, DENSITY, COVERAGE):
        knn = _attempt(knn_metrics, gen, ref, k=k, dc_k=dc_k, device=device)
    for metric, kk in ((PRECISION, k), (RECALL, k), (DENSITY, dc_k), (COVERAGE, dc_k)):
        add(metric, lambda metric=metric, kk=kk: (knn().get(metric), f"k={kk}"))
    if inception is None and logits is not None:
        inception = _attempt(inception_score, logits)
    if inception is not None:
        add(IS, lambda: (lambda v: (v[0], f"is_splits={v[1]}"))(inception()))
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
            bounds, note = (float("nan"), float("nan")), failure_note(err)
        for metric, v in zip((ci_low(name), ci_high(name)), bounds):
            rows.append(dict(metric=metric, group=group, **{"class": cls}, n_gen=len(gen), n_ref=len(ref),
                             value=float(v), note=note))
    return rows


def _join(*parts: str) -> str:
    return ";".join(p for p in parts if p)
