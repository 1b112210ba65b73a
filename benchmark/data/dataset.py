"""The long-tailed training set every run uses: a source, a selection and its class groups.

``build_dataset(DataConfig(...))`` loads the source, applies the profile (exp / step /
none / file), assigns many / medium / few groups and pins the split with a fingerprint.
``data_table`` and ``describe_groups`` show it; empty groups are kept, never dropped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from benchmark.core.config import DataConfig
from benchmark.core.errors import DataError
from benchmark.core.names import GROUPS
from benchmark.data.longtail import (
    GROUP_RULES,
    PROFILES,
    assign_groups,
    class_counts,
    read_counts_file,
    select_longtail,
    split_fingerprint,
)
from benchmark.data.reference import validation_split
from benchmark.data.sources import SourceData, get_source


@dataclass(frozen=True, eq=False)
class LongTailDataset:
    """A long-tailed subset of a source's train pool.

    ``indices`` index ``source.train`` (grouped by class, LDAM order); ``counts`` and
    ``groups`` are per class; ``imbalance`` is None for profiles 'none' and 'file';
    ``fingerprint`` (16 hex) identifies source + selection and travels with every result.
    """

    source: SourceData
    profile: str
    imbalance: float | None
    indices: np.ndarray
    counts: np.ndarray
    groups: list[str]
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return len(self.source.class_names)

    @property
    def class_names(self) -> list[str]:
        return self.source.class_names

    @property
    def channels(self) -> int:
        return self.source.channels

    @property
    def resolution(self) -> int:
        return self.source.resolution

    @functools.cached_property
    def train_images(self) -> torch.Tensor:
        """uint8 [N, C, H, W] images of the subset (gathered once, then cached)."""
        return self.source.train.images[torch.from_numpy(self.indices)]

    @functools.cached_property
    def train_labels(self) -> torch.Tensor:
        """int64 [N] labels of the subset, aligned with ``train_images``."""
        return self.source.train.labels[torch.from_numpy(self.indices)]

    def group_classes(self, group: str) -> list[int]:
        """Class indices in ``group`` ('many' | 'medium' | 'few'); [] for an empty group."""
        if group not in GROUPS:
            raise DataError(f"unknown group {group!r}; valid groups: {', '.join(GROUPS)}")
        return [c for c, g in enumerate(self.groups) if g == group]

    def __len__(self) -> int:
        return int(len(self.indices))


def build_dataset(cfg: DataConfig) -> LongTailDataset:
    """Build the long-tailed subset described by ``cfg`` (see DataConfig for the fields).

    Profiles: 'exp' and 'step' (parametric, ``imbalance`` = n_min / n_max in (0, 1],
    ``n_max`` default: the smallest class of the pool, which is the balanced class size
    LDAM uses), 'none' (the pool as it is, e.g. an already long-tailed folder) and 'file'
    (``counts_file``: one count per class).  Selection: :func:`select_longtail` with
    ``split_seed``.  Groups: ``cfg.groups`` or, for 'auto', the source's own rule.
    Raises :class:`DataError` (or ConfigError for an unknown dataset) naming the fix.
    """
    source = get_source(
        cfg.dataset,
        data_root=cfg.data_root,
        resolution=cfg.resolution,
        resize=cfg.resize,
        reference_folder=cfg.reference_folder,
        reference_protocol=cfg.reference_protocol,
        reference_fraction=cfg.reference_fraction,
        reference_min=cfg.reference_min,
        options={"list_root": cfg.list_root, "reference_list": cfg.reference_list, "class_names": cfg.class_names},
    )
    labels = source.train.labels.numpy()
    num_classes = source.num_classes
    pool = np.bincount(labels, minlength=num_classes)
    profile = cfg.profile
    imbalance: float | None = None
    if profile in ("exp", "step"):
        n_max = int(pool.min()) if cfg.n_max is None else cfg.n_max
        counts = class_counts(
            profile, n_max=n_max, num_classes=num_classes, imbalance=cfg.imbalance, class_names=source.class_names
        )
        _check_pool(counts, pool, source, fix=f"set data.n_max to at most {pool.min()} or leave it empty")
        imbalance = float(cfg.imbalance)
        indices = select_longtail(labels, counts, seed=cfg.split_seed)
    elif profile == "none":
        counts = pool.astype(np.int64)
        indices = np.arange(len(labels), dtype=np.int64)
        empty = [source.class_names[c] for c in range(num_classes) if counts[c] == 0]
        if empty:
            raise DataError(f"classes {', '.join(empty)} have no train images; remove them or add images")
    elif profile == "file":
        if not cfg.counts_file:
            raise DataError("profile 'file' needs data.counts_file (one count per line, or 'class,count' lines)")
        counts = read_counts_file(cfg.counts_file, class_names=source.class_names)
        _check_pool(counts, pool, source, fix=f"lower that count in {cfg.counts_file}")
        indices = select_longtail(labels, counts, seed=cfg.split_seed)
    else:
        raise DataError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    rule = source.group_rule if cfg.groups == "auto" else cfg.groups
    if rule not in GROUP_RULES:
        raise DataError(f"unknown group rule {cfg.groups!r}; valid: auto, {', '.join(GROUP_RULES)}")
    groups = assign_groups(counts, rule=rule, many=cfg.many_threshold, few=cfg.few_threshold)
    return LongTailDataset(
        source=source,
        profile=profile,
        imbalance=imbalance,
        indices=indices,
        counts=np.asarray(counts, dtype=np.int64),
        groups=groups,
        fingerprint=split_fingerprint(source.source_id, indices),
    )


def _check_pool(counts: np.ndarray, pool: np.ndarray, source: SourceData, *, fix: str) -> None:
    """A class asked for more images than the train pool holds is an error naming it."""
    for c in range(len(counts)):
        if counts[c] > pool[c]:
            raise DataError(
                f"class {c} ({source.class_names[c]!r}) has only {pool[c]} images in the {source.name} "
                f"train pool but {counts[c]} are asked for; {fix}"
            )


def describe_groups(ds: LongTailDataset) -> dict[str, list[int]]:
    """{'many': [...], 'medium': [...], 'few': [...]}: every group present, empty ones as []."""
    return {group: ds.group_classes(group) for group in GROUPS}


def reference_counts(ds: LongTailDataset, reference: str = "test") -> np.ndarray:
    """Reference images per class for ``eval.reference`` (test: held-out images, plus the pool's
    images of the fallback classes; train-balanced: the pool; longtail: the training subset)."""
    k = ds.num_classes
    if reference == "test":
        counts = np.bincount(ds.source.test.labels.numpy(), minlength=k)
        pool = np.bincount(ds.source.train.labels.numpy(), minlength=k)
        for c in ds.source.fallback_classes:
            counts[c] += pool[c]
        return counts.astype(np.int64)
    if reference == "train-balanced":
        return np.bincount(ds.source.train.labels.numpy(), minlength=k).astype(np.int64)
    if reference == "longtail":
        return ds.counts.astype(np.int64)
    raise DataError(f"unknown eval.reference {reference!r}; use one of test, train-balanced, longtail")


def data_table(ds: LongTailDataset, *, reference: str = "test", evaluator_seed: int = 0) -> pd.DataFrame:
    """One row per class: class, name, count (training images), group, and the evaluation split:
    ``reference`` (images the metrics compare with, for ``eval.reference``), ``ref_from``
    (held-out / train-fallback / test split / reference folder / pool / training set), and the
    classifier evaluator's ``eval_train`` / ``eval_val`` (early stopping) / ``eval_test`` images.

    ``attrs`` carries fingerprint, source_id, profile, imbalance, total, empty_groups (names of
    groups with no class), reference, reference_protocol and test_note.
    """
    source = ds.source
    k = ds.num_classes
    pool_labels = source.train.labels.numpy()
    train_idx, val_idx = validation_split(pool_labels, seed=evaluator_seed)
    if reference == "test":
        own = {"folder": "reference folder", "": "test split"}.get(source.reference_protocol, "held-out")
        ref_from = ["train-fallback" if c in source.fallback_classes else own for c in range(k)]
    else:
        ref_from = ["pool" if reference == "train-balanced" else "training set"] * k
    table = pd.DataFrame(
        {
            "class": np.arange(k, dtype=np.int64),
            "name": ds.class_names,
            "count": ds.counts.astype(np.int64),
            "group": ds.groups,
            "reference": reference_counts(ds, reference),
            "ref_from": ref_from,
            "eval_train": np.bincount(pool_labels[train_idx], minlength=k).astype(np.int64),
            "eval_val": np.bincount(pool_labels[val_idx], minlength=k).astype(np.int64),
            "eval_test": np.bincount(source.test.labels.numpy(), minlength=k).astype(np.int64),
        }
    )
    table.attrs.update(
        fingerprint=ds.fingerprint,
        source_id=ds.source.source_id,
        profile=ds.profile,
        imbalance=ds.imbalance,
        total=int(ds.counts.sum()),
        empty_groups=[g for g, members in describe_groups(ds).items() if not members],
        reference=reference,
        reference_protocol=source.reference_protocol,
        test_note=source.test_note,
    )
    return table


def computable_lines(table: pd.DataFrame, *, min_ref_fid: int, pr_k: int, dc_k: int) -> list[str]:
    """Which per-class metrics the reference counts of a :func:`data_table` allow, one line each."""
    lines = []
    for what, least, key in (
        ("FID / KID", min_ref_fid, "eval.min_ref_fid"),
        (f"precision / recall (k={pr_k})", pr_k + 1, "eval.pr_k + 1"),
        (f"density / coverage (k={dc_k})", dc_k + 1, "eval.dc_k + 1"),
    ):
        short = table[table["reference"] < least]
        head = f"{what}: {len(table) - len(short)} of {len(table)} classes (n_ref >= {least}, {key})"
        if len(short):
            shown = ", ".join(f"{int(r['class'])} {r['name']} ({int(r['reference'])})" for _, r in short.head(8).iterrows())
            head += f"; NaN for {shown}{', ...' if len(short) > 8 else ''}"
        lines.append(head)
    fallback = table[table["ref_from"] == "train-fallback"]
    if len(fallback):
        lines.append(f"{len(fallback)} class(es) are scored against all their images, training images included "
                     f"(reference=train-fallback): {', '.join(str(int(c)) for c in fallback['class'])}")
    return lines
