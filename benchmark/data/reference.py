"""Reference protocols: how a dataset without an evaluation split of its own gets one.

A folder of images (``imagefolder:PATH`` without ``data.reference_folder``) has no test split,
so one is held out of it.  The held-out images serve twice: as the reference set the metrics
compare generated images with (``eval.reference=test``), and as the test set of the classifier
evaluator (never seen in its training).  The choice is named (``data.reference_protocol``)
and recorded in every results row (the ``reference`` column, e.g. ``test:holdout-0.2-min20``):

* ``holdout`` (the default): ``round(fraction * n_c)`` images of every class c, at least one,
  are held out (``data.reference_fraction``, 0.2).  A class whose held-out part is smaller than
  ``data.reference_min`` (20, the per-slice minimum of FID / KID) is a *fallback class*: its
  reference is all its real images (held-out plus training images), so its precision / recall /
  coverage rest on as many images as exist, and its rows carry the note
  ``reference=train-fallback`` (a model that copies its training images scores well there).
* ``holdout-only``: the same hold-out without the fallback; a tail class is scored against its
  few held-out images only, and its metrics that need more are NaN with the reason.
* ``balanced``: the old rule, a balanced hold-out of ``max(1, smallest class // 5)`` per class
  (two images per class for a folder whose smallest class has 10).
* ``folder``: ``data.reference_folder`` (same class subfolders) is the reference and the
  evaluator's test set; nothing is held out of the training folder.  ``auto`` means ``folder``
  when a reference folder is given, else ``holdout``.

Every draw uses ``RandomState(REFERENCE_SEED)`` over each class's indices in pool order, so the
split never moves with the split seed; both index arrays come back sorted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmark.core.errors import DataError

REFERENCE_PROTOCOLS = ("auto", "holdout", "holdout-only", "balanced", "folder")
REFERENCE_SEED = 0
BALANCED_DIVISOR = 5  # protocol balanced: smallest class // 5 per class
FALLBACK_NOTE = "reference=train-fallback"
EVALUATOR_VAL_FRACTION = 0.1  # of every class of the pool, held out of the evaluator's training to stop it


@dataclass(frozen=True)
class ReferenceSplit:
    """Indices into the pool: ``train`` (kept for training) and ``test`` (held out), the
    ``fallback`` classes (scored against all their images), the recorded ``label`` and a
    sentence for users (``note``)."""

    train: np.ndarray
    test: np.ndarray
    fallback: tuple[int, ...]
    label: str
    note: str


def resolve_protocol(protocol: str, *, has_folder: bool) -> str:
    """'auto' -> 'folder' with a reference folder, else 'holdout'; a wrong pairing is an error."""
    if protocol not in REFERENCE_PROTOCOLS:
        raise DataError(f"unknown data.reference_protocol {protocol!r}; valid: {', '.join(REFERENCE_PROTOCOLS)}")
    if protocol == "auto":
        return "folder" if has_folder else "holdout"
    if protocol == "folder" and not has_folder:
        raise DataError("data.reference_protocol=folder needs data.reference_folder (a folder with the same class "
                        "subfolders); or use the default hold-out (data.reference_protocol=holdout)")
    if protocol != "folder" and has_folder:
        raise DataError(f"data.reference_protocol={protocol} holds images out of the training folder, but "
                        "data.reference_folder is set too; use one: drop the reference folder or set "
                        "data.reference_protocol=folder (or auto)")
    return protocol


def holdout_sizes(counts: np.ndarray, protocol: str, *, fraction: float) -> np.ndarray:
    """How many images of each class the protocol holds out (``counts``: images per class)."""
    counts = np.asarray(counts, dtype=np.int64)
    if protocol == "balanced":
        return np.full(len(counts), max(1, int(counts.min()) // BALANCED_DIVISOR), dtype=np.int64)
    if not 0 < fraction < 1:
        raise DataError(f"data.reference_fraction must lie in (0, 1), got {fraction}; e.g. 0.2 holds out a fifth")
    return np.maximum(1, np.round(fraction * counts).astype(np.int64))


def protocol_label(protocol: str, *, fraction: float, minimum: int, n_balanced: int | None = None) -> str:
    if protocol == "holdout":
        return f"holdout-{fraction:g}-min{minimum}"
    if protocol == "holdout-only":
        return f"holdout-only-{fraction:g}"
    if protocol == "balanced":
        return f"balanced-{n_balanced}"
    return protocol


def split_reference(labels: np.ndarray, protocol: str, *, fraction: float, minimum: int, class_names: list[str],
                    where: str, listed: bool = False) -> ReferenceSplit:
    """Hold a reference out of a labelled pool by a resolved protocol (not 'auto' / 'folder')."""
    if protocol not in ("holdout", "holdout-only", "balanced"):
        raise DataError(f"split_reference takes holdout, holdout-only or balanced, got {protocol!r}")
    if minimum < 1:
        raise DataError(f"data.reference_min must be at least 1, got {minimum}")
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=len(class_names))
    tiny = [class_names[c] for c in range(len(class_names)) if counts[c] < 2]
    if tiny and listed:  # a list file: a class without a line is a gap in its labels
        gap = [str(c) for c in range(len(class_names)) if counts[c] == 0]
        why = (f"label(s) {', '.join(gap[:5])} have no line, so the labels skip a number: number the classes 0..C-1 "
               "without gaps; ") if gap else "add lines, "  # fmt: skip
        raise DataError(f"class(es) {', '.join(tiny[:5])} have fewer than 2 lines in {where}, too few to hold one out "
                        f"for evaluation; {why}or pass an evaluation list (data.reference_list)")
    if tiny:
        raise DataError(
            f"class folder(s) {', '.join(tiny)} in {where} hold {int(counts.min())} image(s), too few to hold "
            "one out for evaluation; add images or pass a reference folder (data.reference_folder)"
        )
    sizes = holdout_sizes(counts, protocol, fraction=fraction)
    rng = np.random.RandomState(REFERENCE_SEED)
    held = []
    for c in range(len(class_names)):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        held.append(idx[: sizes[c]])
    test = np.sort(np.concatenate(held))
    mask = np.ones(len(labels), dtype=bool)
    mask[test] = False
    fallback = tuple(int(c) for c in np.flatnonzero(sizes < minimum)) if protocol == "holdout" else ()
    label = protocol_label(protocol, fraction=fraction, minimum=minimum, n_balanced=int(sizes[0]))
    if protocol == "balanced":
        note = f"balanced hold-out, {int(sizes[0])} per class (seed {REFERENCE_SEED})"
    else:
        note = f"hold-out of {fraction:g} per class (seed {REFERENCE_SEED}), {int(sizes.min())}..{int(sizes.max())} images"
        if fallback:
            note += (f"; {len(fallback)} class(es) with fewer than {minimum} held out are scored against all their "
                     f"images ({FALLBACK_NOTE})")
    return ReferenceSplit(train=np.flatnonzero(mask), test=test, fallback=fallback, label=label, note=note)


def validation_split(labels: np.ndarray, *, seed: int, fraction: float = EVALUATOR_VAL_FRACTION
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of the classifier evaluator's pool: round(fraction * n_c) of each
    class, at least 1 where n_c >= 3, drawn with ``RandomState(seed)``; both sorted."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.RandomState(seed)
    val = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1 if len(idx) >= 3 else 0, int(round(fraction * len(idx))))
        val.append(idx[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx
