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
generator that never saw the training set would score.  A class with fewer than 2 training
images has no second neighbour: its row is NaN with the reason, and group rows leave it out
(the note names it).

Distances are exact in float64, in blocks of query rows, so memory stays bounded.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmark.core.errors import MetricError
from benchmark.eval.diversity import slices

THRESHOLD = 1.0 / 3.0
_BLOCK = 1024  # query rows per distance block


def nearest(query: np.ndarray, train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances [n, k] and indices [n, k] of the k nearest rows of ``train`` to each query row."""
    q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float64))
    t = torch.from_numpy(np.ascontiguousarray(train, dtype=np.float64))
    k = min(k, len(t))
    dists, idx = [], []
    t_sq = (t * t).sum(1)
    for qb in q.split(_BLOCK):
        d2 = ((qb * qb).sum(1, keepdim=True) + t_sq - 2 * qb @ t.T).clamp_min_(0)
        val, ind = d2.topk(k, dim=1, largest=False)
        dists.append(val.sqrt())
        idx.append(ind)
    if not dists:
        return np.zeros((0, k)), np.zeros((0, k), dtype=np.int64)
    return torch.cat(dists).numpy(), torch.cat(idx).numpy()


def class_ratios(query, query_labels, train, train_labels, *, num_classes: int,
                 k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """d1 / d2 of every query image against the training images of its class, with the global
    training indices of its k nearest (-1 where the class has fewer); NaN where the class has < 2."""
    # kept in their own dtype (uint8 pixels); each class is cast to float64 alone, so memory stays
    # at one class's worth even for 50k generated CIFAR images
    query = np.asarray(query).reshape(len(query), -1)
    train = np.asarray(train).reshape(len(train), -1)
    query_labels = np.asarray(query_labels)
    train_labels = np.asarray(train_labels)
    ratios = np.full(len(query), np.nan)
    neighbours = np.full((len(query), max(k, 2)), -1, dtype=np.int64)
    for c in range(num_classes):
        qi = np.flatnonzero(query_labels == c)
        ti = np.flatnonzero(train_labels == c)
        if len(qi) == 0 or len(ti) < 2:
            continue
        d, idx = nearest(query[qi], train[ti], max(k, 2))
        d1, d2 = d[:, 0], d[:, 1]
        # rounding leaves an exact copy ~1e-7 from its original; d2 = 0 means two identical originals
        ratios[qi] = np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1.0), 0.0)
        neighbours[qi, : idx.shape[1]] = ti[idx]
    return ratios, neighbours


def memorization_rows(ratios: np.ndarray, labels: np.ndarray, train_counts, *, groups: list[str], metric: str,
                      space: str, threshold: float = THRESHOLD) -> list[dict]:
    """Fraction of images with d1 / d2 < threshold, overall, per group and per class."""
    ratios = np.asarray(ratios, dtype=np.float64)
    labels = np.asarray(labels)
    train_counts = np.asarray(train_counts)
    rows = []
    for group, cls, classes in slices(groups):
        short = [c for c in classes if train_counts[c] < 2]
        usable = [c for c in classes if train_counts[c] >= 2]
        mask = np.isin(labels, usable)
        n_gen, n_train = int(mask.sum()), int(train_counts[usable].sum())
        note = f"rule=d1/d2<{threshold:.3g};space={space};within class;n_ref=training images"
        if short and usable:
            note += f";excluded classes with < 2 training images: {short[:5]}"
        try:
            if short and not usable:
                raise MetricError(f"class(es) {short[:5]} have fewer than 2 training images (no second neighbour)")
            if n_gen == 0:
                raise MetricError("no images in this slice")
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
