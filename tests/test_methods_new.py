"""T2H, CORAL and cbdm-ft: each against a direct transcription of its formula, plus the trainer
hook for method-owned modules and the grid's fine-tuning dependency."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_helpers import TINY_MODEL, tiny_config, tiny_data

from benchmark.core.config import Config, GridConfig
from benchmark.core.errors import ConfigError
from benchmark.engine.backbone import build_unet
from benchmark.engine.batches import Labels
from benchmark.engine.checkpoint import latest_checkpoint, load
from benchmark.engine.diffusion import GaussianDiffusion
from benchmark.engine.trainer import _seeds, train
from methods import coral_lambda, coral_loss, get_method, method_options, t2h_probs, t2h_targets
from methods.base import draw_t_noise
from methods.coral import coral_terms, projection_head

COUNTS = np.array([12, 6, 2])


# ---------------------------------------------------------------- T2H


def _t2h_batch():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 1, 2, 2, generator=g) * 2 - 1  # 4 pixels: swaps are likely at moderate t
    noise = torch.randn(8, 1, 2, 2, generator=g)
    t = torch.tensor([999, 950, 800, 600, 400, 250, 100, 3])
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    u = torch.rand(8, generator=g)
    return x0, noise, t, y, u


def _t2h_by_hand(x0, noise, t, y, u, diffusion, gate):
    """REFERENCE.md section 4, one sample at a time (``y``: the true labels, whatever the label drop)."""
    B = len(t)
    p = torch.as_tensor(COUNTS / COUNTS.sum())
    abar = diffusion.table("cpu")["alphas_bar"].double()
    targets, js = [], []
    for i in range(B):
        a = abar[t[i]]
        var = 1 / a - 1
        xhat = x0[i].double() + var.sqrt() * noise[i].double()
        x_t = a.sqrt() * x0[i].double() + (1 - a).sqrt() * noise[i].double()
        weights = [math.exp(-((xhat - x0[j].double()) ** 2).sum().item() / (2 * var.item())) for j in range(B)]
        total, acc, j = sum(weights), 0.0, B - 1
        for k, w in enumerate(weights):
            acc += w / total
            if acc > u[i].item():
                j = k
                break
        if gate == "t2h" and not p[y[j]] >= p[y[i]]:
            j = i
        if gate == "h2t" and not p[y[j]] <= p[y[i]]:
            j = i
        targets.append((x_t - a.sqrt() * x0[j].double()) / (1 - a).sqrt())
        js.append(j)
    return torch.stack(targets).float(), torch.tensor(js)


@pytest.mark.parametrize("gate", ["t2h", "h2t", "full"])
def test_t2h_targets_match_the_formula(gate):
    diffusion = GaussianDiffusion(T=1000)
    x0, noise, t, y, u = _t2h_batch()
    x_t = diffusion.q_sample(x0, t, noise)
    freq = torch.tensor(COUNTS / COUNTS.sum(), dtype=torch.float32)
    target, j = t2h_targets(x0, x_t, t, noise, y, diffusion, class_freq=freq, gate=gate, u=u)
    ref_target, ref_j = _t2h_by_hand(x0, noise, t, y, u, diffusion, gate)
    assert torch.equal(j, ref_j)
    assert torch.allclose(target, ref_target, atol=1e-4)
    assert not target.requires_grad
    swapped = j != torch.arange(8)
    assert torch.equal(target[~swapped], noise[~swapped])  # unswapped samples keep plain DDPM's target
    if gate == "full":
        assert swapped.sum() >= 2  # the batch really exercises the swap
    else:  # the gate holds on every swap
        p = freq[y]
        assert (p[j][swapped] >= p[swapped]).all() if gate == "t2h" else (p[j][swapped] <= p[swapped]).all()


def test_t2h_gates_differ_and_probs_are_a_posterior():
    diffusion = GaussianDiffusion(T=1000)
    x0, noise, t, y, u = _t2h_batch()
    pi = t2h_probs(x0, t, noise, diffusion)
    assert torch.allclose(pi.sum(1), torch.ones(8, dtype=pi.dtype))
    assert pi[7, 7] > 0.999  # t = 3: x_t is x0 itself, no other image could have produced it
    x_t = diffusion.q_sample(x0, t, noise)
    freq = torch.tensor(COUNTS / COUNTS.sum(), dtype=torch.float32)
    js = {g: t2h_targets(x0, x_t, t, noise, y, diffusion, class_freq=freq, gate=g, u=u)[1] for g in ("t2h", "h2t")}
    assert not torch.equal(js["t2h"], js["h2t"])


class _Recorder(torch.nn.Module):
    """Predicts 0 and records the labels it is conditioned on: the loss then is the target's square."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t, y):
        self.seen.append(y.clone())
        return torch.zeros_like(x)


def test_t2h_swaps_on_label_dropped_batches_exactly_as_on_conditional_ones():
    # the official trainer drops the label for the condition only and calibrates every batch with the true labels
    diffusion = GaussianDiffusion(T=1000)
    x0, _, _, y, _ = _t2h_batch()
    method = get_method("t2h", class_counts=COUNTS, options=method_options(t2h={"gate": "full"}))
    null = torch.full_like(y, 3)
    drop = torch.tensor([True, False, True, True, False, True, True, True])
    cases = {"conditional": Labels(true=y, model=y, cond=True), "dropped": Labels(true=y, model=null, cond=False),
             "per-sample": Labels(true=y, model=torch.where(drop, null, y), cond=~drop)}
    oc = {}
    for name, labels in cases.items():
        model = _Recorder()
        oc[name] = method.loss_terms(model, diffusion, x0, labels, torch.Generator().manual_seed(4))["oc"]
        assert torch.equal(model.seen[-1], labels.model)  # the condition is the label-dropped one
    g = torch.Generator().manual_seed(4)  # the method's draws: t, noise, then u
    t, noise = draw_t_noise(diffusion, x0, g)
    u = torch.rand(8, generator=g)
    ref_target, ref_j = _t2h_by_hand(x0, noise, t, y, u, diffusion, "full")
    assert (ref_j != torch.arange(8)).sum() >= 2  # swaps happen
    for name in cases:
        assert torch.allclose(oc[name], ref_target.square().flatten(1).mean(1), rtol=1e-4), name
    with pytest.raises(ConfigError, match=r"method\.t2h\.gate"):
        get_method("t2h", class_counts=COUNTS, options=method_options(t2h={"gate": "tail"}))


# ---------------------------------------------------------------- CORAL


def _supcon_by_hand(z, y, tau):
    """Khosla et al. (2020), one view, anchors without a positive skipped (mean over the others)."""
    losses = []
    for i in range(len(y)):
        pos = [p for p in range(len(y)) if p != i and y[p] == y[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(len(y)) if a != i)
        losses.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in pos) / len(pos))
    return sum(losses) / len(losses), len(losses)


def test_coral_loss_matches_direct_computation():
    g = torch.Generator().manual_seed(1)
    z = F.normalize(torch.randn(7, 5, generator=g), dim=1)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 3])  # classes 2 and 3 have a single sample: no positive
    per = coral_loss(z, y, temperature=0.1)
    ref, n = _supcon_by_hand(z.double(), y, 0.1)
    assert n == 5 and (per[[3, 6]] == 0).all() and (per[[0, 1, 2, 4, 5]] > 0).all()
    assert math.isclose(float(per[per > 0].mean()), ref, rel_tol=1e-5)
    # only the valid (conditional) samples are anchors or contrasted
    valid = torch.tensor([True, True, True, False, True, False, True])
    ref_valid, _ = _supcon_by_hand(z[valid].double(), y[valid], 0.1)
    per_valid = coral_loss(z, y, temperature=0.1, valid=valid)
    assert (per_valid[~valid] == 0).all()
    assert math.isclose(float(per_valid[per_valid > 0].mean()), ref_valid, rel_tol=1e-5)
    t = torch.tensor([0, 500, 999])
    expect = 0.5 * np.mean(np.exp((1 - np.array([0, 500, 999]) / 1000) / 0.3))
    assert math.isclose(float(coral_lambda(t, 1000, weight=0.5, time_scale=0.3)), expect, rel_tol=1e-6)


def test_coral_terms_equal_the_pipeline_and_train_the_head():
    torch.manual_seed(0)
    model = build_unet(TINY_MODEL, channels=1, resolution=8, num_classes=3).eval()
    head = projection_head(model.bottleneck_channels, 16)
    diffusion = GaussianDiffusion(T=50)
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1, torch.randn(6, 1, 8, 8, generator=g)
    t, y = torch.tensor([1, 10, 20, 30, 40, 49]), torch.tensor([0, 0, 1, 1, 2, 0])
    terms = coral_terms(model, head, diffusion, x0, y, t, noise, weight=0.5, temperature=0.1, time_scale=0.3)
    x_t = diffusion.q_sample(x0, t, noise)
    eps, h = model(x_t, t, y, return_bottleneck=True)
    z = F.normalize(head(h.mean(dim=(2, 3))), dim=1)
    ref, _ = _supcon_by_hand(z.detach().double(), y, 0.1)
    lam = 0.5 * torch.exp((1 - t.float() / 50) / 0.3).mean()
    assert math.isclose(terms["supcon"].mean().item(), lam.item() * ref, rel_tol=1e-5)
    assert torch.allclose(terms["ddpm"], ((eps - noise) ** 2).mean(dim=(1, 2, 3)), atol=1e-6)
    terms["supcon"].mean().backward()
    assert head.weight.grad.abs().sum() > 0 and model.mid1.block1[2].weight.grad.abs().sum() > 0
    off = coral_terms(model, head, diffusion, x0, torch.full_like(y, 3), t, noise, cond=False)
    assert (off["supcon"] == 0).all() and not off["supcon"].requires_grad  # no contrastive term unconditioned


def test_coral_default_weight_is_the_official_effective_weight():
    # official objective (coral-lt-diffusion diffusion.py + main.py): loss_supcon = supcon_weight (0.5)
    # * mean(exp((1 - t/T) / 0.3)) * SupCon, then loss = loss_ddpm + supcon_temp (0.1) * loss_supcon
    assert method_options().coral.weight == 0.05
    torch.manual_seed(0)
    model = build_unet(TINY_MODEL, channels=1, resolution=8, num_classes=3).eval()
    method = get_method("coral", class_counts=COUNTS)
    diffusion = GaussianDiffusion(T=50)
    x0 = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = torch.tensor([0, 0, 1, 1, 2, 0])
    terms = method.loss_terms(model, diffusion, x0, Labels(true=y, model=y, cond=True), torch.Generator().manual_seed(5))
    t, noise = draw_t_noise(diffusion, x0, torch.Generator().manual_seed(5))  # the method's own draws
    _, h = model(diffusion.q_sample(x0, t, noise), t, y, return_bottleneck=True)
    z = F.normalize(method.head(h.mean(dim=(2, 3))), dim=1)
    supcon, _ = _supcon_by_hand(z.detach().double(), y, 0.1)
    official = 0.1 * (0.5 * torch.exp((1 - t.float() / 50) / 0.3).mean().item() * supcon)
    assert math.isclose(terms["supcon"].mean().item(), official, rel_tol=1e-5)


def test_coral_head_is_trained_checkpointed_resumed_and_not_in_model_pt(tmp_path):
    from engine_helpers import Interrupting

    data = tiny_data()
    cfg = tiny_config()

    def run(folder, method=None):
        method = method or get_method("coral", class_counts=data.counts, options=cfg.method)
        return train(cfg=cfg, dataset=data, method=method, run_dir=folder, seed=0, device="cpu", progress=False)

    full = run(tmp_path / "full")
    assert set(load(full)) == {"ema", "model_kwargs", "info"}  # no head in model.pt
    head = load(latest_checkpoint(tmp_path / "full" / "checkpoints"))["aux"]["coral_head"]
    torch.manual_seed(_seeds(0)[0])  # the trainer builds the UNet, then the method's head, from this seed
    channels = build_unet(TINY_MODEL, channels=1, resolution=8, num_classes=3).bottleneck_channels
    init = projection_head(channels, cfg.method.coral.dim)
    assert head["weight"].shape == init.weight.shape and not torch.equal(head["weight"], init.weight.detach())
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", Interrupting(get_method("coral", class_counts=data.counts), at=4))
    fresh = get_method("coral", class_counts=data.counts)
    run(tmp_path / "cut", fresh)
    resumed = load(latest_checkpoint(tmp_path / "cut" / "checkpoints"))["aux"]["coral_head"]
    assert all(torch.equal(head[k], resumed[k]) for k in head)  # exact resume includes the head
    assert all(torch.equal(load(full)["ema"][k], v) for k, v in load(tmp_path / "cut" / "model.pt")["ema"].items())


@pytest.mark.parametrize("name", ["t2h", "coral+resample"])
def test_train_with_per_sample_label_drop(tmp_path, name):
    data = tiny_data()
    cfg = tiny_config(label_drop_mode="sample", label_drop=0.5)
    method = get_method(name, class_counts=data.counts, options=cfg.method)
    path = train(cfg=cfg, dataset=data, method=method, run_dir=tmp_path, seed=0, device="cpu", progress=False)
    assert json.loads(load(path)["info"])["steps"] == 6
    aux = load(latest_checkpoint(tmp_path / "checkpoints"))["aux"]
    assert set(aux) == ({"coral_head"} if "coral" in name else set())


# ---------------------------------------------------------------- cbdm-ft and the grid


def test_grid_orders_and_adds_the_ddpm_dependency():
    from benchmark.harness.cells import (
        cell_config,
        expand_grid,
        method_order,
        parent_cell,
    )

    assert method_order(("cbdm-ft",)) == (["ddpm", "cbdm-ft"], ["ddpm"])
    assert method_order(("cbdm-ft", "cbdm", "ddpm")) == (["ddpm", "cbdm-ft", "cbdm"], [])
    cfg = replace(Config(), grid=GridConfig(methods=("cbdm-ft",), imbalances=(0.01, 0.1), seeds=(0, 1)))
    cfg = replace(cfg, train=replace(cfg.train, steps=1000, warmup=500))
    cells = [c for c in expand_grid(cfg) if c.method != "real"]
    assert [c.method for c in cells] == ["ddpm", "ddpm", "cbdm-ft", "cbdm-ft"] * 2
    ft = cells[-1]
    assert parent_cell(ft) == replace(ft, method="ddpm") and parent_cell(cells[0]) is None
    ccfg = cell_config(cfg, ft, "/tmp/res")
    parent = parent_cell(ft).folder("/tmp/res").resolve()
    assert ccfg.train.init_from == str(parent / "checkpoints" / "ema_00000667.pt")  # 2/3 of the parent's 1000
    assert (ccfg.train.steps, ccfg.train.warmup) == (167, 16)
    ccfg = cell_config(replace(cfg, method=method_options(cbdm_ft={"steps": 7, "start": 1.0})), ft, "/tmp/res")
    assert (ccfg.train.steps, ccfg.train.warmup) == (7, 0)
    assert ccfg.train.init_from == str(parent / "model.pt")  # start 1: the parent's final model
    assert cell_config(cfg, cells[0]).train.init_from is None
    assert cell_config(cfg, cells[0]).train.keep_ema_at == (250, 500, 667, 750)  # its child's start, and the quarters
    m = get_method("cbdm-ft", class_counts=COUNTS)  # uniform y' even under the default prior option
    assert torch.allclose(m.prior, torch.full((3,), 1 / 3)) and m.official_guidance == 2.0


def test_cbdm_ft_resolved_config_is_the_official_protocol():
    # qym7/CBDM-pytorch: fine-tune the DDPM EMA of the 200k checkpoint (of 300k) for ~50k steps (evaluated at
    # 250k) at CBDM's batch 48, uniform y', fresh Adam with the 5000-step warmup again, sampled at omega 2.0
    from benchmark.core.presets import get_preset
    from benchmark.harness.cells import Cell, cell_config, method_batch

    cfg = get_preset("cifar100lt")
    ft, ddpm = Cell("cifar100", "exp", 0.01, "cbdm-ft", 0), Cell("cifar100", "exp", 0.01, "ddpm", 0)
    ccfg = cell_config(cfg, ft, "/tmp/res")
    assert ccfg.train.init_from.endswith("runs/cifar100/exp-0.01/ddpm/seed0/checkpoints/ema_00200000.pt")
    assert (ccfg.train.steps, ccfg.train.batch_size, ccfg.train.warmup) == (50_000, 48, 5000)
    assert not hasattr(ccfg.method.cbdm_ft, "prior")  # y' is always uniform in the fine-tune protocol
    assert get_method("cbdm-ft", class_counts=COUNTS).official_guidance == 2.0
    pcfg = cell_config(cfg, ddpm, "/tmp/res")
    assert pcfg.train.keep_ema_at == (75_000, 150_000, 200_000, 225_000)
    assert pcfg.train.batch_size == 64 and pcfg.train.steps == 300_000
    # the per-method batch rule follows the objective: cbdm=48 covers every method that trains CBDM's
    assert [method_batch(cfg, m) for m in ("cbdm", "cbdm-ft", "cbdm+resample", "cbdm+reweight")] == [48] * 4
    assert [method_batch(cfg, m) for m in ("ddpm", "t2h", "coral", "resample", "reweight+resample", "real")] == [64] * 6


@pytest.mark.parametrize("frac", [0.0, -0.5, 1.5])
def test_cbdm_ft_start_outside_zero_one_is_a_clear_error(frac, capsys):
    from benchmark.cli import main

    with pytest.raises(ConfigError, match=r"method.cbdm_ft.start=.* is out of range: must be in \(0, 1\]"):
        method_options(cbdm_ft={"start": frac})
    code = main(["run", "--preset", "smoke", "--methods", "cbdm-ft", "--dry-run",
                 "--set", f"method.cbdm-ft.start={frac}"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "method.cbdm_ft.start" in err and "(0, 1]" in err


def test_cbdm_ft_without_the_parent_checkpoint_names_the_fix(tmp_path, capsys):
    from benchmark.cli import main
    from benchmark.harness.results import read_results

    out = tmp_path / "ft"
    base = ["run", "--preset", "smoke", "--out", str(out), "--no-progress", "--no-report", "--set", "train.steps=3",
            "--set", "method.cbdm_ft.steps=2", "--set", "eval.downstream=false", "--set", "eval.real_floor=false",
            "--set", "train.keep_ema_fractions="]  # no quarters kept either (else step 2 of 3 would be)
    assert main(base + ["--methods", "ddpm"]) == 0  # the parent, trained alone: no EMA kept at step 2
    capsys.readouterr()
    assert main(base + ["--methods", "cbdm-ft"]) == 1
    text = capsys.readouterr().out
    assert "FAILED" in text and "step 2" in text and "--force" in text and "method.cbdm_ft.start=1" in text
    runs = out / "runs" / "digits" / "exp-0.1"
    assert (runs / "ddpm" / "seed0" / "done.json").exists() and set(read_results(out).method) == {"ddpm"}
    # the fix as named: fine-tune the parent's final model (the failed cell computed nothing, so it takes the
    # corrected config), and the finished parent is reused
    assert main(base + ["--methods", "cbdm-ft", "--set", "method.cbdm_ft.start=1"]) == 0
    assert "1 already finished" in capsys.readouterr().out
    assert set(read_results(out).method) == {"ddpm", "cbdm-ft"}


def test_cbdm_ft_runs_after_and_starts_from_its_ddpm_cell(tmp_path, capsys, monkeypatch):
    import benchmark.engine.trainer as trainer
    from benchmark.cli import main
    from benchmark.harness.results import read_results

    loaded = []
    real_load = trainer.load
    monkeypatch.setattr(trainer, "load", lambda path: (loaded.append(path), real_load(path))[1])
    out = tmp_path / "ft"
    argv = ["run", "--preset", "smoke", "--out", str(out), "--no-progress", "--no-report", "--methods", "cbdm-ft",
            "--set", "train.steps=3", "--set", "method.cbdm_ft.steps=2", "--set", "eval.downstream=false",
            "--set", "eval.real_floor=false"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "method 'ddpm' added" in text and text.index(" ddpm seed0") < text.index(" cbdm-ft seed0")
    runs = out / "runs" / "digits" / "exp-0.1"
    ddpm_model = (runs / "ddpm" / "seed0" / "checkpoints" / "ema_00000002.pt").resolve()  # 2/3 of 3 steps
    assert ddpm_model.exists() and (runs / "ddpm" / "seed0" / "model.pt").exists()
    config = json.loads((runs / "cbdm-ft" / "seed0" / "config.json").read_text())["config"]
    assert config["train"]["init_from"] == str(ddpm_model) and config["train"]["steps"] == 2
    assert ddpm_model in [p.resolve() for p in loaded]  # the fine-tune really loaded the ddpm model
    info = json.loads(load(runs / "cbdm-ft" / "seed0" / "model.pt")["info"])
    assert info["method"] == "cbdm-ft" and info["steps"] == 2
    assert set(read_results(out).method) == {"ddpm", "cbdm-ft"}
    # a rerun reuses both finished cells
    assert main(argv) == 0
    assert "2 already finished" in capsys.readouterr().out
    # so does a rerun after the results folder moved (copied off a cluster, renamed): the parent's
    # model is found where the folder is now, not where it was
    moved = tmp_path / "elsewhere" / "ft"
    moved.parent.mkdir()
    out.rename(moved)
    assert main([str(moved) if a == str(out) else a for a in argv]) == 0
    assert "2 already finished" in capsys.readouterr().out


def test_a_cell_folder_compares_only_the_options_its_method_reads(tmp_path):
    from benchmark.harness.cells import Cell, check_or_write_config

    cfg = Config()
    for method in ("ddpm", "cbdm"):
        check_or_write_config(tmp_path / method, cfg, Cell("digits", "exp", 0.1, method, 0))
        (tmp_path / method / "model.pt").write_bytes(b"")  # the folder now holds work
    other = replace(cfg, method=method_options(cbdm={"tau": 2.0}, cbdm_ft={"start": 0.5}))
    check_or_write_config(tmp_path / "ddpm", other, Cell("digits", "exp", 0.1, "ddpm", 0))  # ddpm reads neither
    with pytest.raises(ConfigError, match=r"method\.cbdm\.tau"):
        check_or_write_config(tmp_path / "cbdm", other, Cell("digits", "exp", 0.1, "cbdm", 0))
