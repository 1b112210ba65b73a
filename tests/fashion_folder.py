"""The issue's own-data scenario: a folder of 6 Fashion-MNIST classes of 28x28 PNGs, 300 down to 10 images.

Read from the Debian package's IDX files with torchvision's reader (as benchmark/data/builtin.py
does); tests that need it skip where the files are absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.data.builtin import DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES, read_idx

SIZES = (300, 150, 80, 40, 20, 10)


def available() -> bool:
    return (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file()


def make_fashion_folder(root: Path, sizes=SIZES) -> Path:
    """root/<class>/NNN.png with sizes[i] test-split images of Fashion-MNIST class i (first in file order)."""
    images = read_idx(DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz")
    for c, n in enumerate(sizes):
        folder = Path(root) / FASHION_MNIST_CLASSES[c].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for i, idx in enumerate(np.flatnonzero(labels == c)[:n]):
            Image.fromarray(images[idx]).save(folder / f"{i:03d}.png")
    return Path(root)
