"""Class re-sampling (Kang et al. 2020): class c is drawn with probability proportional to n_c^q.

q = 1 instance-balanced (plain training), q = 1/2 square-root, q = 0 class-balanced.  The
``progressive`` schedule is Kang et al.'s progressively-balanced sampling: it interpolates the
PROBABILITIES, p_c(s) = (1 - s) p_c(q=1) + s p_c(q=0) with s = step / total steps.  The other
reading, moving the exponent q linearly from 1 to 0, is kept as ``progressive-exponent`` (it is
not Kang's rule: at s = 1/2 it gives square-root sampling, not the mean of the two ends).  Empty
classes are never drawn (0^0 would otherwise give them mass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.core.config import Options, bounded, choice, choices

from .base import Method
from .registry import METHODS


@dataclass(frozen=True)
class ResampleOptions(Options):
    q: float = bounded(0.0, ge=0.0, le=1.0)  # class drawn with prob ~ n_c ** q (1: instance-balanced)
    schedule: str = choice("fixed", {
        "fixed": "q = method.resample.q throughout",
        "progressive": "Kang et al.: p = (1 - s) p_instance + s p_class, s = step / steps",
        "progressive-exponent": "q from 1 to 0 over training",
    })  # fmt: skip
    legacy = {"resample_q": "q", "resample_schedule": "schedule"}


SCHEDULES = choices(ResampleOptions, "schedule")


def resample_probs(counts, q: float) -> torch.Tensor:
    n = torch.as_tensor(counts, dtype=torch.float64)
    p = torch.where(n > 0, n.clamp(min=1) ** q, torch.zeros_like(n))
    return (p / p.sum()).float()


def progressive_probs(counts, s: float) -> torch.Tensor:
    """Kang et al.'s progressively-balanced distribution at training progress ``s`` in [0, 1]."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    instance = n / n.sum()
    balanced = (n > 0).double() / (n > 0).sum()
    return ((1.0 - s) * instance + s * balanced).float()


@METHODS.register("resample")
class Resample(Method):
    """Class-sampling probability proportional to n_c^q (method.resample.q), or Kang's progressive
    schedule (method.resample.schedule)."""

    Options = ResampleOptions

    def __init__(self, *, class_counts, options=None) -> None:
        super().__init__(class_counts=class_counts, options=options)
        self._fixed = resample_probs(self.class_counts, self.options.q)

    def class_probs(self, step: int, total_steps: int) -> torch.Tensor:
        schedule = self.options.schedule
        if schedule == "fixed":
            return self._fixed
        s = min(1.0, step / max(1, total_steps))
        if schedule == "progressive":
            return progressive_probs(self.class_counts, s)
        return resample_probs(self.class_counts, 1.0 - s)
