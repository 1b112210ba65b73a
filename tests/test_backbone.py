import pytest
import torch
from engine_helpers import TINY_MODEL

from benchmark.core.config import MODEL_SIZES
from benchmark.engine.backbone import UNet, _groups, build_unet, count_parameters


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
    assert not torch.allclose(model(x, t, torch.tensor([0, 1])), before)


def test_group_norm_groups_fit_small_widths():
    for c in (4, 8, 12, 16, 24, 48, 128, 384):
        g = _groups(c)
        assert c % g == 0 and 1 <= g <= 32
    assert _groups(128) == 32
