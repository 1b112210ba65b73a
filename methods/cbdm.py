"""CBDM: class-balancing diffusion models (Qin et al., CVPR 2023), the distribution-adjustment regulariser.

For a conditional sample with label y, timestep t and noise eps (x_t = sqrt(abar) x0 + sqrt(1-abar) eps):

    w      = tau * t / T
    L_ddpm = ||eps(x_t, t, y) - eps||^2
    L_reg  = w * ||eps(x_t, t, y) - sg(eps(x_t, t, y'))||^2
    L_com  = w * ||sg(eps(x_t, t, y)) - eps(x_t, t, y')||^2
    L      = mean(L_ddpm) + mean(L_reg) + gamma * mean(L_com)        (sg = stop-gradient)

y' is drawn per sample from the training class frequencies (``prior='train'``, what the
official code does from scratch) or uniformly (``prior='uniform'``, its fine-tune mode; pair
it with ``train.init_from``, or use ``cbdm-ft``, which the grid starts from its ``ddpm`` cell).
Unconditional (label-dropped) samples get no regulariser.  The two evaluations (y and y') share
ONE batched forward pass over [x_t; x_t].
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from benchmark.core.config import Options, bounded, choice, choices

from .base import Cond, Method, draw_t_noise, mse_per_sample
from .registry import METHODS


@dataclass(frozen=True)
class CBDMOptions(Options):
    tau: float = bounded(1.0, ge=0.0)  # weight of the regulariser at t = T: w = tau * t / T
    gamma: float = bounded(0.25, ge=0.0)  # weight of the commitment term
    prior: str = choice("train", {
        "train": "y' from the training prior (official, from scratch)",
        "uniform": "y' uniform over the classes present (fine-tuning)",
    })  # fmt: skip
    # the flat keys of the first layout (results folders made before options were per method)
    legacy = {"cbdm_tau": "tau", "cbdm_gamma": "gamma", "cbdm_prior": "prior"}


@dataclass(frozen=True)
class CBDMFineTuneOptions(Options):
    tau: float = bounded(1.0, ge=0.0)
    gamma: float = bounded(0.25, ge=0.0)
    # (official: the ddpm EMA at 200k of 300k, fine-tuned ~50k steps) the fraction of the ddpm parent's
    # train.steps whose EMA weights it starts from (1 = the final model), and its steps (None = a sixth
    # of the parent's train.steps)
    start: float = bounded(2 / 3, gt=0.0, le=1.0)
    steps: int | None = bounded(None, ge=1)
    legacy = {"cbdm_tau": "tau", "cbdm_gamma": "gamma", "cbdm_ft_start": "start", "cbdm_ft_steps": "steps"}


PRIORS = choices(CBDMOptions, "prior")


def cbdm_loss(
    model: torch.nn.Module, diffusion, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
    noise: torch.Tensor, y_prime: torch.Tensor, *, tau: float = 1.0, gamma: float = 0.25,
    cond: Cond = True,
) -> dict[str, torch.Tensor]:
    """Per-sample terms {'ddpm', 'reg', 'com'}; 'com' already carries gamma, so L = sum of means.

    ``cond``: True/False for a whole (un)conditional batch, or a bool tensor [B]; the
    regulariser terms are zero where the sample is unconditional.
    """
    x_t = diffusion.q_sample(x0, t, noise)
    if cond is False:
        eps_y = model(x_t, t, y)
        zero = torch.zeros(x0.shape[0], device=x0.device)
        return {"ddpm": mse_per_sample(eps_y, noise), "reg": zero, "com": zero}
    eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, y_prime]))
    eps_y, eps_yp = eps.chunk(2)
    w = tau * t.float() / diffusion.T
    reg = w * mse_per_sample(eps_y, eps_yp.detach())
    com = gamma * w * mse_per_sample(eps_y.detach(), eps_yp)
    if isinstance(cond, torch.Tensor):
        mask = cond.to(reg.dtype)
        reg, com = reg * mask, com * mask
    return {"ddpm": mse_per_sample(eps_y, noise), "reg": reg, "com": com}


@METHODS.register("cbdm")
class CBDM(Method):
    """CBDM (Qin et al., CVPR 2023): distribution-adjustment regulariser towards a prior y' (method.cbdm.prior)."""

    Options = CBDMOptions
    official_guidance = 1.6
    term_names = ("ddpm", "reg", "com")

    def __init__(self, *, class_counts: np.ndarray, options=None) -> None:
        super().__init__(class_counts=class_counts, options=options)
        counts = torch.as_tensor(self.class_counts, dtype=torch.float64)
        prior = counts if getattr(self.options, "prior", "uniform") == "train" else (counts > 0).double()
        self.prior = (prior / prior.sum()).float()

    def draw_y_prime(self, n: int, *, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        return torch.multinomial(self.on(self.prior, device), n, replacement=True, generator=generator)

    def loss_terms(self, model, diffusion, x0, labels, generator):
        t, noise = draw_t_noise(diffusion, x0, generator)
        y_prime = self.draw_y_prime(x0.shape[0], generator=generator, device=x0.device)
        o = self.options
        return cbdm_loss(model, diffusion, x0, labels.model, t, noise, y_prime, tau=o.tau, gamma=o.gamma,
                         cond=labels.cond)  # fmt: skip


@METHODS.register("cbdm-ft")
class CBDMFineTune(CBDM):
    """CBDM's fine-tune protocol: the grid's ddpm model of the same data and seed, taken at
    method.cbdm_ft.start of its budget, fine-tuned with the CBDM regulariser and uniform y'.

    Official (qym7/CBDM-pytorch README and main.py): the DDPM EMA weights of the 200k checkpoint of a
    300k budget (``start`` = 2/3) are loaded into a fresh model, EMA and Adam (warmup again)
    and fine-tuned about 50k steps (evaluated at 250k: ``steps`` defaults to a sixth of the
    parent's budget) at CBDM's batch 48 (``train.method_batch_size``'s cbdm rule covers cbdm-ft),
    uniform y', and sampled at omega 2.0.
    """

    Options = CBDMFineTuneOptions  # y' is always uniform in the fine-tune protocol: no prior option
    init_from_method = "ddpm"
    official_guidance = 2.0

    @classmethod
    def init_step(cls, cfg):
        """The parent's step method.cbdm_ft.start * train.steps (None at 1: its final model); the option's
        range (0, 1] is checked when the options are built."""
        frac = cfg.method.cbdm_ft.start
        step = max(1, round(frac * cfg.train.steps))
        return None if step >= cfg.train.steps else step

    @classmethod
    def fine_tune_config(cls, cfg):
        """method.cbdm_ft.steps steps (default a sixth of the parent's train.steps: 50k of 300k), warmup
        at most a tenth of those."""
        t, o = cfg.train, cfg.method.cbdm_ft
        steps = o.steps if o.steps is not None else max(1, round(t.steps / 6))
        return replace(cfg, train=replace(t, steps=steps, warmup=min(t.warmup, steps // 10)))
