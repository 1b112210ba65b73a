"""Device selection and numeric precision in one place.

``auto`` device means the first CUDA device when present, else the CPU.  ``auto`` precision
means bf16 where the device runs it natively and fp32 elsewhere, decided at run time from
torch's own reports, never from a model name:

* CUDA: ``torch.cuda.is_bf16_supported(including_emulation=False)`` (compute capability 8.0+);
* CPU: the instruction sets torch's cpuinfo reports (``torch.cpu.get_capabilities()``):
  AMX-bf16 (usable once ``torch.cpu._init_amx()`` has the kernel's permission) or AVX512-bf16
  on x86, the bf16 extension on ARM; and oneDNN's own bf16 check
  (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``), which says oneDNN has a bf16 path at all.

``bf16`` asked for explicitly runs wherever torch has a bf16 path (natively, or emulated by
oneDNN on AVX-512 without bf16 instructions, or by CUDA on older GPUs), and is an error where
it has none; ``auto`` never fails.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from benchmark.core.config import PRECISIONS
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


@dataclass(frozen=True)
class Bf16Support:
    native: bool  # bf16 arithmetic units: auto picks bf16
    runs: bool  # torch has some bf16 path (native or emulated): an explicit bf16 is allowed
    report: str  # what torch reported, for the perf header and error messages


def bf16_support(device: torch.device | str) -> Bf16Support:
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_bf16(device.index if device.index is not None else torch.cuda.current_device())
    if device.type == "cpu":
        return _cpu_bf16()
    return Bf16Support(False, False, f"{device.type}: no bf16 path in this harness")


@functools.cache
def _cuda_bf16(index: int) -> Bf16Support:
    with torch.cuda.device(index):
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        runs = torch.cuda.is_bf16_supported(including_emulation=True)
    major, minor = torch.cuda.get_device_capability(index)
    name = torch.cuda.get_device_name(index)
    how = "native" if native else "emulated" if runs else "none"
    return Bf16Support(native, runs, f"cuda {name} (compute capability {major}.{minor}): bf16 {how}")


@functools.lru_cache(maxsize=1)
def _cpu_bf16() -> Bf16Support:
    try:
        caps = dict(torch.cpu.get_capabilities())
    except (AttributeError, RuntimeError):  # a torch without the report: nothing is claimed
        caps = {}
    onednn = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    amx = bool(caps.get("amx_bf16")) and _amx_usable()
    found = [name for name, ok in (("amx_bf16", amx), ("avx512_bf16", caps.get("avx512_bf16")),
                                   ("arm bf16", caps.get("bf16") or caps.get("sve_bf16"))) if ok]
    native = onednn and bool(found)
    how = "native" if native else "emulated" if onednn else "none"
    units = ", ".join(found) if found else "no bf16 instructions"
    if caps.get("amx_bf16") and not amx:
        units += " (amx_bf16 reported, not usable: the kernel refused AMX)"
    return Bf16Support(native, onednn, f"cpu {caps.get('architecture', '?')} ({units}; oneDNN bf16 "
                                       f"{'yes' if onednn else 'no'}; torch capability "
                                       f"{torch.backends.cpu.get_cpu_capability()}): bf16 {how}")


def _amx_usable() -> bool:
    try:
        return bool(torch.cpu._init_amx())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device | str, *, key: str = "precision") -> str:
    """``fp32`` or ``bf16`` for a stage asked to run at ``name`` (fp32 | bf16 | auto) on ``device``."""
    if name not in PRECISIONS:
        raise ConfigError(f"unknown {key} {name!r}; choose one of {', '.join(PRECISIONS)}")
    support = bf16_support(device)
    if name == "auto":
        return "bf16" if support.native else "fp32"
    if name == "bf16" and not support.runs:
        raise ConfigError(f"{key}=bf16 asked for, but {torch.device(device)} has no bf16 path ({support.report}); "
                          f"choose one of {', '.join(PRECISIONS)}: fp32, or auto (bf16 only where it is native)")
    return name


def autocast(precision: str, device: torch.device):
    """The autocast context of a resolved precision (a no-op for fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
