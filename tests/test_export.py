"""model.safetensors + model.json beside model.pt, loadable with plain torch + safetensors + the UNet module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from engine_helpers import tiny_config, tiny_data

from benchmark.cli import main
from benchmark.engine.trainer import load_model, train
from methods import get_method

ROOT = Path(__file__).resolve().parents[1]
DATA = tiny_data()

# what a user of the weights runs: no trainer, no methods, no config tree
LOADER = """
import json, sys, torch
from safetensors.torch import load_file
from benchmark.engine.backbone import UNet
arch = json.load(open(sys.argv[1] + "/model.json"))
model = UNet(**arch["architecture"]["kwargs"]).eval()
model.load_state_dict(load_file(sys.argv[1] + "/model.safetensors"))
g = torch.Generator().manual_seed(0)
x = torch.randn(3, model.in_channels, model.resolution, model.resolution, generator=g)
y = torch.tensor([0, 2, arch["null_label"]])
with torch.no_grad():
    out = model(x, torch.tensor([1, 10, 40]), y)
torch.save(out, sys.argv[1] + "/out.pt")
loaded = sorted(m for m in sys.modules if m.startswith(("benchmark", "methods")))
print(json.dumps(loaded))
"""


def _train(run_dir):
    cfg = tiny_config()
    method = get_method("cm", class_counts=DATA.counts, options=cfg.method)  # CM folds its expert parts in
    return train(cfg=cfg, dataset=DATA, method=method, run_dir=run_dir, seed=0, device="cpu", progress=False)


def test_trained_model_loads_without_the_training_code(tmp_path):
    model_pt = _train(tmp_path)
    arch = json.loads((tmp_path / "model.json").read_text())
    assert arch["architecture"]["class"] == "UNet" and arch["null_label"] == 3 and arch["method"] == "cm"
    assert arch["diffusion"]["T"] == 50 and arch["train_steps"] == 6
    proc = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "benchmark.engine.backbone" in loaded
    assert not any(m.startswith(("methods", "benchmark.engine.trainer", "benchmark.harness")) for m in loaded), loaded
    model, _ = load_model(model_pt)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, model.in_channels, model.resolution, model.resolution, generator=g)
    with torch.no_grad():
        expected = model(x, torch.tensor([1, 10, 40]), torch.tensor([0, 2, 3]))
    # the same weights bit for bit; the outputs agree to float rounding (the processes' thread counts differ)
    from safetensors.torch import load_file

    weights, state = load_file(str(tmp_path / "model.safetensors")), model.state_dict()
    assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in state)
    assert torch.allclose(torch.load(tmp_path / "out.pt"), expected, rtol=1e-4, atol=1e-6)


def test_export_command_writes_them_for_a_finished_cell(tmp_path, capsys):
    _train(tmp_path / "cell")
    weights = (tmp_path / "cell" / "model.safetensors").read_bytes()
    (tmp_path / "cell" / "model.safetensors").unlink()
    (tmp_path / "cell" / "model.json").unlink()
    assert main(["export", str(tmp_path / "cell")]) == 0
    assert (tmp_path / "cell" / "model.safetensors").read_bytes() == weights
    assert main(["export", str(tmp_path / "cell" / "model.pt"), "--to", str(tmp_path / "shared")]) == 0
    assert (tmp_path / "shared" / "model.json").exists()
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
