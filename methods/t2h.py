"""T2H: oriented calibration (Zhang et al., ICLR 2024), a per-sample swap of the noise target.

For sample i of a batch at its timestep t (sigma_t^2 = 1/abar_t - 1, xhat_i = x0_i + sigma_t eps_i,
which is x_t,i / sqrt(abar_t)):

    pi_ij  proportional to exp(-||xhat_i - x0_j||^2 / (2 sigma_t^2))   over all j of the batch (i included)
    j      ~ pi_i;  gate 't2h' keeps j only if p(y_j) >= p(y_i), else j = i
                    ('h2t': p(y_j) <= p(y_i); 'full': no gate; p = training class frequency)
    eps'_i = (x_t,i - sqrt(abar_t) x0_j) / sqrt(1 - abar_t)
    L      = ||eps_theta(x_t,i, t, y_i) - eps'_i||^2             (the condition stays y_i)

The target carries no gradient.  The categorical draws are the one batch-level randomness; they
enter :func:`t2h_targets` as uniforms ``u`` (inverse-CDF sampling), so a test can check the swap
against the formula.  Official evaluation: DDIM 100 steps, eta 0, guidance 1.5.

Unconditional samples: the gate needs the labels of both ends of a swap, and the null label has
no class frequency, so a label-dropped sample keeps its own target and is never picked as j.  A
whole unconditional batch (the official label drop) therefore trains plain DDPM, and with
per-sample dropping the swap runs among the conditional samples only.
"""

from __future__ import annotations

import torch

from benchmark.core.config import MethodConfig, choices
from benchmark.core.errors import ConfigError

from .base import Cond, Method, draw_t_noise, mse_per_sample
from .registry import METHODS

GATES = choices(MethodConfig, "t2h_gate")


def t2h_probs(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, diffusion, *, sources: torch.Tensor | None = None
) -> torch.Tensor:
    """pi [B, B] (float64): row i is the posterior over which batch image x0_j produced
    xhat_i = x0_i + sigma_t eps_i.  ``sources`` [B] bool limits j to those samples (and i itself)."""
    ab = diffusion.table(x0.device)["alphas_bar"][t].double()
    var = 1.0 / ab - 1.0  # sigma_t^2
    xhat = x0.double() + var.sqrt().view(-1, *[1] * (x0.ndim - 1)) * noise.double()
    # direct pairwise distances (no |a|^2 + |b|^2 - 2ab cancellation: at small t sigma_t^2 is ~1e-4)
    d2 = torch.cdist(xhat.flatten(1), x0.double().flatten(1), compute_mode="donot_use_mm_for_euclid_dist").square()
    logits = -d2 / (2 * var[:, None])
    if sources is not None:
        allowed = sources[None, :] | torch.eye(len(t), dtype=torch.bool, device=x0.device)
        logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=1)


@torch.no_grad()
def t2h_targets(
    x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor, diffusion, *,
    class_freq: torch.Tensor, gate: str, u: torch.Tensor, cond: Cond = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The calibrated targets eps' [B, ...] and the chosen source index j [B] (j = i: no swap).

    ``u`` [B] in [0, 1) draws j_i from pi_i by inverse CDF (j_i = the first j with
    sum_{k<=j} pi_ik > u_i); ``class_freq`` [C] is p(y) of the training set; ``cond`` is
    True/False for a whole (un)conditional batch or a bool tensor [B].
    """
    if gate not in GATES:
        raise ConfigError(f"method.t2h_gate={gate!r} is unknown; use one of {', '.join(GATES)}")
    B = x0.shape[0]
    own = torch.arange(B, device=x0.device)
    if cond is False:
        return noise, own
    per_sample = isinstance(cond, torch.Tensor)
    pi = t2h_probs(x0, t, noise, diffusion, sources=cond if per_sample else None)
    cdf = pi.cumsum(1)
    j = torch.searchsorted(cdf, (u.double() * cdf[:, -1]).unsqueeze(1).contiguous(), right=True).squeeze(1)
    last = torch.where(pi > 0, own[None], -1).amax(1)  # rounding at u -> 1 never lands on zero mass
    j = torch.minimum(j, last)
    if per_sample:
        j = torch.where(cond, j, own)
    if gate != "full":
        freq = class_freq.to(x0.device)
        yi = y.clamp(max=len(freq) - 1)  # a null label only occurs where j = i already
        p_i, p_j = freq[yi], freq[yi[j]]
        keep = p_j >= p_i if gate == "t2h" else p_j <= p_i
        j = torch.where(keep, j, own)
    swapped = diffusion.eps_from_x0(x_t, t, x0[j])
    target = torch.where((j == own).view(-1, *[1] * (x0.ndim - 1)), noise, swapped)
    return target, j


def t2h_loss(
    model: torch.nn.Module, diffusion, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
    u: torch.Tensor, *, class_freq: torch.Tensor, gate: str = "t2h", cond: Cond = True,
) -> dict[str, torch.Tensor]:
    """Per-sample {'oc': ||eps_theta(x_t, t, y) - eps'||^2} with the calibrated target of :func:`t2h_targets`."""
    x_t = diffusion.q_sample(x0, t, noise)
    target, _ = t2h_targets(x0, x_t, t, noise, y, diffusion, class_freq=class_freq, gate=gate, u=u, cond=cond)
    return {"oc": mse_per_sample(model(x_t, t, y), target)}


@METHODS.register("t2h")
class T2H(Method):
    """Oriented calibration (T2H; Zhang et al., ICLR 2024): each sample's noise target is swapped to a
    batch image that could have produced its x_t, gated by class frequency (method.t2h_gate)."""

    name = "t2h"
    official_guidance = 1.5
    term_names = ("oc",)

    def __init__(self, *, class_counts, options) -> None:
        super().__init__(class_counts=class_counts, options=options)
        if options.t2h_gate not in GATES:
            raise ConfigError(f"method.t2h_gate={options.t2h_gate!r} is unknown; use one of {', '.join(GATES)}")
        counts = torch.as_tensor(self.class_counts, dtype=torch.float64)
        self.class_freq = (counts / counts.sum()).float()
        self._freq_on: dict[torch.device, torch.Tensor] = {}

    def loss_terms(self, model, diffusion, x0, y, cond, generator):
        t, noise = draw_t_noise(diffusion, x0, generator)
        u = torch.rand(x0.shape[0], generator=generator, device=x0.device)  # drawn even when unused: one stream
        if x0.device not in self._freq_on:
            self._freq_on[x0.device] = self.class_freq.to(x0.device)
        return t2h_loss(model, diffusion, x0, y, t, noise, u, class_freq=self._freq_on[x0.device],
                        gate=self.options.t2h_gate, cond=cond)  # fmt: skip
