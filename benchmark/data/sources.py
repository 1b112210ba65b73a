"""Image sources: the registry of dataset loaders and the in-memory form every source takes.

A source is a full train pool plus a balanced evaluation split, held as uint8 tensors
(NCHW) so the training loop never decodes images.  Loaders are registered in ``DATASETS``;
a new dataset needs only a function returning :class:`RawSource`::

    from benchmark.data import DATASETS, ImageSet, RawSource

    @DATASETS.register("my-set")
    def load_my_set(*, arg, data_root, reference_folder, resolution, resize) -> RawSource:
        ...  # arg is the text after "my-set:" (or None); may ignore resolution/resize

A loader that takes further ``data.*`` fields names them in an ``options`` attribute (a tuple,
e.g. ``listfile``'s list_root / reference_list / class_names); they reach it as keywords, and
setting one for a dataset that does not take it is an error.

:func:`get_source` then resizes to the configured resolution with a named method and gives
the result a ``source_id`` that changes whenever the data, resolution or resize change.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.core.errors import DataError
from benchmark.core.registry import Registry, UnknownNameError
from benchmark.data.reference import resolve_protocol, split_reference

# name -> (torch interpolate mode, antialias); 'nearest' uses nearest-exact, which matches
# PIL / scikit-image (torch's legacy 'nearest' shifts the image by half a pixel)
RESIZE_METHODS: dict[str, tuple[str, bool | None]] = {
    "bicubic-antialias": ("bicubic", True),
    "bilinear-antialias": ("bilinear", True),
    "nearest": ("nearest-exact", None),
    "area": ("area", None),
}
_RESIZE_CHUNK = 2048  # images per interpolate call: bounds the float32 working memory

DATASETS: Registry = Registry("dataset")


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images (uint8 [N, C, H, W]) with their class labels (int64 [N])."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            got = f"{self.images.dtype} {tuple(self.images.shape)}"
            raise DataError(f"images must be a uint8 tensor [N, C, H, W], got {got}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            got = f"{self.labels.dtype} {tuple(self.labels.shape)}"
            raise DataError(f"labels must be int64 [N] matching {self.images.shape[0]} images, got {got}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class RawSource:
    """What a loader returns: the data at its native size plus the dataset's conventions.

    ``identity`` is extra text folded into the source id (for example a file listing);
    ``test_note`` says how the evaluation split was made (shown to users, kept in SourceData).
    ``holdout=True``: the source has no evaluation split of its own (``test`` is empty) and
    :func:`get_source` holds one out of ``train`` by ``data.reference_protocol``
    (:mod:`benchmark.data.reference`); ``reference_protocol`` names a split the loader made
    itself (``folder`` for a reference folder; empty for a dataset's own test split).
    """

    train: ImageSet
    test: ImageSet
    class_names: list[str]
    hflip: bool  # flip augmentation allowed (no for digits / text-like data)
    group_rule: str  # 'thresholds' | 'thirds'
    identity: str = ""
    test_note: str = "test split"
    resize: str = "none"  # resize method the loader already applied (folders of mixed sizes)
    holdout: bool = False
    reference_protocol: str = ""


@dataclass(frozen=True, eq=False)
class SourceData:
    """A loaded source at its working resolution.

    ``train`` is the full train pool, ``test`` the balanced evaluation split, ``resize`` the
    resize method applied ('none' when the native size was kept), ``source_id`` the identity
    of all of it (content hash + resolution + resize).  ``reference_protocol`` is the recorded
    name of a held-out or folder reference ('' for a dataset's own test split) and
    ``fallback_classes`` the classes scored against all their images (protocol holdout).
    """

    name: str
    source_id: str
    train: ImageSet
    test: ImageSet
    class_names: list[str]
    channels: int
    resolution: int
    hflip: bool
    group_rule: str
    resize: str
    test_note: str = "test split"
    reference_protocol: str = ""
    fallback_classes: tuple[int, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def default_data_root() -> Path:
    """Where datasets are looked for / downloaded when no data root is given:
    ``$LTGEN_DATA_ROOT``, else ``~/.cache/ltgen-bench/data``."""
    return Path(os.environ.get("LTGEN_DATA_ROOT", "~/.cache/ltgen-bench/data")).expanduser()


def downloads_allowed() -> bool:
    """False when ``$LTGEN_OFFLINE`` is set to 1/true/yes: then no download is attempted."""
    return os.environ.get("LTGEN_OFFLINE", "").strip().lower() not in {"1", "true", "yes", "on"}


def resize_images(images: torch.Tensor, resolution: int, method: str) -> torch.Tensor:
    """Resize uint8 NCHW images to ``resolution`` x ``resolution`` with a named method.

    Methods: 'bicubic-antialias', 'bilinear-antialias', 'nearest' (nearest-exact), 'area'.
    Works in float32 chunks and rounds back to uint8.  Non-square inputs are stretched;
    loaders center-crop first when they want to keep the aspect.
    """
    if method not in RESIZE_METHODS:
        raise DataError(f"unknown resize method {method!r}; valid: {', '.join(RESIZE_METHODS)}")
    if tuple(images.shape[-2:]) == (resolution, resolution):
        return images
    mode, antialias = RESIZE_METHODS[method]
    out = torch.empty((images.shape[0], images.shape[1], resolution, resolution), dtype=torch.uint8)
    kwargs = {"antialias": antialias} if antialias is not None else {}
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK].float()
        resized = F.interpolate(chunk, size=(resolution, resolution), mode=mode, **kwargs)
        out[start : start + _RESIZE_CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def balanced_holdout(labels: np.ndarray, n_per_class: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, held-out) with ``n_per_class`` held out of every class.

    One ``RandomState(seed)``; each class's indices (dataset order) are shuffled in class
    order and the first ``n_per_class`` held out.  Both outputs are sorted, so the train
    pool keeps dataset order (the long-tail selection depends on it).
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.RandomState(seed)
    held = []
    for c in range(int(labels.max()) + 1 if labels.size else 0):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        held.append(idx[:n_per_class])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held_idx] = False
    return np.where(mask)[0], held_idx


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'imagefolder:/some/path' -> ('imagefolder', '/some/path'); 'cifar10' -> ('cifar10', None)."""
    name, sep, arg = str(spec).partition(":")
    return name.strip(), (arg if sep else None)


def get_source(
    spec: str,
    *,
    data_root: str | Path | None = None,
    resolution: int | None = None,
    resize: str = "bicubic-antialias",
    reference_folder: str | Path | None = None,
    reference_protocol: str = "auto",
    reference_fraction: float = 0.2,
    reference_min: int = 20,
    options: Mapping[str, str | None] | None = None,
) -> SourceData:
    """Load a source by spec: 'fashion-mnist' | 'mnist' | 'cifar10' | 'cifar100' | 'digits'
    | 'imagefolder:PATH' | 'listfile:LIST' (or any name registered in ``DATASETS``).

    ``options`` are the loader-specific ``data.*`` fields (None = not set); a set option the
    loader does not declare is a :class:`DataError` naming the datasets that take it.

    ``resolution`` None keeps the native size.  ``reference_*`` choose how a source without an
    evaluation split of its own (a folder) gets one (see :mod:`benchmark.data.reference`).  Results are cached in-process by the
    arguments (and, for folders, a listing of file names, sizes and times), so asking
    twice is free.  Raises :class:`DataError` for data that is missing or unreadable, and a
    ConfigError listing the valid names for an unknown dataset.
    """
    name, arg = parse_spec(spec)
    if name not in DATASETS:
        message = DATASETS.unknown_message(name).rstrip(".")
        raise UnknownNameError(
            f"{message} (imagefolder:PATH for a folder with one subfolder per class, "
            "listfile:LIST for a list of 'path label' lines)"
        )
    if resize not in RESIZE_METHODS:
        raise DataError(f"unknown resize method {resize!r}; valid: {', '.join(RESIZE_METHODS)} (data.resize)")
    if resolution is not None and (int(resolution) != resolution or resolution < 1):
        raise DataError(f"resolution must be a positive integer or empty for the native size, got {resolution!r}")
    loader = DATASETS.get(name)
    opts = _loader_options(name, loader, options or {})
    # resolve the default here, so the cache key follows $LTGEN_DATA_ROOT
    root = str(Path(data_root if data_root is not None else default_data_root()).expanduser().resolve())
    ref = str(Path(reference_folder).expanduser().resolve()) if reference_folder is not None else None
    token_fn = getattr(loader, "cache_token", None)  # loaders over user folders fingerprint them
    token = token_fn(arg=arg, reference_folder=ref, **dict(opts)) if token_fn is not None else ""
    split = (reference_protocol, float(reference_fraction), int(reference_min))
    return _cached_source(name, arg, root, None if resolution is None else int(resolution), resize, ref, opts, token,
                          split)  # fmt: skip


def _loader_options(name: str, loader, options: Mapping[str, str | None]) -> tuple[tuple[str, str], ...]:
    """The set options as a sorted tuple (hashable: part of the cache key), checked against the loader."""
    accepted = tuple(getattr(loader, "options", ()))
    given = {k: str(v) for k, v in options.items() if v is not None}
    for key in sorted(given):
        if key not in accepted:
            takers = [n for n in DATASETS.names() if key in getattr(DATASETS.get(n), "options", ())]
            where = ", ".join(f"{n}:..." for n in takers) or "no registered dataset"
            raise DataError(f"data.{key} applies to {where} only; leave it empty for dataset {name!r}")
    return tuple(sorted(given.items()))


def clear_source_cache() -> None:
    """Forget every loaded source (frees memory; the next get_source loads again)."""
    _cached_source.cache_clear()


@functools.lru_cache(maxsize=4)  # a source at 64px CIFAR size is ~0.6 GB
def _cached_source(name, arg, root, resolution, resize, ref, opts, token, split) -> SourceData:
    loader = DATASETS.get(name)
    raw: RawSource = loader(
        arg=arg,
        data_root=Path(root),
        reference_folder=Path(ref) if ref else None,
        resolution=resolution,
        resize=resize,
        **dict(opts),
    )
    if len(raw.class_names) < 2:
        raise DataError(f"dataset {name!r} has {len(raw.class_names)} class(es); a benchmark needs at least 2")
    raw, fallback = _apply_reference_protocol(name, arg, raw, *split)
    identity = _content_hash(name, raw)
    native = tuple(raw.train.images.shape[-2:])
    if resolution is None:
        if native[0] != native[1]:
            raise DataError(f"dataset {name!r} has non-square {native[0]}x{native[1]} images; set data.resolution")
        resolution = native[0]
    train, test, used = raw.train, raw.test, raw.resize
    if native != (resolution, resolution) or tuple(raw.test.images.shape[-2:]) != native:
        train = ImageSet(images=resize_images(raw.train.images, resolution, resize), labels=raw.train.labels)
        test = ImageSet(images=resize_images(raw.test.images, resolution, resize), labels=raw.test.labels)
        used = resize
    short = name if arg is None else f"{name}:{Path(arg).name or arg}"
    return SourceData(
        name=name if arg is None else f"{name}:{arg}",
        source_id=f"{short}:{identity}:{resolution}px:{used}",
        train=train,
        test=test,
        class_names=list(raw.class_names),
        channels=int(train.images.shape[1]),
        resolution=int(resolution),
        hflip=bool(raw.hflip),
        group_rule=raw.group_rule,
        resize=used,
        test_note=raw.test_note,
        reference_protocol=raw.reference_protocol,
        fallback_classes=fallback,
    )


def _apply_reference_protocol(name: str, arg: str | None, raw: RawSource, protocol: str, fraction: float,
                              minimum: int) -> tuple[RawSource, tuple[int, ...]]:
    """Hold a reference out of a source that has none; check the protocol fits one that has."""
    if not raw.holdout:
        if raw.reference_protocol == "folder":
            resolve_protocol(protocol, has_folder=True)  # holdout + reference folder: the error says pick one
        elif protocol != "auto":
            own = f"its own evaluation split ({raw.test_note})"
            raise DataError(f"data.reference_protocol={protocol} applies to folders without a reference split; "
                            f"dataset {name!r} has {own}: leave data.reference_protocol=auto")
        return raw, ()
    resolved = resolve_protocol(protocol, has_folder=False)
    where = arg if arg is not None else name
    cut = split_reference(raw.train.labels.numpy(), resolved, fraction=fraction, minimum=minimum,
                          class_names=list(raw.class_names), where=where, listed=name == "listfile")

    def part(idx: np.ndarray) -> ImageSet:
        index = torch.from_numpy(idx)
        return ImageSet(images=raw.train.images[index].contiguous(), labels=raw.train.labels[index])

    raw = dataclasses.replace(raw, train=part(cut.train), test=part(cut.test), holdout=False, test_note=cut.note,
                              reference_protocol=cut.label, identity=f"{raw.identity}\nreference={cut.label}")
    return raw, cut.fallback


def _content_hash(name: str, raw: RawSource) -> str:
    """Cheap identity of a source's content: labels, shapes, first/last images, loader text."""
    digest = hashlib.sha256(name.encode())
    for part in (raw.train, raw.test):
        digest.update(str(tuple(part.images.shape)).encode())
        digest.update(part.labels.numpy().astype("<i8").tobytes())
        if len(part):
            digest.update(part.images[0].contiguous().numpy().tobytes())
            digest.update(part.images[-1].contiguous().numpy().tobytes())
    digest.update("\0".join(raw.class_names).encode())
    digest.update(raw.identity.encode())
    digest.update(raw.resize.encode())
    return digest.hexdigest()[:12]
