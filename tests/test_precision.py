"""Precision as a named choice per stage: resolution on the device, bad input, and bf16 / fp32 parity.

Parity bounds (tiny model, same seed, same batches, t and noise):
- training loss: bf16 rounds the network's activations and outputs to 8 significant bits
  (relative error u = 2^-8); the loss is a mean of squared output errors, so one step's loss moves
  by about 2u relative, and over a few steps the weights have not drifted apart.  Allowed: 4u
  relative per logged step (measured here: under 0.15%, i.e. ~0.3u).
- sampling: DDIM-10 with guidance from the same model and seeds; allowed a mean of 2 grey levels
  (measured: ~0.1), where images of other seeds differ by ~100.
"""

from __future__ import annotations

import csv

import pytest
import torch
from engine_helpers import tiny_config, tiny_data

import benchmark.core.device as device_mod
from benchmark.core.device import Bf16Support, bf16_support, resolve_precision
from benchmark.core.errors import ConfigError
from benchmark.engine.diffusion import GaussianDiffusion
from benchmark.engine.sampling import balanced_labels, sample_images, sample_seeds
from benchmark.engine.trainer import load_model, train
from benchmark.harness.cells import resolve_precisions
from methods import get_method

U = 2.0**-8  # bf16's unit roundoff
BF16_DEVICES = [d for d in ("cpu", "cuda") if (d == "cpu" or torch.cuda.is_available()) and bf16_support(d).runs]


def test_auto_follows_torchs_report_and_never_fails():
    for dev in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        support = bf16_support(dev)
        assert resolve_precision("auto", dev) == ("bf16" if support.native else "fp32")
        assert ("bf16 native" in support.report) == support.native
    assert resolve_precision("auto", "meta") == "fp32"  # a device with no bf16 path: fp32, no error
    if hasattr(torch.cpu, "get_capabilities"):  # the CPU claim rests on the instruction sets torch reports
        caps = torch.cpu.get_capabilities()
        has_units = caps.get("amx_bf16") or caps.get("avx512_bf16") or caps.get("bf16") or caps.get("sve_bf16")
        assert bf16_support("cpu").native <= bool(has_units)


def test_unknown_name_and_impossible_bf16_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown train.precision 'fp16'; choose one of auto, fp32, bf16"):
        resolve_precision("fp16", "cpu", key="train.precision")
    monkeypatch.setattr(device_mod, "bf16_support", lambda d: Bf16Support(False, False, "cpu x86_64 (test): bf16 none"))
    with pytest.raises(ConfigError, match=r"sample.precision=bf16 asked for, but cpu has no bf16 path.*auto"):
        resolve_precision("bf16", "cpu", key="sample.precision")
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("fp32", "cpu") == "fp32"


def test_a_cell_keeps_the_precision_it_started_with(tmp_path):
    import json

    cfg = tiny_config(precision="auto")
    fresh = resolve_precisions(cfg, tmp_path, "cpu")
    assert fresh.train.precision == resolve_precision("auto", "cpu") and fresh.sample.precision in ("fp32", "bf16")
    (tmp_path / "config.json").write_text(json.dumps({"cell": {}, "config": {"train": {"precision": "fp32"},
                                                                               "sample": {"precision": "fp32"}}}))
    kept = resolve_precisions(cfg, tmp_path, "cpu")  # resumed with auto: no switch midway
    assert (kept.train.precision, kept.sample.precision) == ("fp32", "fp32")


def _train_log(tmp_path, precision, device):
    data = tiny_data()
    cfg = tiny_config(precision=precision, steps=12, log_every=1, ckpt_every=12)
    method = get_method("ddpm", class_counts=data.counts, options=cfg.method)
    path = train(cfg=cfg, dataset=data, method=method, run_dir=tmp_path / precision, seed=0, device=device,
                 progress=False)
    with open(tmp_path / precision / "train_log.csv") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)], path


@pytest.mark.parametrize("device", BF16_DEVICES)
def test_bf16_training_and_sampling_stay_within_the_bound_of_fp32(tmp_path, device):
    fp32, path = _train_log(tmp_path, "fp32", device)
    bf16, _ = _train_log(tmp_path, "bf16", device)
    assert len(fp32) == len(bf16) == 12
    rel = [abs(a - b) / a for a, b in zip(fp32, bf16)]
    assert max(rel) < 4 * U, rel
    assert any(a != b for a, b in zip(fp32, bf16))  # bf16 really ran: the arithmetic differs

    model, _ = load_model(path, device)
    kw = dict(labels=balanced_labels(3, 8), seeds=sample_seeds(3, 24), sampler="ddim", steps=10, guidance=1.5,
              batch_size=24, device=device)
    diff = GaussianDiffusion(T=50)
    a = sample_images(model, diff, precision="fp32", **kw)
    b = sample_images(model, diff, precision="bf16", **kw)
    other = sample_images(model, diff, precision="fp32", **{**kw, "seeds": sample_seeds(4, 24)})
    assert (a.int() - b.int()).abs().float().mean() < 2
    assert (a.int() - other.int()).abs().float().mean() > 20  # the seeds, not the precision, decide the image
