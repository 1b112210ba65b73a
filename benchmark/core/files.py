"""Atomic file writes: a reader (or a resumed run) never sees a half-written file.

Each write goes to a temporary file in the same folder, named by process id so concurrent
writers (ranks, Slurm jobs) never share one, is flushed to the disk (``fsync``), then replaces the
target with ``os.replace``: a crash or a kill at any moment leaves the old file or the new one, never
a part.  A full disk ends the write with :class:`DiskFullError` naming the file (the old one intact),
whatever the writer made of the failure (torch reports it as "unexpected pos").
Every file a rerun might read is written through one of these helpers (``torch.save`` through
``benchmark.engine.checkpoint.atomic_save``, so this module needs no torch).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmark.core.errors import DiskFullError

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
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)  # the rename itself survives a crash
    except Exception as exc:
        if _disk_full(exc, path.parent):  # checked before the partial file is removed
            raise DiskFullError(f"no space left on device: {path}") from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# bytes free below which a failed write is taken to be a full disk (a writer that does not pass on ENOSPC)
FULL_BELOW = 1 << 20


def _disk_full(exc: BaseException, folder: Path) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW
    except OSError:
        return False


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # a folder on a file system that cannot sync folders (EINVAL) is no failure
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            raise
    finally:
        os.close(fd)


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

