"""Memorisation per class: how many generated images are near copies of a training image of their class.

Rule (documented, fixed): for a generated image x of class c, d1 and d2 are the distances from
x to its nearest and second-nearest training image of class c; x is judged a copy when
d1 / d2 < 1/3.  This is the nearest / second-nearest ratio test used to count memorised
samples of diffusion models (Yoon et al. 2023, Gu et al. 2023; a simplification of Carlini et
al. 2023, who compare d1 with the mean distance to the n nearest).  A copy lies much closer to
one training image than to any other; an image that merely resembles its class is about as
far from its nearest as from its second nearest.  Two identical training images nearest to x
(d2 = 0) count as a copy when x is one of them.

The test runs within the class, because the model was asked for that class and because tail
classes, with few images, are where copying pays off.  It runs in the evaluation feature space
and in pixel space (the flattened uint8 values), giving ``memorization`` and ``memorization_pixel``
rows per class, per group (pooled over the group's generated images) and overall.  The same
statistic of real held-out images (the ``real`` pseudo-method) is the floor: what an ideal
generator that never saw the training set would score; its queries are real images outside the
training subset only (a class with none is NaN with the reason).

Each class's training images are deduplicated first (``distinct``): exact duplicates, and near-exact
ones closer than ``DUP_FRACTION`` of the class's median nearest-neighbour distance, count once.  An
image present twice is what models copy most (Carlini et al. 2023, Somepalli et al. 2023), and a copy
of it sits as far from one original as from the other: d1/d2 = 1 without the merge.  A class with
fewer than 2 distinct training images has no second neighbour: its row is NaN with the reason, and
group rows leave it out (the note names it).

Distances are float64, in blocks of query rows, so memory stays bounded; the expansion
|q|^2 + |t|^2 - 2 q.t only picks each query's candidates, whose distances are then recomputed
directly (the expansion leaves an exact copy ~1e-7 from its original in float features).
"""

from __future__ import annotations

import numpy as np
import torch

from benchmark.core.errors import MetricError
from benchmark.eval.diversity import slices

THRESHOLD = 1.0 / 3.0
DUP_FRACTION = 0.05  # near-exact duplicates: closer than this fraction of the class's median nearest distance
DISTINCT_NOTE = f"distinct training images (duplicates within {DUP_FRACTION:g} x median nearest distance merged)"
_BLOCK = 1024  # query rows per distance block
_MARGIN = 8  # extra candidates per query whose distances are recomputed directly


def nearest(query: np.ndarray, train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances [n, k] and indices [n, k] of the k nearest rows of ``train`` to each query row.

    The expansion |q|^2 + |t|^2 - 2 q.t only picks candidates (k + ``_MARGIN``): it leaves an exact
    copy ~1e-7 from its original in float features, so two identical originals would read d1/d2 = 1.
    The candidates' distances are recomputed directly from q - t, then sorted; ties keep index order."""
    q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float64))
    t = torch.from_numpy(np.ascontiguousarray(train, dtype=np.float64))
    k = min(k, len(t))
    m = min(k + _MARGIN, len(t))
    dists, idx = [], []
    t_sq = (t * t).sum(1)
    for qb in q.split(_BLOCK):
        d2 = ((qb * qb).sum(1, keepdim=True) + t_sq - 2 * qb @ t.T).clamp_min_(0)
        cand = d2.topk(m, dim=1, largest=False).indices.sort(dim=1).values  # index order: stable ties
        exact = torch.stack([((qb - t[cand[:, j]]) ** 2).sum(1) for j in range(m)], dim=1).sqrt()
        val, pos = exact.sort(dim=1, stable=True)
        dists.append(val[:, :k])
        idx.append(cand.gather(1, pos[:, :k]))
    if not dists:
        return np.zeros((0, k)), np.zeros((0, k), dtype=np.int64)
    return torch.cat(dists).numpy(), torch.cat(idx).numpy()


def distinct(train: np.ndarray, *, fraction: float = DUP_FRACTION) -> np.ndarray:
    """Sorted local indices of the distinct rows of one class's training images.  Exact duplicates
    and near-exact ones (distance <= ``fraction`` x the median distance from an image to its nearest
    other one) form a group; the group's first image stays.  A copy of an image present twice sits
    at the same distance from both, so d1/d2 = 1 would hide it; with one of the pair gone, it shows."""
    x = np.asarray(train).reshape(len(train), -1)
    if len(x) < 2:
        return np.arange(len(x))
    uniq, first = np.unique(x, axis=0, return_index=True)
    u = np.ascontiguousarray(uniq, dtype=np.float64)
    n = len(u)
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n > 1:
        d, idx = nearest(u, u, min(n, 1 + _MARGIN))  # column 0 is the row itself (distance exactly 0)
        tol = fraction * float(np.median(d[:, 1]))
        pairs = [(int(i), int(idx[i, j + 1])) for i, j in zip(*np.nonzero(d[:, 1:] <= tol))]
        full = np.flatnonzero(d[:, -1] <= tol)  # more near twins than the search kept: compare with every row
        if len(full):
            t = torch.from_numpy(u)
            for qi in np.array_split(full, max(1, len(full) // _BLOCK)):
                diff = torch.cdist(t[torch.from_numpy(qi)], t, compute_mode="donot_use_mm_for_euclid_dist")
                pairs += [(int(qi[i]), int(j)) for i, j in zip(*np.nonzero((diff <= tol).numpy()))]
        for i, j in pairs:
            a, b = root(i), root(j)
            parent[max(a, b)] = min(a, b)
    roots = np.array([root(i) for i in range(n)])
    keep = np.full(n, len(x), dtype=np.int64)
    np.minimum.at(keep, roots, first)  # the first image (in training order) of each group
    return np.sort(keep[keep < len(x)])


def distinct_training(train: np.ndarray, train_labels, *, num_classes: int) -> np.ndarray:
    """Sorted global indices of each class's distinct training images (``distinct`` per class)."""
    train = np.asarray(train).reshape(len(train), -1)
    train_labels = np.asarray(train_labels)
    keep = [ti[distinct(train[ti])] for ti in (np.flatnonzero(train_labels == c) for c in range(num_classes))]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def class_ratios(query, query_labels, train, train_labels, *, num_classes: int, k: int = 2,
                 keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """d1 / d2 of every query image against the training images of its class, with the global
    training indices of its k nearest (-1 where the class has fewer); NaN where the class has < 2.
    ``keep``: the global indices of the training images to compare with; by default each class's
    distinct images (``distinct_training``; pass ``np.arange(len(train))`` to keep duplicates)."""
    # kept in their own dtype (uint8 pixels); each class is cast to float64 alone, so memory stays
    # at one class's worth even for 50k generated CIFAR images
    query = np.asarray(query).reshape(len(query), -1)
    train = np.asarray(train).reshape(len(train), -1)
    query_labels = np.asarray(query_labels)
    train_labels = np.asarray(train_labels)
    if keep is None:
        keep = distinct_training(train, train_labels, num_classes=num_classes)
    keep = np.asarray(keep, dtype=np.int64)
    ratios = np.full(len(query), np.nan)
    neighbours = np.full((len(query), max(k, 2)), -1, dtype=np.int64)
    for c in range(num_classes):
        qi = np.flatnonzero(query_labels == c)
        ti = keep[train_labels[keep] == c]
        if len(qi) == 0 or len(ti) < 2:
            continue
        d, idx = nearest(query[qi], train[ti], max(k, 2))
        d1, d2 = d[:, 0], d[:, 1]
        # d2 = 0: two identical originals (only when duplicates were kept), and the query is one of them
        ratios[qi] = np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1.0), 0.0)
        neighbours[qi, : idx.shape[1]] = ti[idx]
    return ratios, neighbours


def memorization_rows(ratios: np.ndarray, labels: np.ndarray, train_counts, *, groups: list[str], metric: str,
                      space: str, threshold: float = THRESHOLD, no_queries: str | None = None) -> list[dict]:
    """Fraction of images with d1 / d2 < threshold, overall, per group and per class.
    ``train_counts``: the distinct training images per class (``distinct_training``).  ``no_queries``:
    the reason a slice without query images is NaN (the real floor: no image outside the training set)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    labels = np.asarray(labels)
    train_counts = np.asarray(train_counts)
    rows = []
    for group, cls, classes in slices(groups):
        short = [c for c in classes if train_counts[c] < 2]
        usable = [c for c in classes if train_counts[c] >= 2]
        mask = np.isin(labels, usable)
        n_gen, n_train = int(mask.sum()), int(train_counts[usable].sum())
        note = f"rule=d1/d2<{threshold:.3g};space={space};within class;n_ref={DISTINCT_NOTE}"
        if short and usable:
            note += f";excluded classes with < 2 training images: {short[:5]}"
        empty = [c for c in usable if not (labels == c).any()] if no_queries and len(classes) > 1 else []
        if empty and n_gen:
            note += f";classes without query images left out: {empty[:5]}"
        try:
            if short and not usable:
                raise MetricError(f"class(es) {short[:5]} have fewer than 2 distinct training images (no second neighbour)")
            if n_gen == 0:
                raise MetricError(no_queries or "no images in this slice")
            value = float((ratios[mask] < threshold).mean())
        except MetricError as err:
            value, note = float("nan"), f"skipped: {err};{note}"
        rows.append(dict(metric=metric, group=group, **{"class": cls}, n_gen=n_gen, n_ref=n_train, value=value,
                         note=note))
    return rows


def failed_rows(labels: np.ndarray, train_counts, *, groups: list[str], metric: str, space: str,
                reason: str) -> list[dict]:
    """The rows of ``memorization_rows`` when the neighbour search itself failed: every slice NaN with
    ``reason`` (a ``failure_note``), never a fraction of comparisons that were not made."""
    labels, train_counts = np.asarray(labels), np.asarray(train_counts)
    return [dict(metric=metric, group=group, **{"class": cls}, n_gen=int(np.isin(labels, classes).sum()),
                 n_ref=int(train_counts[classes].sum()), value=float("nan"), note=f"{reason};space={space}")
            for group, cls, classes in slices(groups)]


def pixels(images: torch.Tensor) -> np.ndarray:
    """uint8 images [N, C, H, W] -> uint8 [N, C*H*W] (a view): the pixel space of the test.  The
    ratio d1 / d2 does not depend on the scale, so the 0..255 values are used as they are."""
    return images.reshape(len(images), -1).numpy()


def sheet_classes(groups: list[str], counts) -> list[int]:
    """The classes a nearest-neighbour sheet shows: the few-shot group, else the three smallest classes."""
    few = [c for c, g in enumerate(groups) if g == "few"]
    return few or sorted(np.argsort(np.asarray(counts), kind="stable")[:3].tolist())


def neighbour_sheet(images: torch.Tensor, labels: np.ndarray, ratios: np.ndarray, neighbours: np.ndarray,
                    train_images: torch.Tensor, *, classes: list[int], per_class: int = 6) -> dict[str, np.ndarray]:
    """For each class: its ``per_class`` most copy-like generated images (lowest d1/d2 first) with
    their nearest training images.  Arrays: classes [K], gen [K, R, C, H, W], train [K, R, k, C, H, W]
    (zeros where missing), ratio [K, R] and found [K, R] (False pads a class with fewer images)."""
    labels = np.asarray(labels)
    k = neighbours.shape[1]
    shape = tuple(images.shape[1:])
    gen = np.zeros((len(classes), per_class) + shape, dtype=np.uint8)
    near = np.zeros((len(classes), per_class, k) + shape, dtype=np.uint8)
    ratio = np.full((len(classes), per_class), np.nan)
    found = np.zeros((len(classes), per_class), dtype=bool)
    for i, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.argsort(np.where(np.isnan(ratios[idx]), np.inf, ratios[idx]), kind="stable")][:per_class]
        for j, g in enumerate(idx):
            gen[i, j] = images[g].numpy()
            ratio[i, j] = ratios[g]
            found[i, j] = True
            for q, t in enumerate(neighbours[g]):
                if t >= 0:
                    near[i, j, q] = train_images[t].numpy()
    return dict(classes=np.asarray(classes, dtype=np.int64), gen=gen, train=near, ratio=ratio, found=found)
