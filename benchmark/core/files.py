"""Atomic file writes: a reader (or a resumed run) never sees a half-written file.

Each write goes to a temporary file in the same folder, named by process id so concurrent
writers (ranks, Slurm jobs) never share one, then replaces the target with ``os.replace``.
Every file a rerun might read is written through one of these helpers (``torch.save`` through
``benchmark.engine.checkpoint.atomic_save``, so this module needs no torch).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # to_csv is the frame's own method: no pandas import needed at run time
    import pandas as pd


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to produce the file's content at a temporary path, then move it to ``path``.

    The parent folder is created if missing; ``write`` must write exactly the path it is given
    (``np.savez`` would append ``.npz``: use :func:`save_npz_atomic`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_csv_atomic(path: Path, frame: pd.DataFrame) -> Path:
    """``frame.to_csv(path, index=False)``, atomically."""
    return write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> Path:
    """``np.savez(path, **arrays)``, atomically (written through a file handle, so no suffix is added)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    return write_atomic(path, write)

