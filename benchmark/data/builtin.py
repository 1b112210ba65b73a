"""Built-in sources: Fashion-MNIST, MNIST, CIFAR-10, CIFAR-100 (torchvision) and digits.

Every loader works offline once the files are present.  Downloads are tried only when the
files are absent and ``$LTGEN_OFFLINE`` is not set; a failure says where to put the files.
Fashion-MNIST also reads the original IDX files of the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``), so CI needs no network.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torchvision
from sklearn.datasets import load_digits as sk_load_digits
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

from benchmark.core.errors import DataError
from benchmark.data.sources import (
    DATASETS,
    ImageSet,
    RawSource,
    balanced_holdout,
    default_data_root,
    downloads_allowed,
)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# digits has no test split: a fixed, balanced hold-out of this many images per class
# (RandomState(DIGITS_HOLDOUT_SEED), independent of the split seed, so it never moves)
DIGITS_TEST_PER_CLASS = 30
DIGITS_HOLDOUT_SEED = 0


def _no_extras(name: str, arg: str | None, reference_folder: Path | None) -> None:
    if arg is not None:
        raise DataError(f"dataset {name!r} takes no ':' argument (got {name}:{arg}); use plain {name!r}")
    if reference_folder is not None:
        raise DataError(f"data.reference_folder applies to imagefolder datasets only; leave it empty for {name!r}")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (optionally gzipped) with torchvision's reader.

    torchvision's reader takes plain files only, so a ``.gz`` (the Debian package ships them so)
    is unpacked to a temporary file first."""
    try:
        with open(path, "rb") as fh:
            head = gzip.open(fh).read(4) if path.suffix == ".gz" else fh.read(4)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err}; re-download or reinstall the file") from None
    if len(head) < 4 or head[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an IDX file of unsigned bytes; re-download or reinstall it")
    try:
        if path.suffix != ".gz":
            return read_sn3_pascalvincent_tensor(str(path), strict=False).numpy().copy()
        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / path.stem
            with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return read_sn3_pascalvincent_tensor(str(plain), strict=False).numpy().copy()
    except (OSError, EOFError, zlib.error, RuntimeError, ValueError, AssertionError) as err:
        raise DataError(f"{path} is truncated or damaged ({err}); re-download or reinstall it") from None


def _find_idx(dirs: list[Path]) -> dict[str, Path] | None:
    """The four IDX files from the first folder that has all of them (plain or .gz)."""
    for folder in dirs:
        found = {}
        for stem in (s for pair in IDX_FILES.values() for s in pair):
            hits = [folder / stem, folder / f"{stem}.gz"]
            hit = next((h for h in hits if h.is_file()), None)
            if hit is None:
                break
            found[stem] = hit
        else:
            return found
    return None


def _idx_source(files: dict[str, Path], classes: list[str], hflip: bool, where: str) -> RawSource:
    parts = {}
    for split, (img_stem, lab_stem) in IDX_FILES.items():
        images = read_idx(files[img_stem])
        labels = read_idx(files[lab_stem]).astype(np.int64)
        if images.ndim != 3 or len(images) != len(labels) or labels.max(initial=0) >= len(classes):
            raise DataError(f"IDX files in {where} do not match ({images.shape} images, {labels.shape} labels)")
        parts[split] = ImageSet(images=torch.from_numpy(images).unsqueeze(1), labels=torch.from_numpy(labels))
    return RawSource(train=parts["train"], test=parts["test"], class_names=classes, hflip=hflip, group_rule="thirds")


def _mnist_like(name, tv_cls, folder_names, extra_dirs, hflip, install_hint, data_root) -> RawSource:
    root = data_root or default_data_root()
    dirs = [root / f / "raw" for f in folder_names] + [root / f for f in folder_names] + [root]
    dirs += extra_dirs
    classes = list(tv_cls.classes) if name == "mnist" else FASHION_MNIST_CLASSES
    files = _find_idx(dirs)
    if files is None:
        reason = _try_download(lambda: tv_cls(str(root), train=True, download=True))
        files = _find_idx([root / tv_cls.__name__ / "raw"])
        if files is None:
            raise DataError(
                f"{name} is not available offline. {install_hint}or put train-images-idx3-ubyte(.gz), "
                f"train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz) "
                f"in a folder and pass it with --data-root (data.data_root). Looked in: "
                f"{', '.join(str(d) for d in dirs)}. {reason}"
            )
    where = str(next(iter(files.values())).parent)
    return _idx_source(files, classes, hflip, where)


def _try_download(fetch) -> str:
    if not downloads_allowed():
        return "Download skipped ($LTGEN_OFFLINE is set)."
    try:
        fetch()
    except Exception as err:  # network, HTTP, checksum: all mean "not available"
        return f"Download failed: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}."
    return ""


@DATASETS.register("fashion-mnist")
def load_fashion_mnist(*, arg, data_root, reference_folder, resolution, resize) -> RawSource:
    """Fashion-MNIST, 10 classes, 28x28 grayscale; 60k train / 10k balanced test."""
    _no_extras("fashion-mnist", arg, reference_folder)
    return _mnist_like(
        "fashion-mnist", torchvision.datasets.FashionMNIST, ["FashionMNIST", "fashion-mnist"],
        [DEBIAN_FASHION_MNIST], True,
        "Install the Debian package (apt-get install dataset-fashion-mnist), ", data_root,
    )  # fmt: skip


@DATASETS.register("mnist")
def load_mnist(*, arg, data_root, reference_folder, resolution, resize) -> RawSource:
    """MNIST, 10 classes, 28x28 grayscale; 60k train / 10k test; no flips (digits)."""
    _no_extras("mnist", arg, reference_folder)
    return _mnist_like(
        "mnist", torchvision.datasets.MNIST, ["MNIST", "mnist"], [], False,
        "Run once on a machine with internet (torchvision fetches it into DATA_ROOT/MNIST/raw) and copy that folder, ",
        data_root,
    )  # fmt: skip


def _cifar(name: str, tv_name: str, folder: str, url: str, group_rule: str, data_root: Path | None) -> RawSource:
    tv_cls = getattr(torchvision.datasets, tv_name)
    root = data_root or default_data_root()
    if root.name == folder:  # the user pointed at the extracted folder itself
        root = root.parent

    def load(download: bool):
        return [tv_cls(str(root), train=split, download=download) for split in (True, False)]

    try:
        train, test = load(False)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        reason = _try_download(lambda: load(True))
        try:
            train, test = load(False)
        except RuntimeError:
            raise DataError(
                f"{name} is not available offline: download {url}, extract it so that "
                f"DIR/{folder}/ exists, and pass --data-root DIR (data.data_root). Looked in {root}. {reason}"
            ) from None

    def to_set(ds) -> ImageSet:
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return ImageSet(images=images, labels=torch.as_tensor(ds.targets, dtype=torch.int64))

    return RawSource(train=to_set(train), test=to_set(test), class_names=list(train.classes), hflip=True,
                     group_rule=group_rule)  # fmt: skip


@DATASETS.register("cifar10")
def load_cifar10(*, arg, data_root, reference_folder, resolution, resize) -> RawSource:
    """CIFAR-10, 10 classes, 32x32 RGB; 50k train (5000 per class) / 10k test."""
    _no_extras("cifar10", arg, reference_folder)
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    return _cifar("cifar10", "CIFAR10", "cifar-10-batches-py", url, "thirds", data_root)


@DATASETS.register("cifar100")
def load_cifar100(*, arg, data_root, reference_folder, resolution, resize) -> RawSource:
    """CIFAR-100, 100 fine classes, 32x32 RGB; 50k train (500 per class) / 10k test."""
    _no_extras("cifar100", arg, reference_folder)
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    return _cifar("cifar100", "CIFAR100", "cifar-100-python", url, "thresholds", data_root)


@DATASETS.register("digits")
def load_digits(*, arg, data_root, reference_folder, resolution, resize) -> RawSource:
    """scikit-learn's bundled 8x8 digits (1797 images, always available; for smoke runs).

    Pixel values 0..16 are scaled to 0..255.  There is no test split, so a balanced
    hold-out of ``DIGITS_TEST_PER_CLASS`` (30) images per class, drawn with
    ``RandomState(DIGITS_HOLDOUT_SEED)`` (0), is the evaluation split; the remaining
    1497 images (in dataset order) are the train pool.  No flips (digits are not symmetric).
    """
    _no_extras("digits", arg, reference_folder)
    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = balanced_holdout(labels, DIGITS_TEST_PER_CLASS, seed=DIGITS_HOLDOUT_SEED)

    def subset(idx: np.ndarray) -> ImageSet:
        return ImageSet(images=torch.from_numpy(images[idx]), labels=torch.from_numpy(labels[idx]))

    return RawSource(
        train=subset(train_idx), test=subset(test_idx), class_names=[str(d) for d in range(10)],
        hflip=False, group_rule="thirds",
        test_note=f"balanced hold-out, {DIGITS_TEST_PER_CLASS} per class (seed {DIGITS_HOLDOUT_SEED})",
    )  # fmt: skip
