"""Real digits test images written as an outside samples file: what `evaluate --samples` tests score."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.core.config import DataConfig
from benchmark.data import build_dataset


def digits_samples(path: Path, *, per_class: int = 12, skip: int = 0) -> Path:
    """``per_class`` test images of every digit (after the first ``skip`` of each) saved to ``path``
    as images + labels; disjoint sets come from different ``skip``."""
    ds = build_dataset(DataConfig(dataset="digits", imbalance=0.1))
    test = ds.source.test
    labels = test.labels.numpy()
    keep = np.concatenate([np.flatnonzero(labels == c)[skip : skip + per_class] for c in range(ds.num_classes)])
    np.savez(path, images=test.images[keep].numpy(), labels=labels[keep])
    return path
