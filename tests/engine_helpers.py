"""Tiny data and configs for the engine tests (8x8 images, a UNet of a few thousand parameters).

The data, the model and the interrupting wrapper are the method contracts' own (methods/contracts.py),
so a plugin author's check and the test suite run on the same fixtures."""

from __future__ import annotations

from dataclasses import replace

from benchmark.core.config import Config
from methods.contracts import TINY_MODEL, Interrupting, TinyData, tiny_data
from methods.contracts import tiny_config as _contract_config
from methods.registry import MethodConfig

__all__ = ["TINY_MODEL", "Interrupting", "TinyData", "tiny_config", "tiny_data"]


def tiny_config(**train) -> Config:
    """The contracts' six fp32 steps with every method option at its default (the contracts set resample's
    progressive schedule, whose class probabilities change with the step)."""
    return replace(_contract_config(**train), method=MethodConfig())
