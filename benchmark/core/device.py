"""Device selection in one place: ``auto`` means the first CUDA device when present, else the CPU."""

from __future__ import annotations

import os

import torch

from benchmark.core.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """Under torchrun ``auto`` and ``cuda`` mean this process's GPU, cuda:LOCAL_RANK."""
    if name in ("auto", "cuda") and torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is visible; use --set device=cpu")
    return device
