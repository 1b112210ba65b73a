"""Plain class-conditional DDPM with guidance training: the baseline every method is measured against.

Nothing to add: the base :class:`Method` already draws (t, noise) and returns the epsilon loss
(:func:`methods.base.ddpm_loss`), samples uniformly over training instances and weights every
sample equally.
"""

from __future__ import annotations

from .base import Method
from .registry import METHODS


@METHODS.register("ddpm")
class DDPM(Method):
    """Class-conditional DDPM with label drop for classifier-free guidance: the baseline."""

    official_guidance = 0.8  # no options of its own
