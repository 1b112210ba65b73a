import math

import pytest
import torch
from engine_helpers import TINY_MODEL

from benchmark.core.config import MODEL_SIZES
from benchmark.engine.backbone import AttnBlock, ResBlock, UNet, _groups, build_unet, count_parameters


def test_paper_size_has_35_7m_parameters():
    model = build_unet(MODEL_SIZES["paper"], channels=3, resolution=32, num_classes=10)
    assert abs(count_parameters(model) - 35.7e6) < 0.1e6


@pytest.mark.parametrize("channels,resolution", [(1, 8), (3, 16), (1, 28), (3, 32), (1, 7)])
def test_any_channels_and_resolution(channels, resolution):
    model = build_unet(TINY_MODEL, channels=channels, resolution=resolution, num_classes=4)
    x = torch.randn(2, channels, resolution, resolution)
    eps, bottleneck = model(x, torch.tensor([0, 9]), torch.tensor([1, 4]), return_bottleneck=True)
    assert eps.shape == x.shape
    assert bottleneck.shape[:2] == (2, model.bottleneck_channels)


def test_null_label_has_no_class_embedding():
    torch.manual_seed(0)
    model = UNet(in_channels=1, resolution=8, num_classes=3, ch=8, ch_mult=(1, 2), attn_resolutions=(4,),
                 num_res_blocks=1, dropout=0.0).eval()
    x, t, null = torch.randn(2, 1, 8, 8), torch.tensor([3, 7]), torch.tensor([3, 3])
    before = model(x, t, null)
    with torch.no_grad():
        model.class_emb.weight.add_(1.0)  # moves every row, the null one included
    assert torch.equal(model(x, t, null), before)  # the null row is never used
    # a real label does change the output (relative to the output's own scale, ~1e-5 when fresh)
    assert not torch.allclose(model(x, t, torch.tensor([0, 1])), before, rtol=1e-3, atol=0)


def test_group_norm_groups_fit_small_widths():
    for c in (4, 8, 12, 16, 24, 48, 128, 384):
        g = _groups(c)
        assert c % g == 0 and 1 <= g <= 32
    assert _groups(128) == 32


# ---------------------------------------------------------------- the official initialisation
# Transcribed from the official DDPM PyTorch port that CBDM, OC (T2H) and CORAL share: every Conv2d and
# Linear xavier_uniform_ (gain 1) with zero bias; ResBlock.initialize then sets gain 1e-5 on block2's conv
# (the residual branch's last layer) and UNet.initialize gain 1e-5 on the output conv.  AttnBlock gives its
# output projection gain 1e-5, but the ResBlock holding it re-initialises all of its convolutions (the
# attention block's included) with gain 1 afterwards, so gain 1 is what the official model trains from.
# The label embedding is not touched (PyTorch's N(0, 1)).


def _official_gain(name: str, model: UNet) -> float:
    module = model.get_submodule(name.rsplit(".", 1)[0])
    if module is model.tail[-1]:
        return 1e-5
    for m in model.modules():
        if isinstance(m, ResBlock) and module is m.block2[-1]:
            return 1e-5
    return 1.0


def _check_xavier(w: torch.Tensor, gain: float) -> None:
    receptive = w[0, 0].numel() if w.dim() > 2 else 1
    bound = gain * math.sqrt(6.0 / ((w.shape[0] + w.shape[1]) * receptive))
    assert w.abs().max() <= bound * (1 + 1e-6)
    if w.numel() >= 2000:  # a uniform(-bound, bound) sample: its spread, not just its range
        assert w.abs().max() >= 0.95 * bound
        assert abs(w.std().item() / (bound / math.sqrt(3)) - 1) < 0.1


def test_initialisation_is_the_official_one():
    torch.manual_seed(0)
    model = build_unet(MODEL_SIZES["small"], channels=3, resolution=16, num_classes=5)
    seen = 0
    for name, p in model.named_parameters():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            if name.endswith("bias"):
                assert torch.count_nonzero(p) == 0, name
                continue
            if name.endswith("qkv.weight"):  # fused q, k, v: three official C -> C convolutions
                for part in p.chunk(3):
                    _check_xavier(part, 1.0)
            else:
                _check_xavier(p, _official_gain(name, model))
            seen += 1
    assert seen > 20
    res = [m for m in model.modules() if isinstance(m, ResBlock)]
    attn = [m for m in model.modules() if isinstance(m, AttnBlock)]
    assert res and attn
    assert all(m.block2[-1].weight.abs().max() < 1e-5 for m in res)
    assert all(m.proj.weight.abs().max() > 1e-2 for m in attn)  # gain 1, as the official model runs
    emb = model.class_emb.weight[:-1]
    assert abs(emb.std().item() - 1) < 0.1  # N(0, 1), untouched


def test_fresh_paper_unet_predicts_almost_zero():
    torch.manual_seed(0)
    model = build_unet(MODEL_SIZES["paper"], channels=3, resolution=32, num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        eps = model(x, torch.tensor([0, 10, 500, 999]), torch.tensor([0, 3, 9, 10]))
    assert eps.abs().mean() < 1e-4  # PyTorch's default initialisation gave about 0.27
