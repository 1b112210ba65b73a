"""Tiny data and configs for the engine tests (8x8 images, a UNet of a few thousand parameters)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace

import numpy as np
import torch

from benchmark.core.config import (
    Config,
    DiffusionConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
)

# The engine tests use tensors of a few KB: one thread is faster, and on a shared 2-core machine
# two OpenMP threads spinning against other processes made these tests 5-10x slower.


TINY_MODEL = ModelConfig(ch=8, ch_mult=(1, 2), attn_resolutions=(4,), num_res_blocks=1, dropout=0.1)


@dataclass(frozen=True)
class TinyData:
    """Duck-typed stand-in for LongTailDataset: exactly the attributes the trainer reads."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    counts: np.ndarray
    num_classes: int
    channels: int
    resolution: int
    source: SimpleNamespace
    fingerprint: str = "tiny"
    groups: tuple[str, ...] = ()  # empty: one group, "all" (the trackers' sample grids)


def tiny_data(counts=(12, 6, 2), *, channels=1, resolution=8, hflip=True, seed=0) -> TinyData:
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    images = torch.randint(0, 256, (len(labels), channels, resolution, resolution), generator=g, dtype=torch.uint8)
    return TinyData(images, labels, np.asarray(counts), len(counts), channels, resolution, SimpleNamespace(hflip=hflip))


def tiny_config(**train) -> Config:
    # fp32 pinned: the engine tests check exact equalities that must not depend on the machine's bf16 units
    # (bf16 has its own parity tests)
    base = TrainConfig(steps=6, batch_size=4, warmup=2, ema_decay=0.9, ckpt_every=3, log_every=2, precision="fp32")
    return Config(
        model=TINY_MODEL,
        diffusion=DiffusionConfig(T=50),
        train=replace(base, **train),
        sample=SampleConfig(steps=5, n_per_class=2, batch_size=4, precision="fp32"),
    )


class Interrupting:
    """Wraps a method and stops the run when the loop asks for the batch of step ``at``."""

    def __init__(self, inner, at):
        self.inner, self.at = inner, at

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def class_probs(self, step, total_steps):
        if step == self.at:
            raise KeyboardInterrupt
        return self.inner.class_probs(step, total_steps)
