"""Tiny duck-typed stand-ins for SourceData / LongTailDataset used by the evaluation tests.

Images are structured (a bright block whose position encodes the class, plus noise), so a
small CNN learns them in one epoch and metrics have something real to separate.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmark.data import ImageSet, LongTailDataset, SourceData


def make_images(labels: np.ndarray, *, resolution: int = 12, channels: int = 1, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    n = len(labels)
    x = rng.integers(0, 60, size=(n, channels, resolution, resolution)).astype(np.int64)
    half = resolution // 2
    for i, c in enumerate(labels):
        r, q = divmod(int(c) % 4, 2)
        x[i, :, r * half:(r + 1) * half, q * half:(q + 1) * half] += 150 + 20 * (int(c) // 4)
    return torch.from_numpy(np.clip(x, 0, 255).astype(np.uint8))


def fake_dataset(*, num_classes: int = 4, per_class_train: int = 60, per_class_test: int = 30, resolution: int = 12,
                 channels: int = 1, counts=None, seed: int = 0) -> LongTailDataset:
    """A real LongTailDataset over a tiny synthetic source (no files needed)."""
    ytr = np.repeat(np.arange(num_classes), per_class_train)
    yte = np.repeat(np.arange(num_classes), per_class_test)
    train = ImageSet(make_images(ytr, resolution=resolution, channels=channels, seed=seed), torch.from_numpy(ytr))
    test = ImageSet(make_images(yte, resolution=resolution, channels=channels, seed=seed + 1), torch.from_numpy(yte))
    source = SourceData(name="fake", source_id=f"fake-{num_classes}-{resolution}-{channels}-{seed}", train=train,
                        test=test, class_names=[f"c{i}" for i in range(num_classes)], channels=channels,
                        resolution=resolution, hflip=False, group_rule="thirds", resize="none")
    counts = np.asarray(counts if counts is not None else
                        [max(2, int(per_class_train * 0.2 ** (i / max(1, num_classes - 1)))) for i in range(num_classes)])
    indices = np.concatenate([np.flatnonzero(ytr == c)[:counts[c]] for c in range(num_classes)])
    third = [min(2, 3 * c // num_classes) for c in range(num_classes)]
    groups = [("many", "medium", "few")[t] for t in third]
    return LongTailDataset(source=source, profile="exp", imbalance=0.1, indices=indices, counts=counts, groups=groups,
                           fingerprint="fakefingerprint0")
