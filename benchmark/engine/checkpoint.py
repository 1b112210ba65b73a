"""Checkpoint files and the training log: atomic writes, safe loads, only the latest kept.

A half-written file never counts: everything is written through ``benchmark.core.files``
(a temporary file renamed into place), and loads use ``weights_only=True`` (so checkpoints hold only tensors and plain values:
generator states as uint8 tensors, the config as a JSON string).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from benchmark.core.errors import TrainingError
from benchmark.core.files import write_atomic


def atomic_save(obj: dict, path: Path) -> None:
    """``torch.save(obj, path)``, atomically (the parent folder is created if missing)."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path} does not exist; train the model first or fix the path") from None
    except Exception as exc:  # a corrupt or foreign file: say which one
        raise TrainingError(f"cannot read {path} ({exc}); delete it and rerun to redo that stage") from exc


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    files = sorted(Path(ckpt_dir).glob("ckpt_*.pt"))
    return files[-1] if files else None


def ema_checkpoint_name(step: int) -> str:
    """EMA weights kept at ``step`` (train.keep_ema_at), in model.pt's format; pruning leaves them."""
    return f"ema_{step:08d}.pt"


def prune_checkpoints(ckpt_dir: Path, *, keep: str) -> None:
    """Delete every checkpoint but ``keep`` (and stale temporary files)."""
    for f in Path(ckpt_dir).glob("ckpt_*.pt*"):
        if f.name != keep:
            f.unlink(missing_ok=True)


class TrainLog:
    """train_log.csv, one row per logged step; on resume rows after the checkpoint are dropped
    so that a rerun does not duplicate them."""

    def __init__(self, path: Path, columns: list[str], *, resume_step: int) -> None:
        self.path = Path(path)
        rows: list[list[str]] = []
        if self.path.exists() and resume_step > 0:
            with open(self.path, newline="") as fh:
                reader = csv.reader(fh)
                header = next(reader, None)
                if header == columns:
                    rows = [r for r in reader if r and int(float(r[0])) <= resume_step]
        self._fh = open(self.path, "w", newline="")
        self._writer = csv.writer(self._fh)
        self._writer.writerow(columns)
        self._writer.writerows(rows)
        self._fh.flush()

    def write(self, row: list) -> None:
        self._writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
