"""T2H: oriented calibration (Zhang et al., ICLR 2024), a per-sample swap of the noise target.

For sample i of a batch at its timestep t (sigma_t^2 = 1/abar_t - 1, xhat_i = x0_i + sigma_t eps_i,
which is x_t,i / sqrt(abar_t)):

    pi_ij  proportional to exp(-||xhat_i - x0_j||^2 / (2 sigma_t^2))   over all j of the batch (i included)
    j      ~ pi_i;  gate 't2h' keeps j only if p(y_j) >= p(y_i), else j = i
                    ('h2t': p(y_j) <= p(y_i); 'full': no gate; p = training class frequency)
    eps'_i = (x_t,i - sqrt(abar_t) x0_j) / sqrt(1 - abar_t)
    L      = ||eps_theta(x_t,i, t, c_i) - eps'_i||^2     (c_i = y_i, or the null label where dropped)

The target carries no gradient.  The categorical draws are the one batch-level randomness; they
enter :func:`t2h_targets` as uniforms ``u`` (inverse-CDF sampling), so a test can check the swap
against the formula.  Official evaluation: DDIM 100 steps, eta 0, guidance 1.5.

Label-dropped samples: the official trainer drops the label only for the model's condition and
calibrates every batch with the TRUE labels (the 10% of unconditional batches included), so the
swap, its gate and the candidate set never depend on the drop; we do the same (``labels.true``
for the calibration, ``labels.model`` for the condition), per-sample drops alike.

The posterior runs over the whole batch: under torchrun the global batch is gathered (every rank
draws the global t, noise and u, see ``ShardDraws``) and each rank keeps the targets of its own
samples, so N processes calibrate exactly as one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.core.config import Options, choice, choices
from benchmark.core.distributed import current, gather_batch
from benchmark.core.errors import ConfigError

from .base import Method, draw_t_noise, mse_per_sample
from .registry import METHODS

GATE_CHOICES = {
    "t2h": "swap a target only towards a class at least as frequent",
    "h2t": "swap only towards a class at most as frequent",
    "full": "every swap the posterior draws",
}


@dataclass(frozen=True)
class T2HOptions(Options):
    gate: str = choice("t2h", GATE_CHOICES)  # oriented calibration
    legacy = {"t2h_gate": "gate"}


GATES = choices(T2HOptions, "gate")


def t2h_probs(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, diffusion) -> torch.Tensor:
    """pi [B, B] (float64): row i is the posterior over which batch image x0_j produced
    xhat_i = x0_i + sigma_t eps_i."""
    ab = diffusion.table(x0.device)["alphas_bar"][t].double()
    var = 1.0 / ab - 1.0  # sigma_t^2
    xhat = x0.double() + var.sqrt().view(-1, *[1] * (x0.ndim - 1)) * noise.double()
    # direct pairwise distances (no |a|^2 + |b|^2 - 2ab cancellation: at small t sigma_t^2 is ~1e-4)
    d2 = torch.cdist(xhat.flatten(1), x0.double().flatten(1), compute_mode="donot_use_mm_for_euclid_dist").square()
    return torch.softmax(-d2 / (2 * var[:, None]), dim=1)


@torch.no_grad()
def t2h_targets(
    x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor, diffusion, *,
    class_freq: torch.Tensor, gate: str, u: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The calibrated targets eps' [B, ...] and the chosen source index j [B] (j = i: no swap).

    ``y`` are the TRUE labels (the gate compares their class frequencies, label drop or not); ``u`` [B]
    in [0, 1) draws j_i from pi_i by inverse CDF (j_i = the first j with sum_{k<=j} pi_ik > u_i);
    ``class_freq`` [C] is p(y) of the training set.
    """
    if gate not in GATES:
        raise ConfigError(f"method.t2h.gate={gate!r} is unknown; use one of {', '.join(GATES)}")
    B = x0.shape[0]
    own = torch.arange(B, device=x0.device)
    pi = t2h_probs(x0, t, noise, diffusion)
    cdf = pi.cumsum(1)
    j = torch.searchsorted(cdf, (u.double() * cdf[:, -1]).unsqueeze(1).contiguous(), right=True).squeeze(1)
    last = torch.where(pi > 0, own[None], -1).amax(1)  # rounding at u -> 1 never lands on zero mass
    j = torch.minimum(j, last)
    if gate != "full":
        freq = class_freq.to(x0.device)
        p_i, p_j = freq[y], freq[y[j]]
        keep = p_j >= p_i if gate == "t2h" else p_j <= p_i
        j = torch.where(keep, j, own)
    swapped = diffusion.eps_from_x0(x_t, t, x0[j])
    target = torch.where((j == own).view(-1, *[1] * (x0.ndim - 1)), noise, swapped)
    return target, j


def t2h_loss(
    model: torch.nn.Module, diffusion, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
    u: torch.Tensor, *, class_freq: torch.Tensor, gate: str = "t2h", y_model: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample {'oc': ||eps_theta(x_t, t, y_model) - eps'||^2}, the target of :func:`t2h_targets` calibrated
    with the true labels ``y`` over the whole (under torchrun: the gathered global) batch; ``y_model`` is the
    condition (default ``y``; the null label where it was dropped)."""
    x_t = diffusion.q_sample(x0, t, noise)
    n, rank = x0.shape[0], current().rank
    with torch.no_grad():
        xg, tg, ng, yg, ug = (gather_batch(v) for v in (x0, t, noise, y, u))
        target, _ = t2h_targets(xg, diffusion.q_sample(xg, tg, ng), tg, ng, yg, diffusion, class_freq=class_freq,
                                gate=gate, u=ug)  # fmt: skip
    target = target[rank * n : (rank + 1) * n]
    return {"oc": mse_per_sample(model(x_t, t, y if y_model is None else y_model), target)}


@METHODS.register("t2h")
class T2H(Method):
    """Oriented calibration (T2H; Zhang et al., ICLR 2024): each sample's noise target is swapped to a
    batch image that could have produced its x_t, gated by class frequency (method.t2h.gate)."""

    Options = T2HOptions
    official_guidance = 1.5
    term_names = ("oc",)

    def __init__(self, *, class_counts, options=None) -> None:
        super().__init__(class_counts=class_counts, options=options)
        counts = torch.as_tensor(self.class_counts, dtype=torch.float64)
        self.class_freq = (counts / counts.sum()).float()

    def loss_terms(self, model, diffusion, x0, labels, generator):
        t, noise = draw_t_noise(diffusion, x0, generator)
        u = torch.rand(x0.shape[0], generator=generator, device=x0.device)
        return t2h_loss(model, diffusion, x0, labels.true, t, noise, u, class_freq=self.on(self.class_freq, x0.device),
                        gate=self.options.gate, y_model=labels.model)  # fmt: skip
