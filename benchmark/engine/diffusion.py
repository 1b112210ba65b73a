"""Gaussian diffusion with linear betas and epsilon prediction (Ho et al. 2020).

The schedule is computed in float64 (as the official code does) and handed out in float32
on the device where it is used; ``T`` timesteps are indexed 0..T-1.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmark.core.config import DiffusionConfig
from benchmark.core.errors import ConfigError


class GaussianDiffusion:
    def __init__(self, *, T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> None:
        if T < 1 or not 0 < beta_1 <= beta_T < 1:
            raise ConfigError(
                f"diffusion schedule T={T}, beta_1={beta_1}, beta_T={beta_T} is invalid; "
                "need T >= 1 and 0 < beta_1 <= beta_T < 1 (defaults: 1000, 1e-4, 0.02)"
            )
        self.T = T
        self.betas = torch.linspace(beta_1, beta_T, T, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        self.alphas_bar = torch.cumprod(self.alphas, dim=0)
        self._cache: dict[torch.device, dict[str, torch.Tensor]] = {}

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> GaussianDiffusion:
        return cls(T=cfg.T, beta_1=cfg.beta_1, beta_T=cfg.beta_T)

    def table(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """float32 per-timestep coefficients on ``device`` (built once per device)."""
        device = torch.device(device)
        if device not in self._cache:
            ab = self.alphas_bar
            ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
            posterior_var = self.betas * (1 - ab_prev) / (1 - ab)
            # "fixedlarge" variance of the official CIFAR sampler: beta_t, with the first entry
            # replaced by the posterior variance so the last step is not pure beta noise
            large_var = torch.cat([posterior_var[1:2], self.betas[1:]])
            tabs = {
                "sqrt_ab": ab.sqrt(),
                "sqrt_1m_ab": (1 - ab).sqrt(),
                "sqrt_recip_ab": (1 / ab).sqrt(),
                "sqrt_recipm1_ab": (1 / ab - 1).sqrt(),
                "alphas_bar": ab,
                "eps_coef": self.betas / (1 - ab).sqrt(),
                "sqrt_recip_alpha": (1 / self.alphas).sqrt(),
                "sigma_large": large_var.sqrt(),
            }
            self._cache[device] = {k: v.to(device=device, dtype=torch.float32) for k, v in tabs.items()}
        return self._cache[device]

    def _at(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return self.table(t.device)[name][t].reshape(-1, *([1] * (ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        return self._at("sqrt_ab", t, x0.ndim) * x0 + self._at("sqrt_1m_ab", t, x0.ndim) * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._at("sqrt_recip_ab", t, x_t.ndim) * x_t - self._at("sqrt_recipm1_ab", t, x_t.ndim) * eps

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (x_t - self._at("sqrt_ab", t, x_t.ndim) * x0) / self._at("sqrt_1m_ab", t, x_t.ndim)

    def sample_t(self, n: int, *, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        return torch.randint(0, self.T, (n,), generator=generator, device=device)


def guided_eps(
    model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, guidance: float | None
) -> torch.Tensor:
    """Classifier-free guidance eps = (1+w) eps(x, y) - w eps(x, null), in ONE batched forward.

    ``guidance`` 0 or None: the conditional prediction alone (one forward of the plain batch).
    """
    if not guidance:
        return model(x, t, y).float()
    null = torch.full_like(y, model.num_classes)
    eps = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
    eps_c, eps_u = eps.float().chunk(2)
    # the official samplers' arithmetic (eps + w (eps - eps_u): OC_LT diffusion.py lines 187-188 and 548-550),
    # so a transcription of their loop matches ours to the last bits, not only up to rounding
    return eps_c + guidance * (eps_c - eps_u)
