"""Score one set of class-labelled images: features once, every metric by slicing, downstream accuracy.

``evaluate_set`` returns the tidy rows [feature_space, metric, group, class, n_gen, n_ref,
value, note]; ``real_floor_rows`` scores real held-out reference images the same way (what a
perfect generator would score at that sample size); ``load_samples`` reads images generated
outside the harness.  The reference set is a named choice (``EvalConfig.reference``):
``test`` (the balanced test split), ``train-balanced`` (the balanced full train pool) or
``longtail`` (the long-tailed train subset); its name is in every row's note, and
``reference_label`` adds the data's reference protocol for the ``reference`` column (folders:
e.g. ``test:holdout-0.2-min20``).  With protocol ``holdout`` the reference of a *fallback class*
(too few held out) is all its real images: the rows of that class, and of the group and overall
slices holding it, carry ``reference=train-fallback``.  The floor holds out
min(n, half a class) images per class, fewer than a method's n where a class is small: with
``floor_n`` a method is also scored at the floor's sample size (``<metric>_at_floor_n`` rows).
FID and KID of a slice with fewer than ``eval.min_ref_fid`` reference images are NaN with the
reason (precision / recall need k + 1, density / coverage dc_k + 1: metrics.py says so itself).
With ``EvalConfig.diversity`` the rows include the Vendi score of generated and real images
at the same n and the memorisation rate against the long-tailed training
images of each class, in the feature space and in pixel space.  The real floor's memorisation
queries are reference images outside the training subset (``reference_with_membership``), held
out first; a class without any is NaN with the reason.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.core.config import EvalConfig, choices
from benchmark.core.distributed import current, main_first
from benchmark.core.errors import ConfigError, DataError, failure_note
from benchmark.core.files import save_npz_atomic, write_csv_atomic
from benchmark.core.names import (
    ALL,
    CLASS,
    EVALUATOR_ACC,
    EVALUATOR_BALANCED_ACC,
    FID,
    FID_HALF_A,
    FID_HALF_B,
    GROUPS,
    KID,
    MEMORIZATION,
    MEMORIZATION_PIXEL,
    NO_FEATURES,
    PIXEL,
    at_floor_n,
    class_mean,
)
from benchmark.data.imagefolder import IMAGE_EXTENSIONS, image_files, read_image, set_channels
from benchmark.data.reference import FALLBACK_NOTE
from benchmark.eval.diversity import vendi_inlier_rows, vendi_rows
from benchmark.eval.downstream import downstream_rows
from benchmark.eval.features import extract_cached, get_feature_space
from benchmark.eval.memorization import (
    class_ratios,
    distinct_training,
    failed_rows,
    memorization_rows,
    neighbour_sheet,
    pixels,
    sheet_classes,
)
from benchmark.eval.metrics import STATS_VERSION, compute_rows
from benchmark.eval.trust import UNTRUSTED_NOTE, TrustVerdict, fix_advice

# what an evaluation yields; the harness adds the cell columns (harness.results.RESULT_COLUMNS)
EVAL_COLUMNS = ["feature_space", "metric", "group", "class", "n_gen", "n_ref", "value", "note"]
NEIGHBOURS = 3  # nearest training images kept per generated image for the nearest-neighbour sheets
REFERENCES = choices(EvalConfig, "reference")


MIN_REF_METRICS = ("fid", "kid", "fid_ci_low", "fid_ci_high", "kid_ci_low", "kid_ci_high")
# what a method is also scored with at the real floor's sample size (rows ``<metric>_at_floor_n``)
AT_FLOOR_METRICS = frozenset({FID, KID})
AT_FLOOR_ROWS = (FID, KID, class_mean(FID), class_mean(KID))


def reference_set(dataset, reference: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _ = reference_with_membership(dataset, reference)
    return images, labels


def reference_with_membership(dataset, reference: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The reference images and labels, and which of them are in the long-tailed training subset
    (bool, aligned): the real floor's memorisation queries are the others."""
    pool_in_train = np.zeros(len(dataset.source.train.labels), dtype=bool)
    pool_in_train[np.asarray(dataset.indices)] = True
    if reference == "test":
        test, fallback = dataset.source.test, fallback_classes(dataset, reference)
        if not fallback:
            return test.images, test.labels, np.zeros(len(test.labels), dtype=bool)
        pool = dataset.source.train
        extra = np.flatnonzero(np.isin(pool.labels.numpy(), fallback))
        images = torch.cat([test.images, pool.images[torch.from_numpy(extra)]])
        labels = torch.cat([test.labels, pool.labels[torch.from_numpy(extra)]])
        member = np.concatenate([np.zeros(len(test.labels), dtype=bool), pool_in_train[extra]])
        order = torch.argsort(labels, stable=True)  # class blocks: held-out images first, then the pool's
        return images[order].contiguous(), labels[order], member[order.numpy()]
    if reference == "train-balanced":
        return dataset.source.train.images, dataset.source.train.labels, pool_in_train
    if reference == "longtail":
        labels = torch.as_tensor(dataset.train_labels, dtype=torch.int64)
        return dataset.train_images, labels, np.ones(len(labels), dtype=bool)
    raise ConfigError(f"unknown eval.reference {reference!r}; use one of {', '.join(REFERENCES)}")


def fallback_classes(dataset, reference: str) -> tuple[int, ...]:
    """Classes whose reference is all their real images (protocol holdout, reference test)."""
    return tuple(getattr(dataset.source, "fallback_classes", ())) if reference == "test" else ()


def reference_label(reference: str, dataset) -> str:
    """The ``reference`` column: the reference set and, for a held-out or folder reference, its protocol."""
    protocol = getattr(dataset.source, "reference_protocol", "")
    return f"{reference}:{protocol}" if protocol else reference


def enforce_min_ref(frame: pd.DataFrame, *, min_ref: int) -> pd.DataFrame:
    """FID / KID rows of slices with fewer than ``min_ref`` reference images become NaN with the reason."""
    if frame.empty:
        return frame
    small = frame["metric"].isin(MIN_REF_METRICS) & (frame["n_ref"] < min_ref)
    frame = frame.copy()
    frame.loc[small, "value"] = float("nan")
    frame.loc[small, "note"] = [
        f"skipped: {m} needs at least {min_ref} reference images per slice (eval.min_ref_fid), got n_ref={n}"
        for m, n in zip(frame.loc[small, "metric"], frame.loc[small, "n_ref"])
    ]
    return frame


def _fallback_mask(frame: pd.DataFrame, groups: list[str], fallback: tuple[int, ...]) -> pd.Series:
    hit_groups = {"all"} | {groups[c] for c in fallback}
    cls = frame["class"]
    in_class = (frame["group"] == "class") & cls.isin(fallback)
    return in_class | ((frame["group"] != "class") & frame["group"].isin(hit_groups))


def _check_images(images: torch.Tensor, labels: torch.Tensor, dataset) -> None:
    want = (dataset.channels, dataset.resolution, dataset.resolution)
    if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != want:
        raise DataError(f"images must be uint8 [N, {want[0]}, {want[1]}, {want[2]}] to match the dataset, got "
                        f"{tuple(images.shape)} {images.dtype}; resize/convert them (or pick --set data.resolution)")
    if labels.shape != (len(images),):
        raise DataError(f"need one label per image: {len(images)} images, labels of shape {tuple(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= dataset.num_classes):
        raise DataError(f"labels must lie in 0..{dataset.num_classes - 1} (the dataset's classes), got "
                        f"{int(labels.min())}..{int(labels.max())}")


def _rows_from_features(gen: dict, gen_labels, ref: dict, ref_labels, *, dataset, cfg: EvalConfig, seed: int,
                        space_id: str, extra_note: str, device: torch.device | None = None,
                        only: frozenset[str] | None = None) -> pd.DataFrame:
    rows = compute_rows(gen["features"], gen_labels, ref["features"], ref_labels, groups=list(dataset.groups),
                        k=cfg.pr_k, dc_k=cfg.dc_k, kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size,
                        gen_probs=gen.get("probs"), gen_logits=gen.get("logits"), bootstrap=cfg.bootstrap, seed=seed,
                        backend=cfg.fid_backend, device=device, only=only)
    frame = enforce_min_ref(pd.DataFrame(rows), min_ref=cfg.min_ref_fid)
    frame["note"] = [";".join(p for p in (n, extra_note) if p) for n in frame["note"]]
    fallback = fallback_classes(dataset, cfg.reference)
    if fallback and len(frame):
        flag = _fallback_mask(frame, list(dataset.groups), fallback)
        frame.loc[flag, "note"] = [f"{n};{FALLBACK_NOTE}" if n else FALLBACK_NOTE for n in frame.loc[flag, "note"]]
    frame.insert(0, "feature_space", space_id)
    return frame


def _diversity_rows(gen: dict, gen_labels, gen_pixels, ref: dict, ref_labels, train: dict, train_labels, train_pixels,
                    *, dataset, k: int, seed: int, space_id: str, extra_note: str,
                    device: torch.device | None = None, queries: np.ndarray | None = None,
                    no_queries: str | None = None) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Vendi (plain and of the in-manifold images) and memorisation rows; also the pixel-space d1/d2
    ratios and nearest training indices.  ``queries``: the indices of the images the memorisation test
    takes (default: all; the real floor: those outside the training subset), ``no_queries`` the
    reason a slice left without any is NaN."""
    groups = list(dataset.groups)
    train_labels = np.asarray(train_labels)
    gen_labels = np.asarray(gen_labels)
    q = np.arange(len(gen_labels)) if queries is None else np.asarray(queries, dtype=np.int64)
    vendi = pd.DataFrame(vendi_rows(gen["features"], gen_labels, ref["features"], ref_labels, groups=groups, seed=seed)
                         + vendi_inlier_rows(gen["features"], gen_labels, ref["features"], ref_labels, groups=groups,
                                             k=k, seed=seed, device=device))
    vendi.insert(0, "feature_space", space_id)
    parts = [vendi]
    pixel = (None, None)
    for space, query, base in ((space_id, gen["features"], train["features"]), (PIXEL, gen_pixels, train_pixels)):
        metric = MEMORIZATION_PIXEL if space == PIXEL else MEMORIZATION
        kind = "pixel" if space == PIXEL else "features"
        counts = np.bincount(train_labels, minlength=dataset.num_classes)
        try:
            keep = distinct_training(base, train_labels, num_classes=dataset.num_classes)  # per space: its duplicates
            counts = np.bincount(train_labels[keep], minlength=dataset.num_classes)
            ratios, near = class_ratios(np.asarray(query)[q], gen_labels[q], base, train_labels,
                                        num_classes=dataset.num_classes, k=NEIGHBOURS, keep=keep)
            rows = pd.DataFrame(memorization_rows(ratios, gen_labels[q], counts, groups=groups, metric=metric,
                                                  space=kind, no_queries=no_queries))
        except Exception as err:  # noqa: BLE001 - a failed neighbour search is NaN rows with the reason
            ratios = near = None  # no neighbour sheet from a search that failed
            rows = pd.DataFrame(failed_rows(gen_labels[q], counts, groups=groups, metric=metric, space=kind,
                                            reason=failure_note(err)))
        rows.insert(0, "feature_space", space)
        parts.append(rows)
        if space == PIXEL:
            pixel = (ratios, near)
    frame = pd.concat(parts, ignore_index=True)
    frame["note"] = [";".join(p for p in (n, extra_note) if p) for n in frame["note"]]
    return frame, pixel[0], pixel[1]


def write_neighbours(path: Path, images: torch.Tensor, labels: np.ndarray, ratios: np.ndarray, near: np.ndarray, *,
                     dataset) -> Path:
    """Store the few-shot classes' most copy-like generated images beside their nearest training
    images in pixel space (``neighbours.npz``: the report draws the nearest-neighbour sheets)."""
    sheet = neighbour_sheet(images, labels, ratios, near, dataset.train_images,
                            classes=sheet_classes(list(dataset.groups), dataset.counts))

    return save_npz_atomic(Path(path), **sheet)


def evaluator_rows(space, dataset) -> list[dict]:
    """The classifier evaluator's held-out accuracy: overall, per group and per class
    (``evaluator_acc``), and the balanced accuracy the trust gate judges (``evaluator_balanced_acc``)."""
    info = getattr(space, "info", None)
    if not info:
        return []
    n = np.asarray(info["test_per_class"], dtype=np.int64)
    hit = np.asarray(info["test_correct_per_class"], dtype=np.int64)
    trust = info["trust"]
    base = f"arch={info['arch']};epochs={info['epochs']};best_epoch={info['best_epoch']};stop={info['stop']}"

    def row(metric, group, cls, classes, value=None, note=base):
        count = int(n[classes].sum())
        if value is None:
            value = float(hit[classes].sum() / count) if count else float("nan")
        return dict(feature_space=space.identity, metric=metric, group=group, **{"class": cls}, n_gen=0, n_ref=count,
                    value=value, note=note if count else f"skipped: no test images;{note}")

    every = list(range(len(n)))
    rows = [row(EVALUATOR_ACC, ALL, None, every)]
    groups = list(dataset.groups)
    for g in GROUPS:
        members = [c for c, name in enumerate(groups) if name == g]
        if members:
            rows.append(row(EVALUATOR_ACC, g, None, members))
    rows += [row(EVALUATOR_ACC, CLASS, c, [c]) for c in every]
    gate = (f"trusted={'yes' if trust['trusted'] else 'no'};chance={trust['chance']:.4g};"
            f"threshold={trust['threshold']:.4g};p={trust['p_value']:.3g};{base}")
    rows.append(row(EVALUATOR_BALANCED_ACC, ALL, None, every, value=float(trust["balanced_acc"]), note=gate))
    return rows


def flag_untrusted(frame: pd.DataFrame, space) -> pd.DataFrame:
    """Every row of an evaluator that failed the trust gate carries ``untrusted-evaluator``."""
    info = getattr(space, "info", None)
    if not info or info["trust"]["trusted"] or frame.empty:
        return frame
    frame = frame.copy()
    mine = frame["feature_space"] == space.identity
    frame.loc[mine, "note"] = [f"{n};{UNTRUSTED_NOTE}" if n else UNTRUSTED_NOTE for n in frame.loc[mine, "note"]]
    return frame


_WARNED: set[str] = set()


def untrusted_message(space, dataset) -> str | None:
    """What the console says about an evaluator that failed the gate (None when it passed)."""
    info = getattr(space, "info", None)
    if not info or info["trust"]["trusted"]:
        return None
    t = info["trust"]
    source = dataset.source
    tips = fix_advice(channels=source.channels, resolution=source.resolution,
                      smallest_train=int(min(info["train_per_class"])),
                      has_reference_folder=source.reference_protocol == "folder",
                      holdout=bool(source.reference_protocol))
    verdict = TrustVerdict(**t)
    lines = [f"WARNING: the classifier evaluator {space.identity} failed the trust gate: {verdict.sentence()}; "
             f"{t['reason']} (trained {info['epochs']} epochs on {info['n_train']} images). Its features cannot "
             f"separate the methods: every row from it carries '{UNTRUSTED_NOTE}' and the leaderboard ranks nothing "
             "in its table. What helps:"]
    lines += [f"  - {tip}" for tip in tips]
    return "\n".join(lines)


def _warn_untrusted(space, dataset) -> None:
    message = untrusted_message(space, dataset)
    if message and space.identity not in _WARNED:
        _WARNED.add(space.identity)
        print(message, file=sys.stderr, flush=True)


def evaluate_set(images: torch.Tensor, labels: torch.Tensor, *, dataset, cfg: EvalConfig, cache_dir: Path,
                 device: torch.device, seed: int = 0, downstream: bool = True, progress: bool = True,
                 together: bool = False, neighbours_path: Path | None = None,
                 floor_n: int | None = None, halves: bool = False) -> pd.DataFrame | None:
    """All rows for one generated set (see module docstring); features cached under ``cache_dir``.

    ``together=True``: a collective call of every torchrun rank.  Rank 0 prepares the feature
    space first (e.g. trains and caches the evaluator; the others then load it), the ranks split
    the feature extraction of both sets, and rank 0 alone computes the rows and returns them
    (None on the other ranks).  ``neighbours_path``: where to store the few-shot classes'
    generated images beside their nearest training images (``write_neighbours``), for the report.
    ``floor_n``: the real floor's images per class (``real_floor_rows``' ``n_per_class``); the rows
    then also hold FID / KID at the floor's sample size (``floor_n_rows``).  ``halves``: also the FID
    of each half of the set (``half_rows``), for choosing a setting on one half and reporting the other.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    _check_images(images, labels, dataset)
    cache_dir = Path(cache_dir)
    with main_first(together=together):
        space = get_feature_space(cfg.feature_space, dataset=dataset, cfg=cfg, cache_dir=cache_dir, device=device,
                                  progress=progress and current().main)
    ref_images, ref_labels, ref_member = reference_with_membership(dataset, cfg.reference)
    gen = extract_cached(space, images, cache_dir=cache_dir, progress=progress, together=together)
    ref = extract_cached(space, ref_images, cache_dir=cache_dir, progress=progress, together=together)
    if cfg.diversity:  # the long-tailed training images, for memorisation (cached once per split)
        train = extract_cached(space, dataset.train_images, cache_dir=cache_dir, progress=progress, together=together)
    if together and not current().main:
        return None
    frame = _rows_from_features(gen, labels.numpy(), ref, ref_labels.numpy(), dataset=dataset, cfg=cfg, seed=seed,
                                space_id=space.identity, extra_note=f"reference={cfg.reference}", device=device)
    parts = [frame, pd.DataFrame(evaluator_rows(space, dataset))]
    if floor_n is not None:
        parts.append(floor_n_rows(gen, labels.numpy(), ref, ref_labels.numpy(), dataset=dataset, cfg=cfg,
                                  n_per_class=floor_n, seed=seed, space_id=space.identity, device=device,
                                  outside=floor_outside(ref_member, cfg.reference)))
    if halves:
        parts.append(half_rows(gen, labels.numpy(), ref, ref_labels.numpy(), dataset=dataset, cfg=cfg, seed=seed,
                               space_id=space.identity, device=device))
    if cfg.diversity:
        train_labels = dataset.train_labels.numpy()
        div, ratios, near = _diversity_rows(
            gen, labels.numpy(), pixels(images), ref, ref_labels.numpy(), train, train_labels,
            pixels(dataset.train_images), dataset=dataset, k=cfg.pr_k, seed=seed, space_id=space.identity,
            extra_note=f"reference={cfg.reference}", device=device,
        )  # fmt: skip
        parts.append(div)
        if neighbours_path is not None and ratios is not None:
            write_neighbours(neighbours_path, images, labels.numpy(), ratios, near, dataset=dataset)
    if downstream and cfg.downstream:
        down = downstream_rows(images, labels, dataset=dataset, epochs=cfg.downstream_epochs, seed=seed,
                               device=device, cache_dir=cache_dir, progress=progress, include_real=False)
        down.insert(0, "feature_space", NO_FEATURES)
        parts.append(down)
    frame = flag_untrusted(pd.concat([p for p in parts if len(p)], ignore_index=True)[EVAL_COLUMNS], space)
    frame["class"] = frame["class"].astype("Int64")  # class index, <NA> for overall / group rows
    _warn_untrusted(space, dataset)
    return frame


def floor_split(ref_labels: np.ndarray, n_per_class: int, *, seed: int,
                outside: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Held-out / rest indices: n_per_class per class, capped at half a class so both sides stay usable.
    ``outside`` (bool per reference image: not a training image): those are held out first."""
    rng = np.random.RandomState(seed)
    held, capped = [], 0
    for c in np.unique(ref_labels):
        idx = rng.permutation(np.flatnonzero(ref_labels == c))
        if outside is not None:
            idx = idx[np.argsort(~outside[idx], kind="stable")]
        n = min(n_per_class, len(idx) // 2)
        capped += n < n_per_class
        held.append(idx[:n])
    held_idx = np.sort(np.concatenate(held))
    rest = np.setdiff1d(np.arange(len(ref_labels)), held_idx)
    return held_idx, rest, int(capped)


def floor_gen_subset(gen_labels: np.ndarray, per_class: np.ndarray, *, seed: int) -> np.ndarray:
    """Indices of ``per_class[c]`` generated images of each class c (all of them where it has fewer),
    drawn without replacement with ``seed``: the generated set cut to the real floor's sample size."""
    rng = np.random.RandomState(seed)
    picks = []
    for c, want in enumerate(np.asarray(per_class)):
        idx = np.flatnonzero(gen_labels == c)
        picks.append(rng.permutation(idx)[: int(want)])
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


def floor_note(n_per_class: int, capped: int) -> str:
    """How the real floor's sample is drawn: in the note of its rows and of the methods' rows at its n."""
    note = f"real_floor n_per_class={n_per_class}"
    return note + (f";capped_classes={capped}" if capped else "")


def floor_n_rows(gen: dict, gen_labels: np.ndarray, ref: dict, ref_labels: np.ndarray, *, dataset, cfg: EvalConfig,
                 n_per_class: int, seed: int, space_id: str, device: torch.device | None = None,
                 outside: np.ndarray | None = None) -> pd.DataFrame:
    """FID and KID of the generated set at the real floor's sample size: ``<metric>_at_floor_n`` rows.

    The floor (``real_floor_rows``) holds out min(n_per_class, half a class) real images per class
    and scores them against the rest of the reference; a method's own rows score n_per_class
    images against the whole reference.  FID and KID depend on both n, so these rows score the
    method the floor's way: per class as many generated images as the floor holds out (drawn
    with the cell seed) against the same rest of the reference (the same split: same seed and
    ``outside``, the reference images outside the training subset, held out first).
    They and the floor's FID / KID rows are the like-for-like comparison."""
    held, rest, capped = floor_split(ref_labels, n_per_class, seed=seed, outside=outside)
    want = np.bincount(ref_labels[held], minlength=dataset.num_classes)
    pick = floor_gen_subset(gen_labels, want, seed=seed)
    sub = {k: v[pick] for k, v in gen.items()}
    rest_ref = {k: v[rest] for k, v in ref.items()}
    note = f"reference={cfg.reference};at the {floor_note(n_per_class, capped)}"
    frame = _rows_from_features(sub, gen_labels[pick], rest_ref, ref_labels[rest], dataset=dataset, cfg=cfg,
                                seed=seed, space_id=space_id, extra_note=note, device=device, only=AT_FLOOR_METRICS)
    frame["metric"] = frame["metric"].map(at_floor_n)
    return frame


def half_rows(gen: dict, gen_labels: np.ndarray, ref: dict, ref_labels: np.ndarray, *, dataset, cfg: EvalConfig,
              seed: int, space_id: str, device: torch.device | None = None) -> pd.DataFrame:
    """FID of each half of the generated set against the whole reference, overall and per group:
    ``fid_half_a`` the images at even positions within their class, ``fid_half_b`` the odd ones.
    The halves share nothing, so a choice made on one is an honest estimate when read on the other."""
    position = np.zeros(len(gen_labels), dtype=np.int64)
    for c in np.unique(gen_labels):
        idx = np.flatnonzero(gen_labels == c)
        position[idx] = np.arange(len(idx))
    frames = []
    for metric, parity in ((FID_HALF_A, 0), (FID_HALF_B, 1)):
        pick = np.flatnonzero(position % 2 == parity)
        sub = {k: v[pick] for k, v in gen.items()}
        frame = _rows_from_features(sub, gen_labels[pick], ref, ref_labels, dataset=dataset, cfg=cfg, seed=seed,
                                    space_id=space_id, extra_note=f"reference={cfg.reference};half={metric[-1]}",
                                    device=device, only=frozenset({FID}))
        frame = frame[(frame["metric"] == FID) & (frame["group"] != CLASS)].copy()
        frame["metric"] = metric
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _floor_at_own_n(frame: pd.DataFrame) -> pd.DataFrame:
    """The floor's FID / KID rows once more as ``<metric>_at_floor_n``: a leaderboard column then
    holds the methods at the floor's n and the floor itself (which is at its own n)."""
    same = frame[frame["metric"].isin(AT_FLOOR_ROWS)].copy()
    same["metric"] = same["metric"].map(at_floor_n)
    return pd.concat([frame, same], ignore_index=True)


NO_OUTSIDE = ("no real image of this slice outside the training subset: the memorisation floor has no query here "
              "(a training image held out would find itself)")


def floor_outside(member: np.ndarray, reference: str) -> np.ndarray | None:
    """Which reference images the floor holds out first: those outside the training subset.  Under
    ``longtail`` every reference image is a training image (None: the floor's held-out images leave
    the training set they are tested against instead)."""
    return None if reference == "longtail" else ~np.asarray(member, dtype=bool)


def real_floor_rows(dataset, cfg: EvalConfig, n_per_class: int, *, cache_dir: Path, device: torch.device,
                    seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Metrics of real held-out reference images vs the rest of the reference; cached per dataset.
    Its FID / KID rows come twice, the second time named ``<metric>_at_floor_n`` beside the
    methods' rows of that name (``floor_n_rows``)."""
    cache_dir = Path(cache_dir)
    space = get_feature_space(cfg.feature_space, dataset=dataset, cfg=cfg, cache_dir=cache_dir, device=device,
                              progress=progress)
    key = json.dumps(dict(source=dataset.source.source_id, fp=dataset.fingerprint, reference=cfg.reference,
                          space=space.identity, numerics=space.numerics, n=n_per_class, seed=seed, k=cfg.pr_k, dc_k=cfg.dc_k,
                          kid=[cfg.kid_subsets, cfg.kid_subset_size], boot=cfg.bootstrap, backend=cfg.fid_backend,
                          diversity=cfg.diversity, stats=STATS_VERSION),
                     sort_keys=True)
    path = cache_dir / f"real_floor-{hashlib.sha256(key.encode()).hexdigest()[:16]}.csv"
    if path.exists():
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
        frame["class"] = frame["class"].astype("Int64")
        frame["note"] = frame["note"].fillna("")
        return _floor_at_own_n(frame[EVAL_COLUMNS])
    ref_images, ref_labels, member = reference_with_membership(dataset, cfg.reference)
    ref = extract_cached(space, ref_images, cache_dir=cache_dir, progress=progress)  # shared with evaluate_set
    labels = ref_labels.numpy()
    outside = floor_outside(member, cfg.reference)
    held, rest, capped = floor_split(labels, n_per_class, seed=seed, outside=outside)
    gen = {k: v[held] for k, v in ref.items()}
    note = f"reference={cfg.reference};{floor_note(n_per_class, capped)}"
    rest_ref = {k: v[rest] for k, v in ref.items()}
    frame = _rows_from_features(gen, labels[held], rest_ref, labels[rest],
                                dataset=dataset, cfg=cfg, seed=seed, space_id=space.identity, extra_note=note,
                                device=device)
    if cfg.diversity:
        if cfg.reference == "longtail":  # the held-out images are training images: test them against the rest
            train, train_labels, train_images = rest_ref, labels[rest], ref_images[torch.from_numpy(rest)]
            queries, why = None, None
        else:  # a training image held out would find itself: only the others are queries
            train = extract_cached(space, dataset.train_images, cache_dir=cache_dir, progress=progress)
            train_labels, train_images = dataset.train_labels.numpy(), dataset.train_images
            queries, why = np.flatnonzero(outside[held]), NO_OUTSIDE
        div, _, _ = _diversity_rows(gen, labels[held], pixels(ref_images[torch.from_numpy(held)]), rest_ref,
                                    labels[rest], train, train_labels, pixels(train_images), dataset=dataset,
                                    k=cfg.pr_k, seed=seed, space_id=space.identity, extra_note=note, device=device,
                                    queries=queries, no_queries=why)
        frame = pd.concat([frame, div], ignore_index=True)
    frame = flag_untrusted(frame[EVAL_COLUMNS], space)
    frame["class"] = frame["class"].astype("Int64")
    write_csv_atomic(path, frame)
    return _floor_at_own_n(frame)


# ---------------------------------------------------------------- bring your own samples


def load_samples(path: str | Path, *, class_names: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Read (uint8 images [N, C, H, W], int64 labels) from an .npz (images + labels) or one folder per class."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"samples path {path} does not exist; pass an .npz with 'images' and 'labels' or a folder "
                        "with one sub-folder per class")
    if path.is_dir():
        return _load_folder(path, class_names)
    if path.suffix != ".npz":
        raise DataError(f"samples file {path} is not .npz; save np.savez(path, images=uint8 array, labels=int array)")
    how = "save it with np.savez(path, images=uint8 array, labels=int array) of plain numeric arrays"
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not an .npz (an .npz is a zip archive of arrays); {how}")
    try:
        with np.load(path) as z:
            missing = {"images", "labels"} - set(z.files)
            if missing:
                raise DataError(f"{path} lacks {sorted(missing)} (has {z.files}); {how}")
            images, labels = z["images"], z["labels"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        # not a zip of arrays, or one holding pickled objects (never unpickled: that runs code from the file)
        raise DataError(f"cannot read {path} as an .npz of arrays ({type(exc).__name__}: {exc}); {how}") from None
    return _to_nchw(images, str(path)), _labels(labels, len(images), str(path))


def _to_nchw(images: np.ndarray, where: str) -> torch.Tensor:
    if images.dtype != np.uint8:
        raise DataError(f"images in {where} are {images.dtype}; convert to uint8 0..255 "
                        "(e.g. (x.clip(0, 1) * 255).round().astype(np.uint8))")
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise DataError(f"images in {where} have shape {images.shape}; expected [N, C, H, W] or [N, H, W, C]")
    if images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.shape[1] not in (1, 3):
        raise DataError(f"images in {where} have shape {images.shape}; need 1 or 3 channels, NCHW or NHWC")
    return torch.from_numpy(np.ascontiguousarray(images))


def _labels(labels: np.ndarray, n: int, where: str) -> torch.Tensor:
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels in {where} must be {n} integers (one per image), got {labels.shape} {labels.dtype}")
    return torch.from_numpy(labels.astype(np.int64))


def _load_folder(root: Path, class_names: list[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{root} has no class sub-folders; use one folder per class named 0..C-1 (or by class name)")
    images, labels = [], []
    for folder in folders:
        if folder.name.isdigit():
            label = int(folder.name)
        elif class_names and folder.name in class_names:
            label = class_names.index(folder.name)
        else:
            raise DataError(f"class folder {folder.name!r} in {root} is neither a class index nor a class name "
                            f"({class_names or 'none given'}); rename it to its class index")
        for f in image_files(folder):  # the dataset reader's files and decoding: one rule for both
            images.append(read_image(f))
            labels.append(label)
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in the class folders of {root}")
    if set_channels(images) == 3:  # a colour set keeps the odd exactly-grey image in colour too
        images = [np.repeat(im, 3, axis=2) if im.shape[2] == 1 else im for im in images]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"images in {root} differ in size/channels {sorted(shapes)}; export them at one resolution")
    return _to_nchw(np.stack(images), str(root)), torch.tensor(labels, dtype=torch.int64)
