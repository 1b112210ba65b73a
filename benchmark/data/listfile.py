"""``listfile:LIST``: datasets shipped as list files (ImageNet-LT, Places-LT, iNaturalist; the OLTR convention).

* Each non-blank line of LIST is ``relative/path.jpg label``: the path (relative to
  ``data.list_root``, default the list file's folder; spaces allowed) and an integer class
  label, the last field of the line.  A malformed line, a label outside 0..C-1, a path listed
  twice (in one list, or in both the training and the reference list), a missing file and an
  unreadable image are errors naming the list file and the line.
* Classes: ``data.class_names`` is a file with one name per line (line i names class i; C is the
  number of names), or ``folders`` (each class is named after the folder of its images, which
  must be one folder per class), or empty (names "0".."C-1", C = the largest label + 1).
* Evaluation split: ``data.reference_list`` (e.g. ``ImageNet_LT_test.txt``, same root) when
  given (recorded as reference protocol ``folder``: a given reference set), else a hold-out by
  ``data.reference_protocol``, as for ``imagefolder`` (:mod:`benchmark.data.reference`).
* Images are decoded once, streaming through the files with a progress bar: each is
  center-cropped to a square and resized to ``data.resolution`` with ``data.resize``, then held
  as uint8.  Channels follow the data as for ``imagefolder`` (1 if every image is grayscale).
  Without ``data.resolution`` every image must already have one square size.
* The decoded arrays are cached in ``DATA_ROOT/listfile-cache/`` keyed by the content of the
  lists and of the class names, the resolved root, the resolution and the resize, so a second
  run starts in seconds.  The key does not read the images themselves: after replacing image
  files in place under an unchanged list, delete the cache file.  The cache is written in one
  atomic step after every image decoded, so a failed load leaves nothing behind.
* Group rule: thresholds (many > 100, few < 20) for more than 10 classes, else class thirds.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmark.core.errors import DataError
from benchmark.core.files import save_npz_atomic
from benchmark.core.progress import progress as progress_bar
from benchmark.data.imagefolder import center_square, read_image
from benchmark.data.sources import DATASETS, ImageSet, RawSource, resize_images

CACHE_VERSION = 1  # bump when the decoding changes, so old cache files are never read
CACHE_FOLDER = "listfile-cache"
_CHUNK = 512  # images decoded per batch of thread-pool work
_WORKERS = min(8, os.cpu_count() or 1)  # PIL decoding and torch resizing release the GIL


@dataclass(frozen=True, eq=False)
class ListEntries:
    """The parsed lines of one list file: image paths (strings: 100k Path objects cost seconds), labels, line numbers."""

    list_path: Path
    files: list[str]
    labels: np.ndarray
    lines: np.ndarray

    def where(self, i: int) -> str:
        return f"{self.list_path}:{int(self.lines[i])}"


def read_list(list_path: Path, root: Path) -> ListEntries:
    """Parse ``path label`` lines; malformed lines, negative labels and duplicates are errors."""
    if not list_path.is_file():
        raise DataError(f"list file {list_path} does not exist; pass --dataset listfile:LIST with an existing file")
    files, labels, lines, seen = [], [], [], {}
    base = str(root)
    text = list_path.read_text(encoding="utf-8", errors="replace")
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        label = parts[1] if len(parts) == 2 else ""
        if not label.lstrip("-").isdigit():
            raise DataError(f"{list_path}:{lineno}: expected 'relative/path label' (an integer label last), got {raw!r}")
        if int(label) < 0:
            raise DataError(f"{list_path}:{lineno}: label {label} is negative; labels are 0..C-1")
        rel = parts[0]
        if rel in seen:
            raise DataError(f"{list_path}:{lineno}: {rel} is listed twice (first at line {seen[rel]}); list each image once")
        seen[rel] = lineno
        files.append(os.path.join(base, rel))
        labels.append(int(label))
        lines.append(lineno)
    if not files:
        raise DataError(f"list file {list_path} has no 'path label' lines")
    return ListEntries(list_path, files, np.asarray(labels, dtype=np.int64), np.asarray(lines, dtype=np.int64))


def _check_disjoint(train: ListEntries, ref: ListEntries) -> None:
    where = {os.path.normpath(p): i for i, p in enumerate(train.files)}
    for j, p in enumerate(ref.files):
        if os.path.normpath(p) in where:
            raise DataError(
                f"{ref.where(j)}: {p} is also a training image ({train.where(where[os.path.normpath(p)])}); "
                "the reference list must hold other images"
            )


def class_names_for(spec: str | None, lists: list[ListEntries]) -> list[str]:
    """Names of the classes (see the module docstring); every label must name one of them."""
    if spec is None:
        names = [str(c) for c in range(max(int(e.labels.max()) for e in lists) + 1)]
    elif spec == "folders":
        folder: dict[int, tuple[str, str]] = {}
        for e in lists:
            for i, (path, c) in enumerate(zip(e.files, e.labels.tolist())):
                here = os.path.basename(os.path.dirname(path))
                name, first = folder.setdefault(c, (here, e.where(i)))
                if name != here:
                    raise DataError(
                        f"{e.where(i)}: class {c} is in folder {here!r} here but in {name!r} at {first}; "
                        "data.class_names=folders needs one folder per class (or give a class-names file)"
                    )
        num = max(folder) + 1
        if len(folder) != num:
            absent = [str(c) for c in range(num) if c not in folder][:5]
            raise DataError(f"classes {', '.join(absent)} have no image in the lists, so folders cannot name them; "
                            "give a class-names file (data.class_names=FILE)")  # fmt: skip
        names = [folder[c][0] for c in range(num)]
        if len(set(names)) != num:
            raise DataError("two classes share an image folder; data.class_names=folders needs one folder per class")
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise DataError(f"class-names file {path} does not exist; give a file (one name per line) or 'folders'")
        names = [n.strip() for n in path.read_text(encoding="utf-8").splitlines() if n.strip()]
        if len(set(names)) != len(names):
            raise DataError(f"class-names file {path} names a class twice; give each class one unique name")
    for e in lists:
        bad = np.nonzero(e.labels >= len(names))[0]
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{e.where(i)}: label {e.labels[i]} is outside 0..{len(names) - 1} "
                            f"({len(names)} classes); fix the label or the class names")  # fmt: skip
    return names


def _decode_one(entries: ListEntries, i: int, resolution: int | None, resize: str) -> np.ndarray:
    """CHW uint8 (1 or 3 channels) of image i, center-cropped and resized; errors name list and line."""
    path = entries.files[i]
    try:
        arr = read_image(Path(path))
    except DataError as err:
        raise DataError(f"{entries.where(i)}: {err}") from None
    img = torch.from_numpy(arr).permute(2, 0, 1)
    if resolution is None:
        return img.numpy()  # sizes are checked by the caller
    if tuple(img.shape[1:]) != (resolution, resolution):
        img = resize_images(center_square(img).unsqueeze(0), resolution, resize)[0]
    return img.contiguous().numpy()


def decode_images(entries: ListEntries, resolution: int | None, resize: str) -> np.ndarray:
    """uint8 [N, 3, R, R] of every listed image, streamed through a thread pool with a progress bar."""
    missing = [i for i, p in enumerate(entries.files) if not os.path.isfile(p)]
    if missing:
        i = missing[0]
        more = f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise DataError(f"{entries.where(i)}: image {entries.files[i]} does not exist{more}; "
                        "check data.list_root or the list")  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one small image per call: intra-op threads only add overhead; the pool is parallel
    try:
        return _decode_all(entries, resolution, resize)
    finally:
        torch.set_num_threads(threads)


def _decode_all(entries: ListEntries, resolution: int | None, resize: str) -> np.ndarray:
    n = len(entries.files)
    first = _decode_one(entries, 0, resolution, resize)
    side = first.shape[1]
    if resolution is None and first.shape[1] != first.shape[2]:
        raise DataError(f"{entries.where(0)}: image is {first.shape[1]}x{first.shape[2]}, not square; set data.resolution")
    out = np.empty((n, 3, side, side), dtype=np.uint8)
    # a step of building the data: a line in a log file only when it runs past a minute
    bar = progress_bar(total=n, desc=f"decoding {entries.list_path.name}", unit="img", transient=True)
    try:
        with ThreadPoolExecutor(_WORKERS) as pool:
            for start in range(0, n, _CHUNK):
                idx = range(start, min(start + _CHUNK, n))
                for i, img in zip(idx, pool.map(lambda k: _decode_one(entries, k, resolution, resize), idx)):
                    if img.shape[1:] != (side, side):
                        raise DataError(
                            f"{entries.where(i)}: image is {img.shape[1]}x{img.shape[2]} but the first image is "
                            f"{side}x{side}; set data.resolution (e.g. --set data.resolution=64) to crop and resize"
                        )
                    out[i] = img  # a 1-channel image broadcasts to the three planes
                bar.update(len(idx))
    finally:
        bar.close()
    return out


def _is_gray(images: np.ndarray) -> bool:
    for start in range(0, len(images), 4096):  # chunked: no full-size boolean temporaries
        chunk = images[start : start + 4096]
        if not ((chunk[:, 0] == chunk[:, 1]).all() and (chunk[:, 1] == chunk[:, 2]).all()):
            return False
    return True


def _paths(arg: str | None, list_root: str | None, reference_list: str | None) -> tuple[Path, Path, Path | None]:
    if not arg:
        raise DataError("listfile needs a list: --dataset listfile:TRAIN.txt (lines 'relative/path label')")
    train = Path(arg).expanduser().resolve()
    root = Path(list_root).expanduser().resolve() if list_root else train.parent
    ref = Path(reference_list).expanduser().resolve() if reference_list else None
    return train, root, ref


def _cache_key(train: Path, root: Path, ref: Path | None, class_names: str | None, resolution, resize: str) -> str:
    """Content of the lists and of a class-names file, the spec, the root, resolution and resize
    (the class names follow from the lists and the spec, so they need no parsing here)."""
    digest = hashlib.sha256(f"listfile-v{CACHE_VERSION}\0{root}\0{resolution}\0{resize}\0{class_names}\0".encode())
    names_file = Path(class_names).expanduser() if class_names not in (None, "folders") else None
    for path in (train, ref, names_file):
        digest.update(path.read_bytes() if path is not None and path.is_file() else b"<none>")
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def _cache_token(*, arg, reference_folder, list_root=None, reference_list=None, class_names=None) -> str:
    """The cache key: a changed list (or names file) loads again within one process too."""
    try:
        train, root, ref = _paths(arg, list_root, reference_list)
        return _cache_key(train, root, ref, class_names, None, "")
    except (DataError, OSError):
        return ""  # the loader raises the same error with its full message


def _load_cache(path: Path, sizes: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            train, test = data["train"], data["test"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None  # unreadable: decode again and replace it
    if (len(train), len(test)) != sizes:
        return None
    return train, test


def _save_cache(path: Path, train: np.ndarray, test: np.ndarray) -> None:
    try:
        save_npz_atomic(path, train=train, test=test)
    except OSError as err:
        warnings.warn(f"could not write the decoded-image cache {path} ({err}); the next run decodes again", stacklevel=2)


@DATASETS.register("listfile")
def load_listfile(*, arg, data_root, reference_folder, resolution, resize,
                  list_root=None, reference_list=None, class_names=None) -> RawSource:  # fmt: skip
    """Load ``listfile:LIST`` (see the module docstring for every rule)."""
    if reference_folder is not None:
        raise DataError("listfile datasets take data.reference_list (a list file), not data.reference_folder")
    train_path, root, ref_path = _paths(arg, list_root, reference_list)
    train = read_list(train_path, root)
    ref = read_list(ref_path, root) if ref_path is not None else None
    if ref is not None:
        _check_disjoint(train, ref)
    names = class_names_for(class_names, [train] + ([ref] if ref else []))
    key = _cache_key(train_path, root, ref_path, class_names, resolution, resize)
    cache = Path(data_root) / CACHE_FOLDER / f"{train_path.stem}-{key}.npz"
    n_test = len(ref.files) if ref is not None else 0
    cached = _load_cache(cache, (len(train.files), n_test)) if cache.is_file() else None
    if cached is not None:
        train_images, test_images = cached
    else:
        train_images = decode_images(train, resolution, resize)
        side = train_images.shape[-1]
        test_images = (decode_images(ref, side, resize) if ref is not None
                       else np.zeros((0, *train_images.shape[1:]), dtype=np.uint8))  # fmt: skip
        if all(_is_gray(a) for a in (train_images, test_images)):
            train_images, test_images = train_images[:, :1].copy(), test_images[:, :1].copy()
        _save_cache(cache, train_images, test_images)
    test_labels = ref.labels if ref is not None else np.zeros(0, dtype=np.int64)
    resized = resolution is not None
    return RawSource(
        train=ImageSet(images=torch.from_numpy(np.ascontiguousarray(train_images)), labels=torch.from_numpy(train.labels)),
        test=ImageSet(images=torch.from_numpy(np.ascontiguousarray(test_images)), labels=torch.from_numpy(test_labels)),
        class_names=names,
        hflip=True,
        group_rule="thresholds" if len(names) > 10 else "thirds",
        identity=f"listfile:{key}",
        test_note=f"reference list {ref_path}" if ref is not None else "held out by data.reference_protocol",
        resize=resize if resized else "none",
        holdout=ref is None,  # no reference list: get_source holds one out (benchmark/data/reference.py)
        reference_protocol="folder" if ref is not None else "",  # a given reference set, as a reference folder
    )


load_listfile.options = ("list_root", "reference_list", "class_names")  # type: ignore[attr-defined]
load_listfile.cache_token = _cache_token  # type: ignore[attr-defined]
