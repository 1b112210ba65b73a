"""Loss re-weighting by class: inverse frequency, or the "effective number" of Cui et al. (2019).

w_c proportional to 1/n_c (``inverse``) or (1 - beta)/(1 - beta^n_c) (``effective``), normalised
so the weights average to 1 over the training samples (sum_c n_c w_c = N), which keeps the
loss scale of plain training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from benchmark.core.config import Options, bounded, choice, choices
from benchmark.core.errors import ConfigError

from .base import Method
from .registry import METHODS


@dataclass(frozen=True)
class ReweightOptions(Options):
    scheme: str = choice("inverse", {
        "inverse": "inverse class frequency",
        "effective": "inverse effective number, method.reweight.beta",
    })  # fmt: skip
    beta: float = bounded(0.999, gt=0.0, lt=1.0)
    legacy = {"reweight_scheme": "scheme", "reweight_beta": "beta"}


SCHEMES = choices(ReweightOptions, "scheme")


def class_weights(counts: np.ndarray, *, scheme: str = "inverse", beta: float = 0.999) -> np.ndarray:
    """Per-class weights (0 for empty classes), averaging to 1 over the training samples."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    w = np.zeros_like(counts)
    if scheme == "inverse":
        w[present] = 1.0 / counts[present]
    elif scheme == "effective":
        if not 0 < beta < 1:
            raise ConfigError(f"method.reweight.beta={beta} must lie in (0, 1), e.g. 0.999")
        w[present] = (1 - beta) / (1 - beta ** counts[present])
    else:
        raise ConfigError(f"method.reweight.scheme={scheme!r} is unknown; use one of {', '.join(SCHEMES)}")
    return w * counts.sum() / (w * counts).sum()


@METHODS.register("reweight")
class Reweight(Method):
    """Per-sample loss weight by class: inverse frequency or effective number (method.reweight.scheme)."""

    Options = ReweightOptions

    def __init__(self, *, class_counts, options=None) -> None:
        super().__init__(class_counts=class_counts, options=options)
        w = class_weights(self.class_counts, scheme=self.options.scheme, beta=self.options.beta)
        self.weights = torch.as_tensor(w, dtype=torch.float32)

    def sample_weights(self, y: torch.Tensor) -> torch.Tensor:
        return self.on(self.weights, y.device)[y]
