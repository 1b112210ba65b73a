"""One run on several processes (``torchrun``): process-group set-up and the few collectives we use.

Under ``torchrun --nproc_per_node N`` every rank trains the same cell with DistributedDataParallel
(NCCL on GPUs, gloo on the CPU).  ``train.batch_size`` stays the GLOBAL batch: every rank draws
the whole global batch (indices, flips, label drops, and the method's t / noise / auxiliary labels)
from the same seeded generator and keeps its own contiguous slice, so the global batch equals the
single-process one and the DDP-averaged gradient equals the single-process batch mean.  Rank 0
alone writes files; the others wait at barriers.  Without torchrun (WORLD_SIZE unset or 1) every
helper here is a no-op, so single-process runs are unchanged bit for bit.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from benchmark.core.errors import ConfigError, TrainingError

_OWNED = False  # whether init_from_env created the process group (then shutdown() destroys it)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def local_batch(self, batch: int) -> int:
        if batch % self.world:
            raise ConfigError(
                f"train.batch_size={batch} is the global batch and must be divisible by the {self.world} "
                f"processes; use e.g. --set train.batch_size={batch - batch % self.world or self.world}"
            )
        return batch // self.world


def current() -> Dist:
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Dist()


def init_from_env(device: str = "auto") -> Dist:
    """Join the process group torchrun (or a Slurm job) describes in the environment; no-op for one process.

    NCCL when the run uses CUDA, gloo otherwise.  The timeout is long (``LTGEN_DIST_TIMEOUT_MIN``,
    default 360) because ranks 1.. wait at the next collective while rank 0 alone scores a cell (metrics,
    downstream classifier) or trains the evaluator.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    timeout = datetime.timedelta(minutes=float(os.environ.get("LTGEN_DIST_TIMEOUT_MIN", "360")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    global _OWNED
    _OWNED = True
    return current()


def shutdown() -> None:
    """Destroy the process group ``init_from_env`` created, if it did (no-op otherwise).

    A process that exits with the group alive leaves the backend's threads running at interpreter
    exit, where gloo may abort the process (SIGABRT, "terminate called without an active
    exception") after its work finished: torchrun then reports a finished run as failed.
    """
    global _OWNED
    if _OWNED and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _OWNED = False


def barrier() -> None:
    if current().world > 1:
        dist.barrier()


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    if current().world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj) -> list:
    if current().world == 1:
        return [obj]
    out = [None] * current().world
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj) -> list | None:
    """Every rank's ``obj`` (ranks in order) on rank 0, None elsewhere."""
    d = current()
    if d.world == 1:
        return [obj]
    out = [None] * d.world if d.main else None
    dist.gather_object(obj, out, dst=0)
    return out


@contextlib.contextmanager
def main_first(together: bool = True) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. a dataset download), the others after it finished.

    ``together=False``: rank 0 runs the block alone (the others are elsewhere); no barrier.
    """
    d = current() if together else Dist()
    if d.world > 1 and not d.main:
        dist.barrier()
    yield
    if d.world > 1 and d.main:
        dist.barrier()


def mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over ranks (every rank gets it)."""
    if current().world == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / current().world


def average_grads(params: list[torch.nn.Parameter]) -> None:
    """Average gradients of parameters DDP does not own (a method's own modules) over ranks."""
    grads = [p.grad for p in params if p.grad is not None]
    if current().world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= current().world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class ShardDraws(TorchFunctionMode):
    """Draws from the training generator whose leading dimension is the local batch are made for the
    global batch and sliced to this rank, so a method's t / noise / auxiliary labels equal the
    single-process ones (a method draws for ``x0.shape[0]``, which under DDP is the local batch).

    Draws of any other shape (a whole-batch coin, a class table) are made as they are, identically
    on every rank, as in one process.  A draw that is per-sample but cannot be widened (e.g.
    ``bernoulli`` of a per-sample tensor) is refused with the fix named.
    """

    def __init__(self, generator: torch.Generator, *, local: int, d: Dist) -> None:
        super().__init__()
        self.gen, self.local, self.d = generator, local, d

    def _cut(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.d.rank * self.local : (self.d.rank + 1) * self.local]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if kwargs.get("generator") is not self.gen:
            return func(*args, **kwargs)
        grow = lambda size: (size[0] * self.d.world, *size[1:])  # noqa: E731
        if func in (torch.randn, torch.rand):
            if "size" in kwargs:
                size = tuple(kwargs.pop("size"))
            else:
                size = tuple(args[0]) if len(args) == 1 and not isinstance(args[0], int) else tuple(args)
            if size and size[0] == self.local:
                return self._cut(func(grow(size), **kwargs))
            return func(size, **kwargs)
        if func is torch.randint:
            if "size" in kwargs:
                head, size = args, tuple(kwargs.pop("size"))
            else:
                head, size = args[:-1], tuple(args[-1])
            if size and size[0] == self.local:
                return self._cut(func(*head, grow(size), **kwargs))
            return func(*head, size, **kwargs)
        if func is torch.multinomial:
            probs = args[0] if args else kwargs.pop("input")
            rest = list(args[1:])
            n = rest.pop(0) if rest else kwargs.pop("num_samples")
            if probs.dim() == 1 and n == self.local:
                return self._cut(func(probs, n * self.d.world, *rest, **kwargs))
            if probs.dim() == 1:
                return func(probs, n, *rest, **kwargs)
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.dim() and out.shape[0] == self.local:
            raise TrainingError(
                f"under torchrun a method drew per-sample randomness with {getattr(func, '__name__', func)}, "
                "which cannot be split exactly across processes; draw with torch.rand / randn / randint or "
                "a 1-D torch.multinomial with the batch as the leading dimension"
            )
        return out


def shard_draws(generator: torch.Generator, *, local: int) -> contextlib.AbstractContextManager:
    d = current()
    return ShardDraws(generator, local=local, d=d) if d.world > 1 else contextlib.nullcontext()


class _GatherBatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        d = current()
        ctx.rank, ctx.n = d.rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(d.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on this rank's samples
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """The global batch of a per-sample tensor (ranks in order), for batch-global loss terms under DDP.

    Differentiable: the gradient of every rank's loss flows back to the rank that owns the sample;
    with DDP's averaging, a term computed for the local anchors against the gathered batch then
    has the gradient of the single-process term.  Identity in one process.
    """
    if current().world == 1:
        return x
    if x.is_floating_point():
        return _GatherBatch.apply(x)
    parts = [torch.empty_like(x, dtype=torch.uint8 if x.dtype == torch.bool else x.dtype) for _ in range(current().world)]
    dist.all_gather(parts, x.to(parts[0].dtype).contiguous())
    return torch.cat(parts).to(x.dtype)
