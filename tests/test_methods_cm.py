"""Capacity Manipulation: the class weights, the expert parts, the loss, training, resume and sampling."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from engine_helpers import TINY_MODEL, Interrupting, tiny_config, tiny_data

from benchmark.core.config import MODEL_SIZES
from benchmark.core.errors import ConfigError
from benchmark.engine.backbone import build_unet
from benchmark.engine.checkpoint import latest_checkpoint, load
from benchmark.engine.diffusion import GaussianDiffusion
from benchmark.engine.sampling import generate_eval_set
from benchmark.engine.trainer import load_model, train
from methods import cm_class_weights, cm_terms, get_method, get_method_class, method_options, t2h_targets
from methods.base import Labels
from methods.cm import CMUNet, LowRankExpert, expert_layers

COUNTS = np.array([12, 6, 2])
DIFF = GaussianDiffusion(T=50)
DATA = tiny_data()


def _unet(seed=0):
    torch.manual_seed(seed)
    return build_unet(TINY_MODEL, channels=1, resolution=8, num_classes=3).eval()


def _randomise_experts(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LowRankExpert):
                m.B.copy_(torch.randn(m.B.shape, generator=g) * 0.1)


def _batch():
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    return x0, torch.tensor([0, 1, 2, 0, 2, 1]), DIFF.sample_t(6, generator=g, device="cpu"), torch.randn(6, 1, 8, 8, generator=g)


def test_class_weights_follow_the_formula():
    w_con, w_div = cm_class_weights(COUNTS)
    # C N_y / sum N = 3 [12, 6, 2] / 20;  C / (N_y sum 1/N) with sum 1/N = 1/12 + 1/6 + 1/2 = 3/4
    torch.testing.assert_close(w_con, torch.tensor([1.8, 0.9, 0.3], dtype=torch.float64))
    torch.testing.assert_close(w_div, torch.tensor([1 / 3, 2 / 3, 2.0], dtype=torch.float64))
    ones = torch.ones(4, dtype=torch.float64)
    for w in cm_class_weights([7, 7, 7, 7]):
        torch.testing.assert_close(w, ones)
    w_con, w_div = cm_class_weights([12, 0, 6, 2])  # an empty class: weight 0, the others as without it
    torch.testing.assert_close(w_con, torch.tensor([1.8, 0, 0.9, 0.3], dtype=torch.float64))
    torch.testing.assert_close(w_div, torch.tensor([1 / 3, 0, 2 / 3, 2.0], dtype=torch.float64))
    with pytest.raises(ConfigError, match="training images"):
        cm_class_weights([0, 0])


def test_zero_expert_parts_give_the_plain_unet_and_the_gate_switches_them():
    plain = _unet()
    model = get_method("cm", class_counts=COUNTS).wrap_model(_unet())
    experts = [m for m in model.modules() if isinstance(m, LowRankExpert)]
    assert experts and all(id(m) in {id(x) for x in model.unet.up.modules()} for m in experts)  # the up path only
    base = experts[0].base
    assert experts[0].rank == max(int(0.1 * min(base.in_channels, base.out_channels)), 1)
    x0, y, t, _ = _batch()
    assert torch.equal(model(x0, t, y), plain(x0, t, y))  # B = 0 at init: exactly the plain UNet
    _randomise_experts(model)
    full, general = model(x0, t, y), model(x0, t, y, expert=torch.zeros(6))
    assert torch.equal(general, plain(x0, t, y)) and not torch.allclose(full, general)
    mixed = model(x0, t, y, expert=torch.tensor([1.0, 0, 1, 0, 1, 0]))
    torch.testing.assert_close(mixed[::2], full[::2]) and torch.testing.assert_close(mixed[1::2], general[1::2])
    merged = model.merged_unet()
    assert set(merged.state_dict()) == set(plain.state_dict())
    torch.testing.assert_close(merged(x0, t, y), full, atol=1e-5, rtol=1e-4)  # s B A folded into the weights


def test_cm_term_matches_a_direct_transcription_and_vanishes_on_balanced_counts():
    method = get_method("cm", class_counts=COUNTS)
    model = method.wrap_model(_unet())
    _randomise_experts(model)
    x0, y, t, noise = _batch()
    terms = cm_terms(model, DIFF, x0, y, t, noise, coef=method.coef)
    x_t = DIFF.q_sample(x0, t, noise)
    full, general = model(x_t, t, y), model(x_t, t, y, expert=torch.zeros(6))
    w_con, w_div = cm_class_weights(COUNTS)
    coef = (1.0 * w_con - 0.2 * w_div).float()[y]  # the released config: w_con 1.0, w_div 0.2
    want = coef * (full - general).square().flatten(1).mean(1)
    torch.testing.assert_close(terms["cm"], want, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(terms["ddpm"], (full - noise).square().flatten(1).mean(1), atol=1e-6, rtol=1e-4)
    assert (terms["cm"][y == 0] > 0).all() and (terms["cm"][y == 2] < 0).all()  # head consolidates, tail diverges
    paper = method_options(cm={"con": 1.0, "div": 1.0})  # the paper's single lambda: (w_con - w_div) lambda
    balanced = get_method("cm", class_counts=np.array([5, 5, 5]), options=paper)
    assert balanced.coef.abs().max() < 1e-6  # 1 - 1 up to float64 rounding of C / (N sum 1/N)
    torch.testing.assert_close(cm_terms(model, DIFF, x0, y, t, noise, coef=balanced.coef)["cm"], torch.zeros(6),
                               atol=1e-12, rtol=0)  # fmt: skip
    released = get_method("cm", class_counts=np.array([5, 5, 5])).coef
    torch.testing.assert_close(released, torch.full((3,), 0.8))
    dropped = cm_terms(model, DIFF, x0, torch.full_like(y, 3), t, noise, coef=method.coef, cond=False)
    assert torch.equal(dropped["cm"], torch.zeros(6))
    some = cm_terms(model, DIFF, x0, torch.where(y == 1, 3, y), t, noise, coef=method.coef, cond=y != 1)
    assert torch.equal(some["cm"][y == 1], torch.zeros(2)) and torch.equal(some["cm"][y != 1], terms["cm"][y != 1])


def test_cm_plus_t2h_is_cm_with_the_calibrated_targets():
    m = get_method("cm+t2h", class_counts=COUNTS)
    assert m.name == "cm+t2h" and m.term_names == ("oc", "cm") and m.options.calibration == "t2h"
    assert get_method_class("cm+t2h") is get_method_class("cm")
    assert get_method("cm+t2h+resample", class_counts=COUNTS).term_names == ("oc", "cm")
    with pytest.raises(ConfigError, match="both define the loss"):
        get_method("cm+cbdm", class_counts=COUNTS)
    model = m.wrap_model(_unet())
    x0, y, _, _ = _batch()
    terms = m.loss_terms(model, DIFF, x0, Labels(true=y, model=y, cond=True), torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws: t, noise, then the posterior's uniforms
    t, noise = DIFF.sample_t(6, generator=g, device="cpu"), torch.randn(x0.shape, generator=g)
    u = torch.rand(6, generator=g)
    freq = torch.tensor(COUNTS / COUNTS.sum(), dtype=torch.float32)
    target, _ = t2h_targets(x0, DIFF.q_sample(x0, t, noise), t, noise, y, DIFF, class_freq=freq, gate="t2h", u=u)
    want = (model(DIFF.q_sample(x0, t, noise), t, y) - target).square().flatten(1).mean(1)
    torch.testing.assert_close(terms["oc"], want, atol=1e-6, rtol=1e-4)
    for bad in (dict(parts=("left",)), dict(calibration="x"), dict(rank_ratio=0.0)):
        with pytest.raises(ConfigError, match=r"method\.cm\."):
            get_method("cm", class_counts=COUNTS, options=method_options(cm=bad))


def _train(run_dir, name="cm", method=None, cfg=None):
    cfg = cfg or tiny_config()
    method = method or get_method(name, class_counts=DATA.counts, options=cfg.method)
    return train(cfg=cfg, dataset=DATA, method=method, run_dir=run_dir, seed=0, device="cpu", progress=False)


@pytest.mark.parametrize("name", ["cm", "cm+t2h"])
def test_train_resume_and_sample_through_model_pt(tmp_path, name):
    full = _train(tmp_path / "full", name)
    method = get_method(name, class_counts=DATA.counts)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", method=Interrupting(method, at=4))
    resumed = _train(tmp_path / "cut", name)
    a, b = load(full), load(resumed)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    # model.pt is the plain UNet: the EMA of the last checkpoint with s B A folded in
    ckpt = load(latest_checkpoint(tmp_path / "full" / "checkpoints"))
    assert any(k.endswith(".A") for k in ckpt["model"]) and not any(k.endswith(".A") for k in a["ema"])
    wrapped = method.wrap_model(build_unet(TINY_MODEL, channels=1, resolution=8, num_classes=3))
    wrapped.load_state_dict(ckpt["ema"])
    expert = [m for m in wrapped.modules() if isinstance(m, LowRankExpert)]
    assert any(m.B.abs().sum() > 0 for m in expert)  # the expert parts trained
    for k, v in wrapped.merged_unet().state_dict().items():
        torch.testing.assert_close(a["ema"][k], v)
    model, info = load_model(full, "cpu")
    assert info["method"] == name and not isinstance(model, CMUNet)
    cfg = tiny_config()
    generate_eval_set(model, GaussianDiffusion.from_config(cfg.diffusion), num_classes=3, n_per_class=2,
                      cfg=replace(cfg.sample, guidance=(1.5,)), seed=0, out_path=tmp_path / "samples.npz",
                      device="cpu", progress=False)  # fmt: skip
    with np.load(tmp_path / "samples.npz") as s:
        assert s["images"].shape == (6, 1, 8, 8) and s["images"].dtype == np.uint8


# ---------------------------------------------------------------- the expert parts as released


def test_paper_unet_gets_the_released_27_expert_layers_and_3129984_parameters():
    # model_cm.py (ImbDiff-CM as vendored): Conv2d_LoRA on the up path's ResBlock_CM block1 / block2 convs and
    # UpSample_CM's conv, r = max(int(0.1 * min(c_in, c_out)), 1), A [r k, c_in k], B [c_out k, r k]
    unet = build_unet(MODEL_SIZES["paper"], channels=3, resolution=32, num_classes=100)
    before = sum(p.numel() for p in unet.parameters())
    model = CMUNet(unet, parts=("up",), rank_ratio=0.1, scale=1.0)
    experts = expert_layers(model)
    assert len(experts) == 27 and sum(p.numel() for p in model.parameters()) - before == 3_129_984
    for e in experts:
        c_out, c_in, k, _ = e.base.weight.shape
        r = max(int(0.1 * min(c_in, c_out)), 1)
        assert k == 3 and e.rank == r and e.A.shape == (r * k, c_in * k) and e.B.shape == (c_out * k, r * k)
        assert not e.B.any()
    # kaiming_normal_(A, a=sqrt(5)): std = sqrt(2 / (1 + 5)) / sqrt(fan_in), fan_in = c_in k (A's second dim)
    big = max(experts, key=lambda e: e.A.numel())
    want = (1 / 3) ** 0.5 / big.A.shape[1] ** 0.5
    assert abs(big.A.std().item() / want - 1) < 0.05 and abs(big.A.mean().item()) < 0.1 * want
    names = {n for n, m in model.named_modules() if isinstance(m, LowRankExpert)}
    assert not any("shortcut" in n or "attn" in n or "temb" in n for n in names)


def test_expert_forward_is_the_released_convlora():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 12, 3, padding=1)
    expert = LowRankExpert(conv, rank_ratio=0.1, scale=1.0, gate=CMUNet.__init__.__globals__["_Gate"]())
    with torch.no_grad():
        expert.B.normal_()
    x = torch.randn(2, 8, 5, 5)
    want = torch.nn.functional.conv2d(x, conv.weight + (expert.B @ expert.A).view(conv.weight.shape), conv.bias,
                                      padding=1)  # Conv2d_LoRA.forward
    torch.testing.assert_close(expert(x), want)
    assert expert.rank == 1 and expert.A.shape == (3, 24)  # int(0.8) = 0 -> 1: truncation, then at least one
    assert get_method("cm", class_counts=COUNTS).options.scale == 1.0  # the released forward scales by nothing
