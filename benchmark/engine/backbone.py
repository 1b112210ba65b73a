"""Class-conditional UNet in the DDPM CIFAR design (Ho et al. 2020; the CBDM / T2H / CORAL backbone).

Sinusoidal time embedding -> MLP (4*ch); a class embedding of the same width is added to it.
Index ``num_classes`` is the null label used for classifier-free guidance: it contributes no
class embedding at all (its row is masked out), exactly like "no label" in the official code.
Works for any channel count and resolution (odd sizes such as 7x7 included: upsampling goes
to the size of the matching skip connection rather than a fixed factor of two).

Initialisation (:func:`init_official`) is the one the official CBDM / T2H / CORAL code runs (the
DDPM PyTorch port all three share): every convolution and linear layer xavier-uniform with zero
bias, then gain 1e-5 on the last convolution of each residual branch and on the output
convolution, so a fresh model predicts almost 0.  The class embedding keeps PyTorch's N(0, 1).
The attention output projection: the official attention block sets gain 1e-5 on it, but the
residual block that holds the attention block re-initialises every convolution inside itself
afterwards, so the projection the official model trains from has gain 1; we follow what runs.
Our fused q/k/v convolution is initialised as the three separate C -> C convolutions it replaces.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.core.config import ModelConfig


def _groups(channels: int) -> int:
    # 32 groups as in the official model; fewer for the small CPU sizes (at least 4 channels a group)
    g = max(1, min(32, channels // 4))
    while channels % g:
        g -= 1
    return g


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels)


# gains of the official initialisation (see the module docstring)
RESIDUAL_OUT_GAIN = 1e-5  # last conv of each residual branch (after dropout)
OUTPUT_GAIN = 1e-5  # the output convolution
ATTN_PROJ_GAIN = 1.0  # attention output projection: 1e-5 is overwritten by the enclosing block's re-init


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of (possibly fractional) timesteps."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    def __init__(self, *, in_ch: int, out_ch: int, tdim: int, dropout: float, attn: bool) -> None:
        super().__init__()
        self.block1 = nn.Sequential(_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.temb_proj = nn.Sequential(nn.SiLU(), nn.Linear(tdim, out_ch))
        self.block2 = nn.Sequential(
            _norm(out_ch), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        )
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = AttnBlock(out_ch) if attn else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        h = h + self.temb_proj(temb)[:, :, None, None]
        h = self.block2(h)
        return self.attn(h + self.shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels (as in the DDPM CIFAR model)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int,
        resolution: int,
        num_classes: int,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 2, 2, 2),
        attn_resolutions: tuple[int, ...] = (16,),
        num_res_blocks: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.num_classes = num_classes
        self.ch = ch
        tdim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        # row num_classes is the null label; it is masked to zero in forward()
        self.class_emb = nn.Embedding(num_classes + 1, tdim)
        with torch.no_grad():
            self.class_emb.weight[num_classes].zero_()

        self.head = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        chans = [ch]
        cur_ch, size = ch, resolution
        for level, mult in enumerate(ch_mult):
            out_ch = ch * mult
            for _ in range(num_res_blocks):
                self.down.append(
                    ResBlock(in_ch=cur_ch, out_ch=out_ch, tdim=tdim, dropout=dropout, attn=size in attn_resolutions)
                )
                cur_ch = out_ch
                chans.append(cur_ch)
            if level != len(ch_mult) - 1:
                self.down.append(nn.Conv2d(cur_ch, cur_ch, 3, stride=2, padding=1))
                chans.append(cur_ch)
                size = (size + 1) // 2
        self.mid1 = ResBlock(in_ch=cur_ch, out_ch=cur_ch, tdim=tdim, dropout=dropout, attn=True)
        self.mid2 = ResBlock(in_ch=cur_ch, out_ch=cur_ch, tdim=tdim, dropout=dropout, attn=False)
        self.bottleneck_channels = cur_ch

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            out_ch = ch * mult
            for _ in range(num_res_blocks + 1):
                self.up.append(
                    ResBlock(
                        in_ch=cur_ch + chans.pop(), out_ch=out_ch, tdim=tdim, dropout=dropout,
                        attn=size in attn_resolutions,
                    )
                )
                cur_ch = out_ch
            if level != 0:
                self.up.append(nn.Conv2d(cur_ch, cur_ch, 3, padding=1))  # after a nearest upsample
                size = size * 2
        self.tail = nn.Sequential(_norm(cur_ch), nn.SiLU(), nn.Conv2d(cur_ch, in_channels, 3, padding=1))
        init_official(self)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, return_bottleneck: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        temb = self.time_mlp(timestep_embedding(t, self.ch))
        keep = (y != self.num_classes).unsqueeze(1).to(temb.dtype)
        temb = temb + self.class_emb(y) * keep

        h = self.head(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        h = self.mid2(self.mid1(h, temb), temb)
        bottleneck = h
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), temb)
            else:
                h = layer(F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        out = self.tail(h)
        return (out, bottleneck) if return_bottleneck else out


@torch.no_grad()
def init_official(model: UNet) -> None:
    """The official DDPM-port initialisation (module docstring); draws from the global RNG."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, AttnBlock):
            c = m.proj.out_channels
            for i in range(3):  # q, k, v: each a C -> C convolution in the official model
                nn.init.xavier_uniform_(m.qkv.weight[i * c : (i + 1) * c])
            nn.init.xavier_uniform_(m.proj.weight, gain=ATTN_PROJ_GAIN)
        elif isinstance(m, ResBlock):
            nn.init.xavier_uniform_(m.block2[-1].weight, gain=RESIDUAL_OUT_GAIN)
    nn.init.xavier_uniform_(model.tail[-1].weight, gain=OUTPUT_GAIN)


def build_unet(model_cfg: ModelConfig, *, channels: int, resolution: int, num_classes: int) -> UNet:
    return UNet(
        in_channels=channels,
        resolution=resolution,
        num_classes=num_classes,
        ch=model_cfg.ch,
        ch_mult=tuple(model_cfg.ch_mult),
        attn_resolutions=tuple(model_cfg.attn_resolutions),
        num_res_blocks=model_cfg.num_res_blocks,
        dropout=model_cfg.dropout,
    )


def unet_kwargs(model: UNet, model_cfg: ModelConfig) -> dict:
    """Plain-dict constructor arguments, stored next to weights so load needs no config tree."""
    return {
        "in_channels": model.in_channels,
        "resolution": model.resolution,
        "num_classes": model.num_classes,
        "ch": model_cfg.ch,
        "ch_mult": list(model_cfg.ch_mult),
        "attn_resolutions": list(model_cfg.attn_resolutions),
        "num_res_blocks": model_cfg.num_res_blocks,
        "dropout": model_cfg.dropout,
    }


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
