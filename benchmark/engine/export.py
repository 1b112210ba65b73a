"""Weights anyone can load: ``model.safetensors`` and ``model.json`` beside a cell's ``model.pt``.

``model.pt`` is a torch pickle that this package's loader reads. The same EMA weights are also
written as safetensors (a flat tensor file every framework reads without pickle) with a small JSON
of what rebuilds the network: the UNet's module, class and constructor arguments, the diffusion
schedule it was trained with, its null label (classifier-free guidance) and what produced it. With
the UNet module alone (``benchmark/engine/backbone.py``, which imports nothing of the training code)::

    import json, torch
    from safetensors.torch import load_file
    from benchmark.engine.backbone import UNet

    arch = json.load(open("model.json"))
    model = UNet(**arch["architecture"]["kwargs"]).eval()
    model.load_state_dict(load_file("model.safetensors"))
    eps = model(x_t, t, y)  # y = arch["null_label"] for the unconditional prediction

The trainer writes both when it writes ``model.pt``; ``ltgen-bench export CELL`` writes them for a
cell trained before they existed (or into ``--to DIR``).
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmark.core.errors import DataError
from benchmark.core.files import write_text_atomic
from benchmark.engine.checkpoint import load

FORMAT = "ltgen-bench-unet/1"
WEIGHTS, ARCHITECTURE = "model.safetensors", "model.json"


def architecture(state: dict) -> dict:
    """The JSON beside the weights, from model.pt's contents."""
    info = json.loads(state["info"])
    config = json.loads(info.get("config", "{}"))
    kwargs = dict(state["model_kwargs"])
    return {
        "format": FORMAT,
        "architecture": {"module": "benchmark.engine.backbone", "class": "UNet", "kwargs": kwargs},
        "null_label": int(kwargs["num_classes"]),  # the class index that means "no label"
        "prediction": "epsilon",
        "diffusion": {"schedule": "linear", **config.get("diffusion", {})},
        "method": info.get("method"),
        "official_guidance": info.get("official_guidance"),
        "train_steps": info.get("steps"),
        "seed": info.get("seed"),
        "data": {"dataset": config.get("data", {}).get("dataset"), "split_fingerprint": info.get("fingerprint")},
    }


def export_weights(model_pt: Path, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write model.safetensors and model.json from ``model_pt`` into ``out_dir`` (default: beside it)."""
    from safetensors.torch import save_file  # a dependency; imported here so `--help` stays fast

    model_pt = Path(model_pt)
    out_dir = Path(out_dir) if out_dir is not None else model_pt.parent
    state = load(model_pt)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights, arch = out_dir / WEIGHTS, out_dir / ARCHITECTURE
    tensors = {k: v.detach().cpu().contiguous() for k, v in state["ema"].items()}
    partial = weights.with_name(weights.name + ".partial")
    save_file(tensors, str(partial), metadata={"format": FORMAT})
    partial.replace(weights)  # atomic: a killed export never leaves half a file
    write_text_atomic(arch, json.dumps(architecture(state), indent=2, sort_keys=True) + "\n")
    return weights, arch


def find_model(cell: Path) -> Path:
    """model.pt of a cell folder (or the file itself); a clear error when the cell has not finished training."""
    cell = Path(cell)
    path = cell if cell.suffix == ".pt" else cell / "model.pt"
    if not path.exists():
        raise DataError(
            f"{path} does not exist: export takes a finished cell folder, e.g. "
            "results/demo/runs/fashion-mnist/exp-0.01/ddpm/seed0 (run the benchmark first)"
        )
    return path
