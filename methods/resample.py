"""Class re-sampling (Kang et al. 2020): class c is drawn with probability proportional to n_c^q.

q = 1 instance-balanced (plain training), q = 1/2 square-root, q = 0 class-balanced.  The
``progressive`` schedule moves q linearly from 1 to 0 over training.  Empty classes are never
drawn (0^0 would otherwise give them mass).
"""

from __future__ import annotations

import torch

from benchmark.core.config import MethodConfig, choices
from benchmark.core.errors import ConfigError

from .base import Method
from .registry import METHODS

SCHEDULES = choices(MethodConfig, "resample_schedule")


def resample_probs(counts, q: float) -> torch.Tensor:
    n = torch.as_tensor(counts, dtype=torch.float64)
    p = torch.where(n > 0, n.clamp(min=1) ** q, torch.zeros_like(n))
    return (p / p.sum()).float()


@METHODS.register("resample")
class Resample(Method):
    """Class-sampling probability proportional to n_c^q (method.resample_q, method.resample_schedule)."""

    name = "resample"

    def __init__(self, *, class_counts, options) -> None:
        super().__init__(class_counts=class_counts, options=options)
        if options.resample_schedule not in SCHEDULES:
            raise ConfigError(
                f"method.resample_schedule={options.resample_schedule!r} is unknown; "
                f"use one of {', '.join(SCHEDULES)}"
            )
        self._fixed = resample_probs(self.class_counts, options.resample_q)

    def q_at(self, step: int, total_steps: int) -> float:
        if self.options.resample_schedule == "fixed":
            return self.options.resample_q
        return 1.0 - step / max(1, total_steps)

    def class_probs(self, step: int, total_steps: int) -> torch.Tensor:
        if self.options.resample_schedule == "fixed":
            return self._fixed
        return resample_probs(self.class_counts, self.q_at(step, total_steps))
