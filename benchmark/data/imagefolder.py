"""``imagefolder:PATH``: a new dataset as one subfolder per class.

* Classes are the subfolder names, sorted (as torchvision's ImageFolder); files are read in
  sorted order, so the pool order (and with it the long-tail selection) is reproducible.
* Channels follow the data: if every image is grayscale (mode L/1/I/F, or RGB with equal
  channels) the set has 1 channel, else 3 (alpha is dropped).
* Evaluation split: ``data.reference_folder`` (same class subfolders) when given, else one
  held out of the folder by ``data.reference_protocol`` (default: a fifth of every class, tail
  classes scored against all their images; see :mod:`benchmark.data.reference`); the rest, in
  file order, is the train pool.
* Images of one square size are kept as they are (or resized later in one batch); mixed or
  non-square sizes need ``data.resolution``: each image is center-cropped to a square and
  resized with ``data.resize``.
* Group rule: thresholds for more than 10 classes, class thirds otherwise.  Flips allowed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmark.core.errors import DataError
from benchmark.data.sources import (
    DATASETS,
    ImageSet,
    RawSource,
    resize_images,
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp", ".gif")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _class_files(root: Path) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise DataError(
            f"image folder {root} does not exist or is not a folder; "
            "pass imagefolder:PATH with one subfolder per class"
        )
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"image folder {root} has {len(classes)} class subfolder(s); it needs one subfolder per "
            "class and at least 2 classes (e.g. PATH/cat/*.png, PATH/dog/*.png)"
        )
    files = {name: image_files(root / name) for name in classes}
    empty = [name for name, found in files.items() if not found]
    if empty:
        raise DataError(
            f"image folder {root}: class folder(s) {', '.join(empty)} hold no images "
            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the empty folders"
        )
    return files


def _is_image(entry: os.DirEntry) -> bool:
    return entry.is_file() and not entry.name.startswith(".") and entry.name.lower().endswith(IMAGE_EXTENSIONS)


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by extension, hidden files skipped), sorted.  A subfolder
    holding images is refused, not skipped: its images would be silently missing from the class."""
    entries = list(os.scandir(folder))
    for sub in sorted(e.path for e in entries if e.is_dir() and not e.name.startswith(".")):
        nested = next((Path(d) / f for d, _, files in os.walk(sub) for f in sorted(files)
                       if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)), None)  # fmt: skip
        if nested is not None:
            raise DataError(f"{folder} holds images in a subfolder ({nested}); a class's images are read from its own "
                            "folder only, so these would be left out: move them up into the class folder, or out of it")
    return sorted(Path(e.path) for e in entries if _is_image(e))


def read_image(path: Path) -> np.ndarray:
    """HWC uint8 with 1 channel (grayscale) or 3 channels (colour)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in GRAY_MODES:
                gray = img.convert("L") if img.mode not in ("I", "I;16", "I;16B", "I;16L", "F") else _to_l(img)
                return np.array(gray, dtype=np.uint8)[:, :, None]
            rgb = np.array(img.convert("RGB"), dtype=np.uint8)
    except Exception as err:  # PIL raises many types for broken files
        raise DataError(f"cannot read image {path}: {err}; fix or remove this file") from None
    if (rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 1] == rgb[:, :, 2]).all():
        return rgb[:, :, :1].copy()  # RGB-saved grayscale: the data decides, not the file mode
    return rgb


def set_channels(arrays: list[np.ndarray]) -> int:
    """The channels of a set read by :func:`read_image`: 3 if any image is in colour, else 1."""
    return 3 if any(a.shape[2] == 3 for a in arrays) else 1


def _to_l(img) -> Image.Image:
    # 16-bit / float grayscale: scale the full range to 0..255 instead of PIL's clipping
    arr = np.asarray(img, dtype=np.float64)
    top = 65535.0 if arr.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(np.round(arr * 255.0 / top), 0, 255).astype(np.uint8))


def center_square(arr: torch.Tensor) -> torch.Tensor:
    _, h, w = arr.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return arr[:, top : top + side, left : left + side]


def _load_folder(files: dict[str, list[Path]]) -> tuple[list[np.ndarray], np.ndarray]:
    arrays, labels = [], []
    for label, name in enumerate(files):
        for path in files[name]:
            arrays.append(read_image(path))
            labels.append(label)
    return arrays, np.asarray(labels, dtype=np.int64)


def _stack(arrays: list[np.ndarray], channels: int, resolution: int | None, resize: str) -> tuple[torch.Tensor, bool]:
    """NCHW uint8 tensor; returns (images, resized_here)."""
    tensors = [torch.from_numpy(a).permute(2, 0, 1) for a in arrays]
    if channels == 3:
        tensors = [t.expand(3, -1, -1) if t.shape[0] == 1 else t for t in tensors]
    sizes = {tuple(t.shape[1:]) for t in tensors}
    if len(sizes) == 1 and next(iter(sizes))[0] == next(iter(sizes))[1]:
        return torch.stack(tensors).contiguous(), False  # get_source resizes the batch at once
    if resolution is None:
        shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:4])
        raise DataError(
            f"images have different or non-square sizes ({shown}); set data.resolution "
            "(e.g. --set data.resolution=32) to center-crop and resize them"
        )
    out = [resize_images(center_square(t).unsqueeze(0), resolution, resize)[0] for t in tensors]
    return torch.stack(out).contiguous(), True


def _listing(files: dict[str, list[Path]], root: Path, *, times: bool) -> str:
    rows = []
    for paths in files.values():
        for p in paths:
            st = p.stat()
            rows.append(f"{p.relative_to(root)}|{st.st_size}" + (f"|{st.st_mtime_ns}" if times else ""))
    return "\n".join(rows)


def _folders(arg: str | None, reference_folder: Path | None) -> tuple[Path, Path | None]:
    if not arg:
        raise DataError("imagefolder needs a path: --dataset imagefolder:PATH (one subfolder per class)")
    return Path(arg).expanduser().resolve(), reference_folder


def _cache_token(*, arg: str | None, reference_folder: str | None) -> str:
    """Names, sizes and modification times of every file: a changed folder loads again."""
    try:
        root, ref = _folders(arg, Path(reference_folder) if reference_folder else None)
        token = _listing(_class_files(root), root, times=True)
        if ref is not None:
            token += "\nref\n" + _listing(_class_files(ref), ref, times=True)
        return token
    except DataError:
        return ""  # the loader raises the same error with its full message


@DATASETS.register("imagefolder")
def load_imagefolder(*, arg, data_root, reference_folder, resolution, resize) -> RawSource:
    """Load ``imagefolder:PATH`` (see the module docstring for every rule)."""
    root, ref = _folders(arg, reference_folder)
    files = _class_files(root)
    names = list(files)
    arrays, labels = _load_folder(files)
    identity = _listing(files, root, times=False)
    ref_arrays: list[np.ndarray] = []
    if ref is not None:
        ref_files = _class_files(ref)
        if list(ref_files) != names:
            missing = sorted(set(names) - set(ref_files))
            extra = sorted(set(ref_files) - set(names))
            raise DataError(
                f"reference folder {ref} must have the same class subfolders as {root}; "
                f"missing: {', '.join(missing) or '-'}; extra: {', '.join(extra) or '-'}"
            )
        ref_arrays, ref_labels = _load_folder(ref_files)
        identity += "\nref\n" + _listing(ref_files, ref, times=False)
    channels = set_channels(arrays + ref_arrays)
    images, resized = _stack(arrays + ref_arrays, channels, resolution, resize)
    if ref is not None:
        train_images, test_images = images[: len(arrays)], images[len(arrays) :]
        train_labels, test_labels = labels, ref_labels
        note = f"reference folder {ref}"
    else:  # get_source holds the reference out by data.reference_protocol
        train_images, test_images = images, images[:0]
        train_labels, test_labels = labels, labels[:0]
        note = "held out by data.reference_protocol"
    return RawSource(
        train=ImageSet(images=train_images.contiguous(), labels=torch.from_numpy(train_labels)),
        test=ImageSet(images=test_images.contiguous(), labels=torch.from_numpy(test_labels)),
        class_names=names,
        hflip=True,
        group_rule="thresholds" if len(names) > 10 else "thirds",
        identity=identity,
        test_note=note,
        resize=resize if resized else "none",
        holdout=ref is None,
        reference_protocol="folder" if ref is not None else "",
    )


load_imagefolder.cache_token = _cache_token  # type: ignore[attr-defined]
