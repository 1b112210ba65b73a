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

from dataclasses import replace

import numpy as np
import torch

from benchmark.core.config import MethodConfig, choices
from benchmark.core.errors import ConfigError

from .base import Cond, Method, draw_t_noise, mse_per_sample
from .registry import METHODS

PRIORS = choices(MethodConfig, "cbdm_prior")


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
    """CBDM (Qin et al., CVPR 2023): distribution-adjustment regulariser towards a prior y' (method.cbdm_prior)."""

    name = "cbdm"
    official_guidance = 1.6
    options_read = ("cbdm_tau", "cbdm_gamma", "cbdm_prior")
    term_names = ("ddpm", "reg", "com")

    def __init__(self, *, class_counts: np.ndarray, options) -> None:
        super().__init__(class_counts=class_counts, options=options)
        if options.cbdm_prior not in PRIORS:
            raise ConfigError(
                f"method.cbdm_prior={options.cbdm_prior!r} is unknown; use one of {', '.join(PRIORS)}"
            )
        counts = torch.as_tensor(self.class_counts, dtype=torch.float64)
        prior = counts if options.cbdm_prior == "train" else (counts > 0).double()
        self.prior = (prior / prior.sum()).float()
        self._prior_on: dict[torch.device, torch.Tensor] = {}

    def draw_y_prime(self, n: int, *, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        if device not in self._prior_on:
            self._prior_on[device] = self.prior.to(device)
        return torch.multinomial(self._prior_on[device], n, replacement=True, generator=generator)

    def loss_terms(self, model, diffusion, x0, labels, generator):
        t, noise = draw_t_noise(diffusion, x0, generator)
        y_prime = self.draw_y_prime(x0.shape[0], generator=generator, device=x0.device)
        o = self.options
        return cbdm_loss(model, diffusion, x0, labels.model, t, noise, y_prime, tau=o.cbdm_tau, gamma=o.cbdm_gamma,
                         cond=labels.cond)  # fmt: skip


@METHODS.register("cbdm-ft")
class CBDMFineTune(CBDM):
    """CBDM's fine-tune protocol: the grid's ddpm model of the same data and seed, taken at
    method.cbdm_ft_start of its budget, fine-tuned with the CBDM regulariser and uniform y'.

    Official (qym7/CBDM-pytorch README and main.py): the DDPM EMA weights of the 200k checkpoint of a
    300k budget (``cbdm_ft_start`` = 2/3) are loaded into a fresh model, EMA and Adam (warmup again)
    and fine-tuned about 50k steps (evaluated at 250k: ``cbdm_ft_steps`` defaults to a sixth of the
    parent's budget) at CBDM's batch 48 (``train.method_batch_size``'s cbdm rule covers cbdm-ft),
    uniform y', and sampled at omega 2.0.
    """

    name = "cbdm-ft"
    init_from_method = "ddpm"
    options_read = (*CBDM.options_read, "cbdm_ft_")
    official_guidance = 2.0

    def __init__(self, *, class_counts, options) -> None:
        # y' is uniform in the fine-tune protocol whatever method.cbdm_prior says (the grid sets it too)
        super().__init__(class_counts=class_counts, options=replace(options, cbdm_prior="uniform"))

    @classmethod
    def init_step(cls, cfg):
        """The parent's step method.cbdm_ft_start * train.steps (None at 1: its final model)."""
        frac = cfg.method.cbdm_ft_start
        if not 0 < frac <= 1:
            raise ConfigError(
                f"method.cbdm_ft_start={frac:g} is outside (0, 1]: it is the fraction of the ddpm parent's "
                "train.steps whose EMA weights cbdm-ft starts from; use e.g. 0.6667 (the official 200k of 300k) "
                "or 1 (the parent's final model)"
            )
        step = max(1, round(frac * cfg.train.steps))
        return None if step >= cfg.train.steps else step

    @classmethod
    def fine_tune_config(cls, cfg):
        """method.cbdm_ft_steps steps (default a sixth of the parent's train.steps: 50k of 300k), warmup
        at most a tenth of those, uniform y'."""
        cls.init_step(cfg)  # the start fraction is checked with every fine-tune config
        t, o = cfg.train, cfg.method
        if o.cbdm_ft_steps is not None and o.cbdm_ft_steps < 1:
            raise ConfigError(f"method.cbdm_ft_steps={o.cbdm_ft_steps} must be at least 1 (or none for the default)")
        steps = o.cbdm_ft_steps if o.cbdm_ft_steps is not None else max(1, round(t.steps / 6))
        return replace(
            cfg, train=replace(t, steps=steps, warmup=min(t.warmup, steps // 10)),
            method=replace(o, cbdm_prior="uniform"),
        )
