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

import contextlib
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


# ---------------------------------------------------------------- numeric settings (TF32, cuDNN)
#
# torch keeps these process-wide, in two APIs: the legacy flags (``allow_tf32``,
# ``set_float32_matmul_precision``) and, from torch 2.9, a ``fp32_precision`` string per backend and
# operation.  Reading a legacy flag raises once the two disagree, so every read below tolerates that.

_PRECISION_OPS = ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn")
_MATMUL = torch.backends.cuda.matmul
_CUDNN = torch.backends.cudnn


def _op(path: str):
    obj = torch.backends
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj if obj is not None and _read(lambda: obj.fp32_precision) is not None else None


def _read(get):
    """A setting's value, or None where this torch lacks it or its two APIs were set in disagreement."""
    try:
        return get()
    except (AttributeError, RuntimeError):
        return None


def _capture() -> dict:
    return dict(matmul_tf32=_read(lambda: _MATMUL.allow_tf32), cudnn_tf32=_read(lambda: _CUDNN.allow_tf32),
                matmul_precision=_read(torch.get_float32_matmul_precision), benchmark=_CUDNN.benchmark,
                deterministic=_CUDNN.deterministic,
                ops={p: _op(p).fp32_precision for p in _PRECISION_OPS if _op(p) is not None})


def _restore(state: dict) -> None:
    # legacy flags first, then the matmul precision (a legacy allow_tf32 write after it breaks its read-back),
    # then the per-operation strings, which put back exactly what either API had set
    if state["matmul_tf32"] is not None:
        _MATMUL.allow_tf32 = state["matmul_tf32"]
    if state["cudnn_tf32"] is not None:
        _CUDNN.allow_tf32 = state["cudnn_tf32"]
    if state["matmul_precision"] is not None:
        torch.set_float32_matmul_precision(state["matmul_precision"])
    for path, value in state["ops"].items():
        _op(path).fp32_precision = value
    _CUDNN.benchmark, _CUDNN.deterministic = state["benchmark"], state["deterministic"]


@contextlib.contextmanager
def kept_numerics():
    """Every numeric setting above is put back as it was on exit (also after an error): what a stage
    switches on for itself (the trainer's TF32 and cuDNN autotuning) cannot leak into the next stage
    of the same process."""
    state = _capture()
    try:
        yield
    finally:
        _restore(state)


@contextlib.contextmanager
def train_numerics(device: torch.device, *, tf32: bool, tf32_matmul: bool = True):
    """The training loop's settings on CUDA (``train.tf32`` for convolutions, and for matmuls unless
    ``train.tf32_matmul`` is false: PyTorch's defaults, which the official CBDM / OC / CORAL code ran
    under, are cuDNN TF32 on and matmul TF32 off; cuDNN autotuning for the fixed shapes, as edm does),
    for the run only; nothing changes on other devices."""
    with kept_numerics():
        if torch.device(device).type == "cuda":
            _MATMUL.allow_tf32 = tf32 and tf32_matmul
            _CUDNN.allow_tf32 = tf32
            _CUDNN.benchmark = True
        yield


@contextlib.contextmanager
def pinned_numerics(device: torch.device):
    """Fixed full-fp32 settings for feature extraction, the caller's back on exit; yields their
    :func:`numerics_key`.

    Why pinned and not only keyed: features of generated images and of the reference set are compared
    with each other, and the reference's are cached and reused by later processes.  Were extraction to
    run under whatever the process had set (TF32 left on by training, cuDNN autotuning picking other
    algorithms), a cell evaluated after training in the same process would compare TF32 features with
    reference features cached by a fresh process (TF32 keeps 10 mantissa bits: about 1e-3 relative
    error per product).  Pinned, both sides always come from the same numerics, and the key then
    records them (with the device type and the default dtype, which pinning leaves alone: the
    networks were built in it before extraction starts) so caches of other numerics are never
    read.  Pinned: TF32 off for every matmul and convolution (both of torch's APIs), float32 matmul
    precision ``highest`` (no bf16 matmuls on CPUs either), cuDNN autotuning off and cuDNN's
    deterministic algorithms only, autocast off.  ``torch.use_deterministic_algorithms`` is recorded, not set
    (on CUDA it needs an environment variable set before start-up).
    """
    with kept_numerics():
        _MATMUL.allow_tf32 = False
        _CUDNN.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        for path in _PRECISION_OPS:
            if _op(path) is not None:
                _op(path).fp32_precision = "ieee"
        _CUDNN.benchmark, _CUDNN.deterministic = False, True
        device = torch.device(device)
        with torch.autocast(device.type, enabled=False) if device.type in ("cuda", "cpu") else contextlib.nullcontext():
            yield numerics_key(device)


def numerics_key(device: torch.device | str) -> str:
    """The numeric settings work on ``device`` runs under now, as one string (caches key on it).

    CUDA: TF32 for matmuls and cuDNN (both APIs), cuDNN autotuning and determinism; every device:
    the float32 matmul precision, CPU: oneDNN's per-operation precision; and everywhere
    ``torch.use_deterministic_algorithms`` and the default dtype.  The CPU's key holds no cuBLAS or
    cuDNN flag.  Under :func:`pinned_numerics` it is one fixed string per device type, torch
    version family and default dtype.  ``?`` is a setting this torch lacks, or one set through both
    of torch's APIs in disagreement."""
    device = torch.device(device)
    show = lambda v: "?" if v is None else str(int(v) if isinstance(v, bool) else v)
    state = _capture()
    parts = [device.type]
    if device.type == "cuda":
        parts += [f"matmul_tf32={show(state['matmul_tf32'])}", f"cudnn_tf32={show(state['cudnn_tf32'])}",
                  f"cudnn_benchmark={show(state['benchmark'])}", f"cudnn_deterministic={show(state['deterministic'])}"]
    parts.append(f"matmul_precision={show(state['matmul_precision'])}")
    ops = _PRECISION_OPS[:3] if device.type == "cuda" else _PRECISION_OPS[3:] if device.type == "cpu" else ()
    parts += [f"{p}={v}" for p, v in state["ops"].items() if p in ops]
    parts += [f"deterministic_algorithms={int(torch.are_deterministic_algorithms_enabled())}",
              f"dtype={str(torch.get_default_dtype()).removeprefix('torch.')}"]
    return " ".join(parts)
