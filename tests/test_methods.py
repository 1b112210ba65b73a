import numpy as np
import pytest
import torch
from engine_helpers import TINY_MODEL

from benchmark.core.errors import ConfigError
from benchmark.engine.backbone import build_unet
from benchmark.engine.batches import BatchDrawer
from benchmark.engine.diffusion import GaussianDiffusion
from methods import (
    METHODS,
    Method,
    cbdm_loss,
    class_weights,
    get_method,
    get_method_class,
    method_options,
    resample_probs,
)

COUNTS = np.array([12, 6, 2])
DIFF = GaussianDiffusion(T=50)


def _model(seed=0):
    """A tiny UNet moved away from the official near-zero start, as a trained one is (outputs of order 1,
    so that every term and its stop-gradients weigh in the gradient)."""
    torch.manual_seed(seed)
    model = build_unet(TINY_MODEL, channels=1, resolution=8, num_classes=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_registry_rejects_duplicates_and_lists_names():
    with pytest.raises(ValueError, match="already registered"):
        METHODS.register("ddpm", Method)
    with pytest.raises(ConfigError, match="Valid methods: cbdm, cbdm-ft, cm, coral, ddpm, resample, reweight, t2h"):
        get_method("cbmd", class_counts=COUNTS)


def test_composition_and_conflicts():
    m = get_method("cbdm+resample", class_counts=COUNTS, options=method_options(resample={"q": 0.0}))
    assert m.name == "cbdm+resample" and m.official_guidance == 1.6 and m.term_names == ("ddpm", "reg", "com")
    assert torch.allclose(m.class_probs(0, 10), torch.full((3,), 1 / 3))
    assert get_method("reweight+resample", class_counts=COUNTS).sample_weights(torch.tensor([2])) is not None
    with pytest.raises(ConfigError, match="both define the loss"):
        _two_objectives()
    with pytest.raises(ConfigError, match="repeats"):
        get_method("cbdm+cbdm", class_counts=COUNTS)
    assert get_method_class("cbdm") is METHODS.get("cbdm")
    assert get_method_class("cbdm+resample").__name__ == "Composite"
    with pytest.raises(ConfigError, match="Valid methods"):
        get_method_class("cbdm+nope")


def _two_objectives():
    from methods.registry import Composite

    a = get_method("cbdm", class_counts=COUNTS)
    b = type("Other", (Method,), {"name": "other", "loss_terms": lambda *a: {}})(class_counts=COUNTS)
    Composite(parts=[a, b], class_counts=COUNTS)


def test_official_guidance():
    assert get_method("ddpm", class_counts=COUNTS).official_guidance == 0.8
    assert get_method("cbdm", class_counts=COUNTS).official_guidance == 1.6
    assert get_method("reweight", class_counts=COUNTS).official_guidance == 0.8


def test_cbdm_matches_direct_transcription_with_gradients():
    tau, gamma = 0.7, 0.25
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    y, y_prime = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1, 0])
    t, noise = torch.tensor([3, 17, 30, 49]), torch.randn(4, 1, 8, 8)

    model = _model()
    terms = cbdm_loss(model, DIFF, x0, y, t, noise, y_prime, tau=tau, gamma=gamma)
    loss = sum(v.mean() for v in terms.values())
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]

    ref_model = _model()  # the formula of REFERENCE.md section 3, written out with two forwards
    ab = DIFF.alphas_bar.float()[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    e_y, e_yp = ref_model(x_t, t, y), ref_model(x_t, t, y_prime)
    w = tau * t.float() / DIFF.T
    mse = lambda a, b: ((a - b) ** 2).mean(dim=(1, 2, 3))
    l_ddpm, l_reg, l_com = mse(e_y, noise), w * mse(e_y, e_yp.detach()), w * mse(e_y.detach(), e_yp)
    ref = l_ddpm.mean() + l_reg.mean() + gamma * l_com.mean()
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-6)
    for k, v in zip(("ddpm", "reg"), (l_ddpm, l_reg)):
        assert torch.allclose(terms[k], v, atol=1e-6)
    assert torch.allclose(terms["com"], gamma * l_com, atol=1e-6)
    for g, p in zip(grads, ref_model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5, rtol=1e-4)

    # the stop-gradients matter: dropping them changes the gradient
    no_sg_model = _model()
    e_y, e_yp = no_sg_model(x_t, t, y), no_sg_model(x_t, t, y_prime)
    (mse(e_y, noise).mean() + (w * mse(e_y, e_yp)).mean() + gamma * (w * mse(e_y, e_yp)).mean()).backward()
    assert not all(torch.allclose(g, p.grad, atol=1e-7) for g, p in zip(grads, no_sg_model.parameters()))


def test_cbdm_no_regulariser_without_labels():
    model, x0 = _model(), torch.rand(4, 1, 8, 8)
    t, noise, yp = torch.tensor([5, 6, 7, 8]), torch.randn(4, 1, 8, 8), torch.tensor([1, 0, 0, 2])
    null = torch.full((4,), 3)
    off = cbdm_loss(model, DIFF, x0, null, t, noise, yp, cond=False)
    assert off["reg"].abs().sum() == 0 and off["com"].abs().sum() == 0
    mask = torch.tensor([True, False, True, False])
    y = torch.where(mask, torch.tensor([0, 1, 2, 0]), 3)
    part = cbdm_loss(model, DIFF, x0, y, t, noise, yp, cond=mask)
    assert (part["reg"][~mask] == 0).all() and (part["reg"][mask] > 0).all()


def test_cbdm_priors():
    train = get_method("cbdm", class_counts=COUNTS)
    assert torch.allclose(train.prior, torch.tensor([0.6, 0.3, 0.1]))
    uni = get_method("cbdm", class_counts=COUNTS, options=method_options(cbdm={"prior": "uniform"}))
    draws = uni.draw_y_prime(30000, generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert np.allclose(np.bincount(draws.numpy()) / 30000, 1 / 3, atol=0.015)
    with pytest.raises(ConfigError, match="method.cbdm.prior"):
        get_method("cbdm", class_counts=COUNTS, options=method_options(cbdm={"prior": "flat"}))


def test_reweight_weights():
    w = class_weights(COUNTS, scheme="inverse")
    assert np.isclose((w * COUNTS).sum() / COUNTS.sum(), 1.0)
    assert np.allclose(w * COUNTS, (w * COUNTS)[0])  # every class carries the same total weight
    beta = 0.9
    e = class_weights(COUNTS, scheme="effective", beta=beta)
    raw = (1 - beta) / (1 - beta ** COUNTS)
    assert np.allclose(e / e[0], raw / raw[0]) and np.isclose((e * COUNTS).sum(), COUNTS.sum())
    m = get_method("reweight", class_counts=COUNTS)
    assert torch.allclose(m.sample_weights(torch.tensor([0, 2])), torch.tensor(w[[0, 2]], dtype=torch.float32))


def test_progressive_resampling_is_kangs_rule():
    # Kang et al. 2020, progressively-balanced sampling: p_j(t) = (1 - t/T) p_j^IB + (t/T) p_j^CB, with
    # p^IB = n_j / sum n (instance-balanced) and p^CB = 1/C (class-balanced; here the 3 non-empty classes)
    counts = np.array([100, 25, 4, 0])
    p_ib = np.array([100, 25, 4, 0]) / 129
    p_cb = np.array([1, 1, 1, 0]) / 3
    m = get_method("resample", class_counts=counts, options=method_options(resample={"schedule": "progressive"}))
    for step, total in [(0, 400), (100, 400), (300, 400)]:
        s = step / total
        expect = (1 - s) * p_ib + s * p_cb
        assert np.allclose(m.class_probs(step, total).numpy(), expect, atol=1e-7)
    assert np.allclose(m.class_probs(400, 400).numpy(), p_cb, atol=1e-7)


def test_resample_frequencies():
    counts = np.array([100, 25, 4, 0])
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    drawer = BatchDrawer(labels, 4)
    gen = torch.Generator().manual_seed(0)
    for q, expect in [(0.0, [1 / 3, 1 / 3, 1 / 3, 0]), (0.5, np.sqrt([100, 25, 4, 0]) / 17)]:
        m = get_method("resample", class_counts=counts, options=method_options(resample={"q": q}))
        idx = drawer.draw(60000, m.class_probs(0, 1), gen)
        freq = np.bincount(labels[idx].numpy(), minlength=4) / 60000
        assert np.allclose(freq, expect, atol=0.01)
    prog = get_method("resample", class_counts=counts,
                      options=method_options(resample={"schedule": "progressive-exponent"}))  # fmt: skip
    assert torch.allclose(prog.class_probs(0, 10), resample_probs(counts, 1.0))
    assert torch.allclose(prog.class_probs(5, 10), resample_probs(counts, 0.5))  # q moves, not p
    assert torch.allclose(prog.class_probs(10, 10), resample_probs(counts, 0.0))
    uniform_idx = drawer.draw(60000, None, gen)  # None: uniform over instances
    assert np.allclose(np.bincount(labels[uniform_idx].numpy(), minlength=4) / 60000, counts / 129, atol=0.01)


def test_a_method_table_is_copied_to_a_device_once():
    m = get_method("reweight", class_counts=COUNTS)
    first = m.on(m.weights, torch.device("cpu"))
    assert m.on(m.weights, torch.device("cpu")) is first and torch.equal(first, m.weights)
    assert torch.equal(m.sample_weights(torch.tensor([0, 1])), m.weights[[0, 1]])
