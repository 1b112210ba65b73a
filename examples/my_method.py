"""A method from outside the package: tempered class re-weighting of the loss, with its own option.

Load it with ``--plugin examples/my_method.py`` (or list the file in $LTGEN_PLUGINS); then it runs, composes
(``tempered+resample``) and is checked (``ltgen-bench check-method tempered --plugin ...``) like
the methods in ``methods/``.  See docs/own-method.md.

The idea is the class-frequency exponent of the logit-adjustment family (Menon et al., ICLR 2021: the
prior raised to a power tau) applied as a loss weight: each sample's denoising loss is weighted by
(n_max / n_y) ** ``power``, normalised to mean 1 over the training set, so the tail counts more and the
loss scale of plain training is kept.  ``power`` = 0 is plain DDPM, 1 is inverse-frequency re-weighting
(``reweight``); values in between temper it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from benchmark.core.config import Options, bounded
from methods import METHODS, Method


@dataclass(frozen=True)
class TemperedOptions(Options):
    power: float = bounded(0.5, ge=0.0, le=2.0)  # how strongly the tail is up-weighted: (n_max / n_y) ** power


def tempered_weights(counts, power: float) -> np.ndarray:
    """Per-class weights (n_max / n_c) ** power, 0 for empty classes, averaging to 1 over the samples."""
    counts = np.asarray(counts, dtype=np.float64)
    w = np.zeros_like(counts)
    present = counts > 0
    w[present] = (counts.max() / counts[present]) ** power
    return w * counts.sum() / (w * counts).sum()


@METHODS.register("tempered")
class Tempered(Method):
    """Tempered inverse-frequency loss weights, (n_max / n_y) ** method.tempered.power."""

    Options = TemperedOptions
    official_guidance = 0.8  # a re-weighting of DDPM's loss: DDPM's guidance strength

    def __init__(self, *, class_counts, options=None) -> None:
        super().__init__(class_counts=class_counts, options=options)
        self.weights = torch.as_tensor(tempered_weights(self.class_counts, self.options.power), dtype=torch.float32)

    def sample_weights(self, y: torch.Tensor) -> torch.Tensor:
        return self.weights.to(y.device)[y]
