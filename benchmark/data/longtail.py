"""Long-tailed subsets of any labelled pool, identical to the LDAM construction.

These functions work on plain numpy label arrays, so a researcher with their own data
pipeline can build the published splits without the rest of the harness::

    counts = class_counts("exp", n_max=5000, num_classes=10, imbalance=0.01)
    idx = select_longtail(labels, counts, seed=0)        # CIFAR-10-LT IR100: 12,406 indices
    fp = split_fingerprint("my-source-id", idx)

Rules (Cao et al. 2019, "LDAM", used verbatim by CBDM, OC and CORAL):

* ``imbalance`` rho = n_min / n_max (0.01 is "IR 100").
* ``exp``: n_i = int(n_max * rho ** (i / (C - 1))); class 0 is the head, no class shuffle.
* ``step``: the first C // 2 classes keep n_max, the rest int(n_max * rho).
* selection: one numpy legacy ``RandomState(seed)``; for each class in index order take
  that class's indices in dataset order, shuffle them with that one generator, keep the
  first n_i.  The result lists the classes one after another, as LDAM's ``new_data`` does.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmark.core.config import DataConfig, choices
from benchmark.core.errors import DataError
from benchmark.core.names import FEW, MANY, MEDIUM

PROFILES = choices(DataConfig, "profile")  # parametric: exp, step; others see build_dataset
GROUP_RULES = tuple(r for r in choices(DataConfig, "groups") if r != "auto")


def check_imbalance(imbalance: float) -> float:
    """Return ``imbalance`` as a float in (0, 1], else raise :class:`DataError`."""
    try:
        rho = float(imbalance)
    except (TypeError, ValueError):
        rho = float("nan")
    if not (0.0 < rho <= 1.0):  # also rejects NaN
        raise DataError(
            f"imbalance must be in (0, 1] (n_min / n_max; 0.01 is 'IR 100'), got {imbalance!r}. "
            "Pass for example --imbalance 0.01, or use profile 'none' to keep the data as it is."
        )
    return rho


def _raw_counts(profile: str, n_max: int, num_classes: int, rho: float) -> list[int]:
    if profile == "exp":
        if num_classes == 1:
            return [int(n_max)]
        # same float expression as LDAM's get_img_num_per_cls, so int() truncates identically
        return [int(n_max * (rho ** (i / (num_classes - 1.0)))) for i in range(num_classes)]
    half = num_classes // 2
    return [int(n_max)] * half + [int(n_max * rho)] * (num_classes - half)


def smallest_valid_imbalance(profile: str, *, n_max: int, num_classes: int) -> float:
    """Smallest imbalance (rounded up to few digits) that leaves every class >= 1 image."""
    exact = 1.0 / n_max  # the tail class is the binding one: it gets n_max * rho
    exponent = math.floor(math.log10(exact))
    for digits in range(3, 17):  # 3 significant digits: readable, at most 1% above the bound
        scale = 10.0 ** (digits - 1 - exponent)
        candidate = math.ceil(exact * scale) / scale
        if min(_raw_counts(profile, n_max, num_classes, candidate)) >= 1:
            return candidate
    return float(np.nextafter(exact, 2.0))


def class_counts(
    profile: str,
    *,
    n_max: int,
    num_classes: int,
    imbalance: float,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Per-class image counts of a parametric long-tail profile ('exp' or 'step').

    Returns an int64 array of length ``num_classes``.  Raises :class:`DataError` for an
    imbalance outside (0, 1], an n_max below 1, or a class whose count would be 0 (the
    message names the class and the smallest valid imbalance).  Profiles 'none' and 'file'
    are not parametric: :func:`benchmark.data.build_dataset` handles them (pool counts /
    :func:`read_counts_file`).
    """
    if profile not in ("exp", "step"):
        raise DataError(
            f"class_counts computes the parametric profiles 'exp' and 'step', got {profile!r}. "
            "Profile 'none' keeps the pool's own counts; profile 'file' reads them with read_counts_file."
        )
    rho = check_imbalance(imbalance)
    if int(n_max) != n_max or n_max < 1:
        raise DataError(f"n_max must be a positive integer, got {n_max!r}; set data.n_max or leave it empty")
    if num_classes < 1:
        raise DataError(f"num_classes must be at least 1, got {num_classes}")
    counts = _raw_counts(profile, int(n_max), num_classes, rho)
    empty = [i for i, n in enumerate(counts) if n < 1]
    if empty:
        named = ", ".join(f"{i} ({class_names[i]!r})" if class_names is not None else str(i) for i in empty)
        best = smallest_valid_imbalance(profile, n_max=int(n_max), num_classes=num_classes)
        raise DataError(
            f"class{'es' if len(empty) > 1 else ''} {named} would get 0 images with profile {profile!r}, "
            f"n_max {n_max} and imbalance {rho:g}. The smallest valid imbalance here is {best:g} "
            f"(1 image for the tail class); raise --imbalance or data.n_max."
        )
    return np.asarray(counts, dtype=np.int64)


def select_longtail(labels: np.ndarray, counts: Sequence[int], *, seed: int = 0) -> np.ndarray:
    """Indices into ``labels`` of the LDAM long-tailed selection (int64, grouped by class).

    ``counts[c]`` images are kept for class ``c`` (classes are 0..len(counts)-1).  Uses one
    ``np.random.RandomState(seed)`` and never touches the global numpy generator.  Raises
    :class:`DataError` when a class has fewer images than asked, or when the labels hold a
    class outside 0..len(counts)-1.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    num_classes = len(counts)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"labels must lie in 0..{num_classes - 1} to match {num_classes} per-class counts, "
            f"found {labels.min()}..{labels.max()}; give one count per class"
        )
    if (counts < 0).any():
        raise DataError(f"per-class counts must be >= 0, got {counts.tolist()}")
    rng = np.random.RandomState(seed)
    chosen = []
    for c in range(num_classes):
        idx = np.where(labels == c)[0]
        if counts[c] > len(idx):
            raise DataError(
                f"class {c} has only {len(idx)} images in the pool but the profile asks for "
                f"{counts[c]}; lower data.n_max (at most the smallest class of the pool) "
                "or fix the counts file"
            )
        rng.shuffle(idx)  # shuffled even when all are kept: the stream must match LDAM's
        chosen.append(idx[: counts[c]])
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(chosen).astype(np.int64)


def split_fingerprint(source_id: str, indices: np.ndarray) -> str:
    """16 hex characters identifying a split: the source identity plus the selected indices.

    Two result tables with the same fingerprint trained on the same images in the same order.
    """
    digest = hashlib.sha256()
    digest.update(source_id.encode("utf-8"))
    digest.update(b"\0")
    digest.update(np.ascontiguousarray(np.asarray(indices, dtype="<i8")).tobytes())
    return digest.hexdigest()[:16]


def assign_groups(counts: Sequence[int], *, rule: str, many: int = 100, few: int = 20) -> list[str]:
    """Group ('many' | 'medium' | 'few') of every class.

    * ``thresholds``: many if count > ``many``, few if count < ``few``, else medium (the
      long-tailed recognition convention; CIFAR-100-LT IR100 gives 35 / 35 / 30 classes).
    * ``thirds``: classes ranked by count (descending, ties by class index) and cut into
      thirds [0, C//3), [C//3, 2C//3), [2C//3, C) of that ranking.  For the exp and step
      profiles the ranking is the class index, so this is UTLO's class-index thirds
      (C=10: [0,3), [3,6), [6,10)); ranking keeps the rule meaningful for folders whose
      classes are not ordered head first.

    A group may come out empty; callers report it (see ``describe_groups``), never drop it.
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    if rule == "thresholds":
        if few > many + 1:
            raise DataError(f"few threshold ({few}) must not exceed many threshold + 1 ({many + 1})")
        return [MANY if n > many else FEW if n < few else MEDIUM for n in counts]
    if rule == "thirds":
        num = len(counts)
        order = np.argsort(-counts, kind="stable")
        groups = [""] * num
        for rank, c in enumerate(order):
            groups[c] = MANY if rank < num // 3 else MEDIUM if rank < 2 * num // 3 else FEW
        return groups
    raise DataError(f"unknown group rule {rule!r}; valid rules: {', '.join(GROUP_RULES)} (or 'auto')")


def read_counts_file(path: str | Path, *, class_names: Sequence[str]) -> np.ndarray:
    """Per-class counts from a text file: one integer per line (class order), or CSV lines
    ``class,count`` where class is an index or a class name (a ``class,count`` header is
    allowed).  Blank lines and ``#`` comments are skipped.  Every class must appear exactly
    once with a count >= 1, else :class:`DataError` says what to fix.
    """
    path = Path(path)
    num = len(class_names)
    if not path.is_file():
        raise DataError(f"counts file {path} does not exist; pass an existing file with data.counts_file")
    by_name = {name: i for i, name in enumerate(class_names)}
    plain: list[int] = []
    keyed: dict[int, int] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        where = f"{path}:{lineno}"
        try:
            if len(parts) == 1:
                plain.append(int(parts[0]))
                continue
            if len(parts) != 2:
                raise ValueError
            if lineno == 1 and parts[1].lower() == "count":
                continue  # header
            key, value = parts[0], int(parts[1])
        except ValueError:
            raise DataError(f"{where}: expected an integer count or 'class,count', got {raw!r}") from None
        cls = int(key) if key.lstrip("-").isdigit() else by_name.get(key)
        if cls is None or not 0 <= cls < num:
            raise DataError(f"{where}: unknown class {key!r}; use an index 0..{num - 1} or one of the class names")
        if cls in keyed:
            raise DataError(f"{where}: class {key!r} is listed twice; give each class exactly once")
        keyed[cls] = value
    if plain and keyed:
        raise DataError(f"counts file {path} mixes plain counts and 'class,count' lines; use one form")
    if keyed:
        missing = [_describe_class(class_names, c) for c in range(num) if c not in keyed]
        if missing:
            raise DataError(
                f"counts file {path} lists {len(keyed)} classes but the dataset has {num}; "
                f"missing: {', '.join(missing)}"
            )
        plain = [keyed[c] for c in range(num)]
    if len(plain) != num:
        raise DataError(
            f"counts file {path} has {len(plain)} counts but the dataset has {num} classes "
            f"({', '.join(class_names)}); give exactly one count per class"
        )
    for c, n in enumerate(plain):
        if n < 1:
            raise DataError(
                f"counts file {path}: class {c} ({class_names[c]!r}) has count {n}; every class needs >= 1 image"
            )
    return np.asarray(plain, dtype=np.int64)


def _describe_class(class_names: Sequence[str], c: int) -> str:
    return f"{c} ({class_names[c]!r})"
