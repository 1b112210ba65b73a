"""The paper presets run as the papers ran them: fp32 with PyTorch's TF32 defaults, OC's / CM's DDIM
last step, each protocol's training budget, evaluation labels and per-dataset guidance."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from benchmark.cli import main
from benchmark.core import device as numerics
from benchmark.core.config import SampleConfig
from benchmark.core.presets import PAPER_PRESETS, get_preset
from benchmark.engine.diffusion import GaussianDiffusion
from benchmark.engine.sampling import _Noise, denoise, eval_labels, generate_eval_set, sample_seeds
from benchmark.harness.cells import Cell, cell_config
from benchmark.harness.stages import with_run_note


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_presets_train_and_sample_in_fp32_with_pytorchs_tf32_defaults(name):
    cfg = get_preset(name)
    assert (cfg.train.precision, cfg.sample.precision) == ("fp32", "fp32")
    assert cfg.train.tf32 and not cfg.train.tf32_matmul  # cuDNN convolutions TF32, matmuls full fp32


@pytest.mark.parametrize("name", ["smoke", "demo", "demo-sweep", "imagefolder"])
def test_cpu_presets_keep_auto(name):
    cfg = get_preset(name)
    assert cfg.sample.precision == "auto" and cfg.train.tf32_matmul
    assert cfg.train.precision == "auto" or name == "smoke"


def test_dry_run_of_cifar100lt_shows_fp32(capsys):
    assert main(["run", "--preset", "cifar100lt", "--dry-run"]) == 0
    out = capsys.readouterr().out
    start = out.index("{")
    cfg = json.JSONDecoder().raw_decode(out[start:])[0]
    assert cfg["train"]["precision"] == "fp32" and cfg["sample"]["precision"] == "fp32"
    assert cfg["train"]["tf32"] is True and cfg["train"]["tf32_matmul"] is False


def _cuda_flags():
    b = torch.backends
    return b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32


def test_tf32_matmul_off_keeps_cudnn_tf32_on():
    before = _cuda_flags()
    with numerics.train_numerics(torch.device("cuda"), tf32=True, tf32_matmul=False):
        assert _cuda_flags() == (False, True)
    with numerics.train_numerics(torch.device("cuda"), tf32=True, tf32_matmul=True):
        assert _cuda_flags() == (True, True)
    with numerics.train_numerics(torch.device("cuda"), tf32=False, tf32_matmul=True):
        assert _cuda_flags() == (False, False)
    assert _cuda_flags() == before


# ---------------------------------------------------------------- DDIM's last step


class _EpsModel(nn.Module):
    """A deterministic eps model of (x, t, y), the null label num_classes included: about the optimal
    eps of data near zero (sqrt(1 - abar_t) x_t), bent by a tanh and shifted per class, so images stay
    in range and the guidance matters."""

    num_classes, in_channels, resolution = 3, 1, 4

    def __init__(self, T=1000):
        super().__init__()
        self.s = GaussianDiffusion(T=T).alphas_bar.neg().add(1).sqrt().float()

    def forward(self, x, t, y):
        s = self.s[t].clamp(min=0.5).view(-1, 1, 1, 1)
        shift = (y.float() - 1.0).view(-1, 1, 1, 1) * 0.2
        return s * (0.8 * x + 0.2 * torch.tanh(x) + shift)


def _oc_ddim(model, x, y, *, T, skip, omega, alphas_bar):
    """A transcription of OC_LT's DDIM (diffusion.py GaussianDiffusionSamplerOld: forward lines 204-239,
    q_mean_variance's ddim branch lines 127-137, guidance lines 185-188): t = T - skip, ..., 0; the next
    time is clamp(t - skip, 0); coefficients gathered from float64 alphas_bar and cast to float32."""

    def ex(v, t):
        return v[t].float().view(-1, 1, 1, 1)

    for step in reversed(range(0, T, skip)):
        t = torch.full((x.shape[0],), step, dtype=torch.long)
        eps = model(x, t, y)
        eps_g = model(x, t, torch.full_like(y, model.num_classes))
        eps = eps + omega * (eps - eps_g)
        s = torch.clamp(t - skip, 0, T)
        c1, c2 = ex(alphas_bar, t).sqrt(), (1 - ex(alphas_bar, t)).sqrt()
        c3, c4 = ex(alphas_bar, s).sqrt(), (1 - ex(alphas_bar, s)).sqrt()
        x = c3 / c1 * x + (c4 - c3 * c2 / c1) * eps
    return torch.clip(x, -1, 1)


@pytest.mark.parametrize("steps", [100, 50])
def test_ddim_clamp_is_ocs_sampler(steps):
    model, diffusion = _EpsModel(), GaussianDiffusion()
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    seeds = sample_seeds(3, len(y))
    x_T = _Noise(seeds, (1, 4, 4), torch.device("cpu")).draw()
    want = _oc_ddim(model, x_T.clone(), y, T=1000, skip=1000 // steps, omega=1.5, alphas_bar=diffusion.alphas_bar)
    kw = dict(sampler="ddim", steps=steps, eta=0.0, guidance=1.5)
    ours = denoise(model, diffusion, y, _Noise(seeds, (1, 4, 4), torch.device("cpu")), ddim_last="clamp", **kw)
    assert (ours.clamp(-1, 1) - want).abs().max().item() < 1e-6
    other = denoise(model, diffusion, y, _Noise(seeds, (1, 4, 4), torch.device("cpu")), ddim_last="x0", **kw)
    assert (other.clamp(-1, 1) - want).abs().max().item() > 1e-3  # the DDIM paper's last step is another image


@pytest.mark.parametrize(("protocol", "last", "labels", "budget"), [
    ("ddim", "clamp", "balanced", (300_000, 64, ("cbdm=48",))),
    ("ddim100", "clamp", "uniform", (200_000, 128, ())),
    ("ddpm1000", "x0", "uniform", (150_000, 128, ())),
])  # fmt: skip
def test_each_protocol_brings_its_sampler_labels_and_budget(protocol, last, labels, budget):
    cfg = get_preset("cifar100lt", protocol)
    assert (cfg.sample.ddim_last, cfg.sample.labels) == (last, labels)
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.method_batch_size) == budget
    demo = get_preset("demo", protocol)  # a CPU preset keeps its own budget
    assert (demo.train.steps, demo.train.batch_size) == (1500, 64) and demo.sample.labels == labels


def test_cpu_presets_keep_the_ddim_papers_last_step():
    assert get_preset("demo").sample.ddim_last == "x0" and get_preset("cifar10lt").sample.ddim_last == "clamp"


# ---------------------------------------------------------------- evaluation labels and guidance


def test_uniform_labels_are_iid_and_seeded():
    a = eval_labels("uniform", 10, 50, seed=0)
    assert len(a) == 500 and torch.equal(a, eval_labels("uniform", 10, 50, seed=0))
    counts = np.bincount(a.numpy(), minlength=10)
    assert counts.sum() == 500 and len(set(counts)) > 1 and np.all(np.diff(a.numpy()) >= 0)
    assert not torch.equal(a, eval_labels("uniform", 10, 50, seed=1))
    assert np.bincount(eval_labels("balanced", 10, 50, seed=0).numpy()).tolist() == [50] * 10


def test_generated_set_follows_the_label_rule(tmp_path):
    model, diffusion = _EpsModel(T=10), GaussianDiffusion(T=10)
    cfg = SampleConfig(sampler="ddim", steps=2, guidance=(0.0,), batch_size=8, labels="uniform", ddim_last="clamp")
    images, labels = generate_eval_set(model, diffusion, num_classes=3, n_per_class=6, cfg=cfg, seed=0,
                                       out_path=tmp_path / "s.npz", device="cpu", progress=False)
    assert len(images) == 18 and torch.equal(labels, eval_labels("uniform", 3, 6, seed=0))


@pytest.mark.parametrize(("dataset", "imbalance", "method", "omega"), [
    ("cifar10", 0.01, "cbdm", 1.0), ("cifar10", 0.01, "coral", 0.6), ("cifar10", 0.01, "t2h", 1.0),
    ("cifar10", 0.001, "cbdm", 1.8), ("cifar100", 0.01, "cbdm", 1.6), ("cifar10", 0.01, "cm", None),
    ("cifar10", 0.1, "cbdm", None),
])  # fmt: skip
def test_ddpm1000_uses_the_tables_omega_per_dataset(dataset, imbalance, method, omega):
    cfg = get_preset("cifar10lt", "ddpm1000")
    ccfg = cell_config(cfg, Cell(dataset, "exp", imbalance, method, 0))
    assert ccfg.sample.guidance == (None if omega is None else (omega,))  # None: the method's official strength
    fixed = cell_config(get_preset("cifar10lt", "ddim"), Cell(dataset, "exp", imbalance, method, 0))
    assert fixed.sample.guidance == (1.5,)


def test_rows_record_the_batch_and_the_label_rule():
    cfg = get_preset("cifar100lt", "ddim100")
    rows = with_run_note(pd.DataFrame({"note": ["", "pooled"]}), cfg)
    assert rows.note.tolist() == ["train_batch=128;eval_labels=uniform", "pooled;train_batch=128;eval_labels=uniform"]


@pytest.mark.parametrize("rule", ["balanced", "uniform"])
def test_a_smaller_point_set_is_a_subset_of_the_full_set_under_either_label_rule(rule):
    from benchmark.engine.sampling import paired_subset

    full_labels, full_seeds = eval_labels(rule, 3, 8, seed=5), sample_seeds(5, 24)
    labels, seeds = paired_subset(rule, 3, 4, 8, seed=5)
    assert len(labels) == 12 and (labels[1:] >= labels[:-1]).all()  # class blocks
    assert set(zip(labels.tolist(), seeds.tolist())) <= set(zip(full_labels.tolist(), full_seeds.tolist()))
    same_labels, same_seeds = paired_subset(rule, 3, 8, 8, seed=5)
    assert torch.equal(same_labels, full_labels) and torch.equal(same_seeds, full_seeds)
