"""The training batches: which images, flipped or not, with which labels dropped for guidance.

Every draw comes from the run's seeded generators, in a fixed order per step (indices, flips,
per-sample label drops on the device generator; the whole-batch label-drop coin on the host
generator, so branching on it never waits for the device).  The global batch is drawn exactly
as in one process and each rank keeps its slice, so a torchrun job sees the batches a single
process would.  The generators are the trainer's (it checkpoints their states); nothing here
keeps other state that a resume would need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.core.distributed import Dist
from benchmark.core.errors import TrainingError

Cond = bool | torch.Tensor


class BatchDrawer:
    """Draws batch indices on the device: uniform over instances, or class first then instance."""

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        self.n = len(labels)
        self.order = torch.argsort(labels, stable=True)
        self.counts = torch.bincount(labels, minlength=num_classes)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self._counts_cpu = self.counts.cpu()  # validation of class_probs must not sync the device
        self._probs_src: torch.Tensor | None = None
        self._probs_dev: torch.Tensor | None = None

    def draw(self, batch: int, probs: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        device = self.order.device
        if probs is None:
            return torch.randint(0, self.n, (batch,), generator=gen, device=device)
        if probs is not self._probs_src:  # validate + move once per distinct tensor, not per step
            cpu_counts = self._counts_cpu
            if probs.shape != cpu_counts.shape or bool(((probs > 0) & (cpu_counts == 0)).any()):
                raise TrainingError(
                    "the method's class_probs must give one probability per class and none to a class "
                    "without training images; fix the method's class_probs()"
                )
            self._probs_src, self._probs_dev = probs, probs.to(device=device, dtype=torch.float32, non_blocking=True)
        c = torch.multinomial(self._probs_dev, batch, replacement=True, generator=gen)
        u = torch.rand(batch, generator=gen, device=device)
        j = torch.minimum((u * self.counts[c]).long(), self.counts[c] - 1)
        return self.order[self.starts[c] + j]


@dataclass(frozen=True)
class Labels:
    """What a method's loss terms learn about the classes of a batch: the data's labels and what the
    backbone is conditioned on.  A method conditions the model on ``model``; it may use ``true`` for
    anything else (T2H calibrates its targets with them, on label-dropped samples too)."""

    true: torch.Tensor  # the data's labels [B]
    model: torch.Tensor  # ``true`` with the null label where it was dropped for guidance [B]
    cond: Cond  # whole-batch drop: a Python bool (no device sync to branch on); per-sample: a bool tensor [B]


@dataclass(frozen=True)
class Batch:
    """This rank's slice of one training batch."""

    x0: torch.Tensor  # images scaled to [-1, 1], float32
    y: torch.Tensor  # the true labels (what sample weights are computed from)
    y_in: torch.Tensor  # the conditioning labels: ``y`` with the null label where it was dropped
    cond: Cond  # whole-batch drop: a Python bool; per-sample drop: a bool tensor [B]

    @property
    def labels(self) -> Labels:
        return Labels(true=self.y, model=self.y_in, cond=self.cond)


class Batches:
    """The training set, resident on the device as uint8, and the per-step draws from it."""

    def __init__(
        self, *, images: torch.Tensor, labels: torch.Tensor, num_classes: int, batch_size: int, hflip: bool,
        label_drop: float, label_drop_mode: str, channels_last: bool, gen: torch.Generator,
        host: torch.Generator, dist: Dist,
    ) -> None:
        self.images = images.contiguous()
        self.labels = labels
        self.drawer = BatchDrawer(labels, num_classes)
        self.null = num_classes  # the label the backbone reads as "unconditional"
        self.batch_size = batch_size  # the global batch; each rank keeps dist.local_batch of it
        self.hflip, self.label_drop, self.label_drop_mode = hflip, label_drop, label_drop_mode
        self.channels_last = channels_last
        self.gen, self.host, self.dist = gen, host, dist
        self.local = dist.local_batch(batch_size)

    def draw(self, probs: torch.Tensor | None) -> Batch:
        """The next batch: classes drawn from ``probs`` (None: uniform over instances)."""
        B, gen, device = self.batch_size, self.gen, self.images.device
        idx = self.drawer.draw(B, probs, gen)
        x = self.images[idx]
        if self.hflip:
            flip = torch.rand(B, generator=gen, device=device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        x0 = x.float() / 127.5 - 1.0
        if self.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        y = self.labels[idx]
        cond: Cond
        if self.label_drop_mode == "batch":
            cond = bool(torch.rand((), generator=self.host) >= self.label_drop)  # CPU coin: no device sync
            y_in = y if cond else torch.full_like(y, self.null)
        else:
            drop = torch.rand(B, generator=gen, device=device) < self.label_drop
            cond, y_in = ~drop, torch.where(drop, self.null, y)
        d = self.dist
        if d.world > 1:  # the global batch was drawn exactly as in one process; keep this rank's slice
            sl = slice(d.rank * self.local, (d.rank + 1) * self.local)
            x0, y, y_in = x0[sl], y[sl], y_in[sl]
            cond = cond[sl] if isinstance(cond, torch.Tensor) else cond
        return Batch(x0=x0, y=y, y_in=y_in, cond=cond)
