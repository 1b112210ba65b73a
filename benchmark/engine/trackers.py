"""Experiment trackers beside ``train_log.csv``: TensorBoard or Weights & Biases, both optional.

``train.logger`` picks one: ``csv`` (the default) writes ``train_log.csv`` alone; ``tensorboard`` and
``wandb`` receive the same figures (every loss term, the total, lr, grad norm, images/s) at the same
steps, and at every checkpoint a grid of samples per class group (many / medium / few) drawn from the
EMA weights with fixed seeds, so grids of one run are comparable across steps. The packages are
extras (``pip install 'ltgen-bench[tensorboard]'`` / ``[wandb]``); asking for one that is missing is
an error naming the install command.

A resumed run continues the same run: TensorBoard gets ``purge_step`` (its readers drop what was
written after the checkpoint the run resumes from, so no step appears twice); W&B resumes the run id
kept in the cell folder. W&B runs offline (files under the cell folder, ``wandb sync`` uploads them)
unless the user configured it: ``WANDB_MODE``, or ``WANDB_API_KEY`` / ``WANDB_BASE_URL`` set.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np
import torch

from benchmark.core.errors import ConfigError
from benchmark.engine.diffusion import GaussianDiffusion
from benchmark.engine.sampling import sample_images

GRID_CLASSES = 8  # classes per group shown (spread over the group, head to tail)
GRID_IMAGES = 4  # images per class
GRID_SEED = 20_231  # the grids' own seeds: never those of the evaluation set
GRID_MAX_STEPS = 50  # a DDPM-1000 sampler is replaced by DDIM at most this many steps for the grids


class Tracker:
    """``csv``: train_log.csv alone (the training loop writes it); nothing more."""

    wants_images = False

    def scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def images(self, step: int, grids: dict[str, np.ndarray]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    """Event files in ``<cell>/tensorboard/``: ``tensorboard --logdir results/<preset>/runs``."""

    wants_images = True

    def __init__(self, run_dir: Path, *, resume_step: int, config_json: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.logger=tensorboard needs TensorBoard: pip install 'ltgen-bench[tensorboard]' "
                "(or --set train.logger=csv)"
            ) from None
        # events at or after purge_step that an interrupted run wrote are dropped by every reader
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"),
                                    purge_step=resume_step + 1 if resume_step > 0 else None)  # fmt: skip
        if resume_step == 0:
            self.writer.add_text("config", "```\n" + config_json + "\n```", 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def images(self, step: int, grids: dict[str, np.ndarray]) -> None:
        for tag, grid in grids.items():
            self.writer.add_image(tag, grid, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """A W&B run per cell, offline unless configured; its id is kept in ``<cell>/wandb_id.txt``."""

    wants_images = True

    def __init__(self, run_dir: Path, *, resume_step: int, config: dict, name: str) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("train.logger=wandb needs Weights & Biases: pip install 'ltgen-bench[wandb]' "
                              "(or --set train.logger=csv)") from None  # fmt: skip
        self.wandb = wandb
        id_file = Path(run_dir) / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        configured = os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_BASE_URL")
        mode = os.environ.get("WANDB_MODE") or ("online" if configured else "offline")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "ltgen-bench"), name=name, id=run_id,
                              resume="allow", dir=str(run_dir), mode=mode, config=config)  # fmt: skip
        self.last = resume_step  # W&B steps only increase: a resumed run starts after its checkpoint

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if step > self.last:
            self.run.log(dict(values), step=step)
            self.last = step

    def images(self, step: int, grids: dict[str, np.ndarray]) -> None:
        # logged with the step's scalars (the row of this step was written just before the checkpoint)
        self.run.log({tag: self.wandb.Image(grid) for tag, grid in grids.items()}, step=max(step, self.last))

    def close(self) -> None:
        self.run.finish()


def make_tracker(kind: str, run_dir: Path, *, resume_step: int, config: dict, config_json: str, name: str) -> Tracker:
    if kind == "tensorboard":
        return TensorBoardTracker(run_dir, resume_step=resume_step, config_json=config_json)
    if kind == "wandb":
        return WandbTracker(run_dir, resume_step=resume_step, config=config, name=name)
    return Tracker()


def grid_classes(groups: list[str]) -> dict[str, list[int]]:
    """{group: up to GRID_CLASSES of its classes, spread over it in index order}; empty groups left out."""
    out = {}
    for group in dict.fromkeys(g for g in groups if g):
        members = [c for c, g in enumerate(groups) if g == group]
        if len(members) > GRID_CLASSES:
            members = [members[i] for i in np.linspace(0, len(members) - 1, GRID_CLASSES).round().astype(int)]
        out[group] = members
    return out


def tile(images: torch.Tensor, rows: int) -> np.ndarray:
    """uint8 [N, C, H, W] (row-major, N = rows x cols) -> one HWC uint8 image with a 1-pixel gap."""
    n, c, h, w = images.shape
    cols = n // rows
    grid = np.zeros((rows * (h + 1) - 1, cols * (w + 1) - 1, 3), dtype=np.uint8)
    arr = images.numpy().transpose(0, 2, 3, 1)
    if c == 1:
        arr = np.repeat(arr, 3, axis=3)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[r * (h + 1) : r * (h + 1) + h, k * (w + 1) : k * (w + 1) + w] = arr[i]
    return grid


def sample_grids(model: torch.nn.Module, diffusion: GaussianDiffusion, *, groups: list[str], sample_cfg,
                 guidance: float, device: torch.device) -> dict[str, np.ndarray]:  # fmt: skip
    """{'samples/<group>': grid} from ``model`` (eval mode) with fixed seeds: one row per class."""
    out = {}
    steps = min(sample_cfg.steps if sample_cfg.sampler == "ddim" else GRID_MAX_STEPS, GRID_MAX_STEPS)
    for group, classes in grid_classes(groups).items():
        labels = torch.tensor([c for c in classes for _ in range(GRID_IMAGES)], dtype=torch.long)
        seeds = GRID_SEED + labels * GRID_IMAGES + torch.arange(len(labels)) % GRID_IMAGES
        images = sample_images(model, diffusion, labels=labels, seeds=seeds, sampler="ddim", steps=steps, guidance=guidance,
                               batch_size=len(labels), device=device, precision=sample_cfg.precision)  # fmt: skip
        out[f"samples/{group}"] = tile(images, rows=len(classes))
    return out
