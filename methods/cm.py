"""Capacity Manipulation (CM; Hong et al., ICLR 2026): low-rank expert parts that hold the minority classes.

Each chosen weight of the UNet is split into a general part and a low-rank expert part,
W = W_g + s (B @ A).view(W.shape), ConvLoRA as released:

    eps_{g+e}(x_t, t, y)   the full model (general + expert parts)
    eps_g(x_t, t, y)       the general parts alone (B A switched off)
    w_con[y] = C N_y / sum_c N_c            w_div[y] = C / (N_y sum_c 1/N_c)       (both 1 when balanced)
    L = ||eps_{g+e} - eps||^2 + (a_con w_con[y] - a_div w_div[y]) ||eps_{g+e} - eps_g||^2

The consolidation part (a_con w_con) pulls the full model onto the general parts for frequent
classes, so their knowledge lives in W_g; the diversity part (a_div w_div) pushes the two apart
for rare classes, so the expert parts carry them.  Both predictions come from one forward over
the doubled batch: every expert layer multiplies its delta-W convolution by a per-sample gate (1 for
the first half, 0 for the second).  The gradient flows through both predictions.

The expert layers follow the released model code (``model/model_cm.py``, ``Conv2d_LoRA``, ``ResBlock_CM``,
``UpSample_CM``; read in the copy vendored under Duckduck-05/longtail_server_runpack, see
docs/fidelity.md): only the two 3x3 convolutions of each residual block of the chosen part and its
up- / down-sampling convolutions (27 layers on the paper UNet's up path; no 1x1 shortcut, attention or
time projection); rank r = max(int(ratio * min(c_in, c_out)), 1); A [r k, c_in k] from
kaiming_normal_(a=sqrt(5)) on A's own shape, B [c_out k, r k] zero; 3,129,984 extra parameters on the
CIFAR-100 paper UNet.  The released forward adds (B @ A).view(W.shape) unscaled: its config's
``lora_scaling: 0.5`` is stored on the layer and never read, so ``method.cm.scale`` defaults to 1.

Released settings (``configs/cifar100lt_ir100/cm.yaml``): rank ratio 0.1 on ``up``, ``w_con`` 1.0 and
``w_div`` 0.2, 300k steps x 64, DDIM skip 20 with omega 1.5, and T2H's oriented calibration switched
on (``transfer_mode: t2h``), so the published CM is OC+CM: here ``cm+t2h`` (or
``method.cm.calibration=t2h``).  The paper writes one weight lambda for the whole term,
(w_con - w_div) lambda, which vanishes on balanced data; the code passes two coefficients, 1.0 and
0.2, so on balanced data the released term is 0.8 ||eps_{g+e} - eps_g||^2 (it pulls the expert parts
towards zero).  We follow the code (``method.cm.con`` = 1.0, ``method.cm.div`` = 0.2); ``con =
div = lambda`` is the paper's form.  The loss file (``imbdiff_cm/diffusion_cm.py``) is listed only
by checksum in every copy we could read: how it combines the two coefficients, and its stop-gradient
choice (none here), are ours, written from the paper.

Sampling uses the full model: ``export_model`` folds s B A into W_g, so ``model.pt`` is a plain
UNet with the same forward (no inference overhead, as in the paper).  Label-dropped
(unconditional) samples have no class count: they get no CM term.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from benchmark.core.config import Options, bounded, choice
from benchmark.core.errors import ConfigError
from benchmark.engine.backbone import ResBlock, UNet

from .base import Method, draw_t_noise, mse_per_sample
from .registry import METHODS
from .t2h import GATE_CHOICES, t2h_targets

PARTS = ("down", "mid", "up")


@dataclass(frozen=True)
class CMOptions(Options):
    # W = W_g + scale * (B @ A).view(W.shape) on these UNet blocks' 3x3 convs (down | mid | up),
    # rank = max(int(rank_ratio * min(c_in, c_out)), 1)
    parts: tuple[str, ...] = ("up",)
    rank_ratio: float = bounded(0.1, gt=0.0)
    scale: float = bounded(1.0, gt=0.0)  # the released forward adds B @ A unscaled (its config's 0.5 is never read)
    con: float = bounded(1.0, ge=0.0)  # weight of the consolidation part (a_con w_con[y]); the released config's w_con
    div: float = bounded(0.2, ge=0.0)  # weight of the diversity part (a_div w_div[y]); the released config's w_div
    calibration: str = choice("none", {"none": "the plain noise target",
                                       "t2h": "T2H's targets inside CM's loss: the released recipe, cm+t2h"})
    gate: str = choice("t2h", GATE_CHOICES)  # T2H's gate where calibration is t2h
    legacy = {"cm_parts": "parts", "cm_rank_ratio": "rank_ratio", "cm_scale": "scale", "cm_con": "con",
              "cm_div": "div", "cm_calibration": "calibration", "t2h_gate": "gate"}  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.parts or any(p not in PARTS for p in self.parts):
            raise ConfigError(f"method.cm.parts={','.join(self.parts)!r}: use some of {', '.join(PARTS)}, "
                              "e.g. --set method.cm.parts=up")  # fmt: skip


def cm_class_weights(counts) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_con, w_div) per class: C N_y / sum N_c and C / (N_y sum_c 1/N_c) (float64).

    A class without training images is never drawn: it gets 0 and C, the sums count the others."""
    n = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
    present = n > 0
    if not present.any():
        raise ConfigError("CM needs training images (every class count is 0)")
    C, safe = int(present.sum()), torch.where(present, n, 1.0)
    w_con = torch.where(present, C * n / n.sum(), 0.0)
    w_div = torch.where(present, C / (safe * (1.0 / safe[present]).sum()), 0.0)
    return w_con, w_div


class _Gate:
    """Shared by the expert layers of one model: None = experts on, else a per-sample 0/1 tensor."""

    value: torch.Tensor | None = None


class LowRankExpert(nn.Module):
    """A 3x3 Conv2d plus its expert part, ConvLoRA as released (``Conv2d_LoRA`` in model_cm.py):
    A [r k, c_in k], B [c_out k, r k], delta W = s (B @ A).view(W.shape); rank r = max(int(ratio *
    min(c_in, c_out)), 1) (truncated); A from kaiming_normal_(a=sqrt(5)) on A's own shape (fan-in c_in k),
    B zero, so the model starts as the plain UNet."""

    def __init__(self, base: nn.Conv2d, *, rank_ratio: float, scale: float, gate: _Gate) -> None:
        super().__init__()
        if base.kernel_size[0] != base.kernel_size[1] or base.groups != 1:
            raise ConfigError(f"CM's expert parts need a square, ungrouped convolution, got {base}")
        self.base, self.scale, self.gate = base, float(scale), gate
        c_in, c_out, k = base.in_channels, base.out_channels, base.kernel_size[0]
        self.rank = max(int(rank_ratio * min(c_in, c_out)), 1)
        self.A = nn.Parameter(torch.empty(self.rank * k, c_in * k, device=base.weight.device))
        self.B = nn.Parameter(torch.zeros(c_out * k, self.rank * k, device=base.weight.device))
        nn.init.kaiming_normal_(self.A, a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        """s (B @ A) viewed as the base weight [c_out, c_in, k, k]."""
        return self.scale * (self.B @ self.A).view(self.base.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.base
        delta = self.delta_weight().to(conv.weight.dtype)
        g = self.gate.value
        if g is None:  # the released forward: one convolution with W + delta W
            return conv._conv_forward(x, conv.weight + delta, conv.bias)
        part = conv._conv_forward(x, delta, None) * g.to(x.dtype).view(-1, 1, 1, 1)
        return conv(x) + part

    def merged(self) -> nn.Module:
        layer = copy.deepcopy(self.base)
        with torch.no_grad():
            layer.weight.add_(self.delta_weight().to(layer.weight.dtype))
        return layer


class CMUNet(nn.Module):
    """The UNet with low-rank expert parts; ``forward(..., expert=gate)`` switches them per sample."""

    def __init__(self, unet: UNet, *, parts: tuple[str, ...], rank_ratio: float, scale: float) -> None:
        super().__init__()
        self.unet, self.gate = unet, _Gate()
        self.num_classes, self.bottleneck_channels = unet.num_classes, unet.bottleneck_channels
        blocks = {"down": unet.down, "mid": [unet.mid1, unet.mid2], "up": unet.up}
        for part in parts:
            _add_experts(blocks[part], rank_ratio=rank_ratio, scale=scale, gate=self.gate)

    def forward(self, x, t, y, *, expert: torch.Tensor | None = None, return_bottleneck: bool = False):
        self.gate.value = expert
        try:
            return self.unet(x, t, y, return_bottleneck=return_bottleneck)
        finally:
            self.gate.value = None

    def merged_unet(self) -> UNet:
        """A plain UNet computing the full model's forward (s B A folded into each weight)."""
        plain = copy.deepcopy(self.unet)
        for module in list(plain.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, LowRankExpert):
                    setattr(module, child_name, child.merged())
        return plain


def _add_experts(blocks, **kw) -> None:
    """The released layer set of a part: each residual block's two 3x3 convolutions (block1, block2) and
    the part's up- / down-sampling convolutions; not the 1x1 shortcuts, attention or time projections."""
    for i, block in enumerate(blocks):
        if isinstance(block, nn.Conv2d):  # the sampling convolution between two levels
            blocks[i] = LowRankExpert(block, **kw)
        elif isinstance(block, ResBlock):
            for seq in (block.block1, block.block2):
                seq[-1] = LowRankExpert(seq[-1], **kw)


def expert_layers(model: nn.Module) -> list[LowRankExpert]:
    return [m for m in model.modules() if isinstance(m, LowRankExpert)]


def cm_terms(
    model: nn.Module, diffusion, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, *,
    coef: torch.Tensor, cond=True, target: torch.Tensor | None = None, name: str = "ddpm",
) -> dict[str, torch.Tensor]:
    """Per-sample {name: ||eps_{g+e} - target||^2, 'cm': coef[y] ||eps_{g+e} - eps_g||^2}.

    ``coef`` [C] is a_con w_con - a_div w_div; ``target`` defaults to the noise (T2H passes its
    calibrated one); samples whose label was dropped (``cond``) get no CM term.
    """
    target = noise if target is None else target
    x_t = diffusion.q_sample(x0, t, noise)
    B = x0.shape[0]
    if cond is False:  # a whole unconditional batch: no class, no CM term, one plain forward
        eps = model(x_t, t, y)
        return {name: mse_per_sample(eps, target), "cm": torch.zeros(B, device=x0.device)}
    gate = torch.cat([torch.ones(B, device=x0.device), torch.zeros(B, device=x0.device)])
    eps_full, eps_general = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, y]), expert=gate).chunk(2)
    c = coef.to(x0.device)[y.clamp(max=len(coef) - 1)]
    if isinstance(cond, torch.Tensor):
        c = torch.where(cond, c, torch.zeros_like(c))
    return {name: mse_per_sample(eps_full, target), "cm": c.float() * mse_per_sample(eps_full, eps_general)}


@METHODS.register("cm")
class CM(Method):
    """Capacity Manipulation (Hong et al., ICLR 2026): low-rank expert parts on the UNet's up path, pulled onto the
    general parts for frequent classes and pushed apart for rare ones; folded into the weights for sampling."""

    Options = CMOptions
    official_guidance = 1.5  # the released evaluation: DDIM-50, omega 1.5
    term_names = ("ddpm", "cm")
    absorbs = {"t2h": {"calibration": "t2h"}}  # cm+t2h: the released recipe, T2H's targets inside CM's loss

    def __init__(self, *, class_counts, options=None) -> None:
        super().__init__(class_counts=class_counts, options=options)
        o = self.options
        w_con, w_div = cm_class_weights(self.class_counts)
        self.coef = (o.con * w_con - o.div * w_div).float()
        counts = torch.as_tensor(self.class_counts, dtype=torch.float64)
        self.class_freq = (counts / counts.sum()).float()
        self.term_names = ("oc" if o.calibration == "t2h" else "ddpm", "cm")

    def wrap_model(self, model: nn.Module) -> nn.Module:
        o = self.options
        return CMUNet(model, parts=tuple(o.parts), rank_ratio=o.rank_ratio, scale=o.scale)

    def export_model(self, model: nn.Module) -> nn.Module:
        return model.merged_unet()

    def loss_terms(self, model, diffusion, x0, labels, generator):
        t, noise = draw_t_noise(diffusion, x0, generator)
        target = None
        if self.options.calibration == "t2h":
            u = torch.rand(x0.shape[0], generator=generator, device=x0.device)  # the same stream as t2h
            x_t = diffusion.q_sample(x0, t, noise)
            target, _ = t2h_targets(x0, x_t, t, noise, labels.true, diffusion, class_freq=self.class_freq.to(x0.device),
                                    gate=self.options.gate, u=u)  # fmt: skip
        return cm_terms(model, diffusion, x0, labels.model, t, noise, coef=self.coef, cond=labels.cond, target=target,
                        name=self.term_names[0])  # fmt: skip
