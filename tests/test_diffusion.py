import torch
from engine_helpers import TINY_MODEL

from benchmark.engine.backbone import build_unet
from benchmark.engine.diffusion import GaussianDiffusion, guided_eps


def test_schedule_and_inverse():
    d = GaussianDiffusion(T=1000, beta_1=1e-4, beta_T=0.02)
    assert d.betas[0].item() == 1e-4 and abs(d.betas[-1].item() - 0.02) < 1e-12
    assert abs(d.alphas_bar[-1].item() - 4.04e-5) < 1e-6  # the well-known DDPM value
    x0, noise = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    x_t = d.q_sample(x0, t, noise)
    assert torch.allclose(d.predict_x0(x_t, t, noise), x0, atol=1e-3)
    assert torch.allclose(d.eps_from_x0(x_t, t, x0), noise, atol=1e-3)


def test_guided_eps_is_one_batched_forward_and_matches_formula():
    torch.manual_seed(0)
    model = build_unet(TINY_MODEL, channels=1, resolution=8, num_classes=3).eval()
    calls = []
    model.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([4, 9]), torch.tensor([0, 2])
    out = guided_eps(model, x, t, y, 1.5)
    assert calls == [4]
    with torch.no_grad():
        ref = 2.5 * model(x, t, y) - 1.5 * model(x, t, torch.tensor([3, 3]))
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(guided_eps(model, x, t, y, 0.0), model(x, t, y), atol=1e-6)
