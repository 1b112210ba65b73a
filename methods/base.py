"""The method interface: a method supplies pieces the one training loop asks for, never a loop.

A method is built from the training set's class counts and its own options (``Options``: a frozen
:class:`benchmark.core.config.Options` dataclass declared in the method's module, set on the command
line as ``method.<name>.<option>``; the registry gives the method its name and its section) and may
override, each optionally:

* ``class_probs(step, total_steps)`` -> a probability per class that the loop draws the class of
  every batch element from (then an instance of that class uniformly), or ``None`` for uniform
  sampling over training instances (what plain training does);
* ``sample_weights(y)`` -> a per-sample loss weight for the true labels ``y``, or ``None``;
* ``loss_terms(model, diffusion, x0, labels, generator)`` -> ``{name: per-sample loss}``.  The
  loop multiplies every term by the sample weights, takes the batch mean of each, sums them and
  logs each name.  Term weights (such as CBDM's gamma) are applied inside the term, so the
  objective is always the plain sum of the logged means.

Further hooks, for methods that need them:

* ``trainable_modules(model)`` -> ``{name: nn.Module}``: trainable modules the method owns (such
  as CORAL's projection head), built for this backbone.  The trainer calls it once, before it
  builds the optimiser; it moves them to the device, optimises them with the model, clips their
  gradients with the model's and keeps their state in every checkpoint, but not in ``model.pt``:
  they are dropped at sampling time.  Default: none.
* ``wrap_model(model)`` -> the module to train in place of the backbone ``model`` (CM's low-rank
  expert parts change the forward): it must hold ``model``'s parameters (shared, not copied) and
  may add trainable ones of its own, which the trainer optimises, clips, tracks with the EMA and
  checkpoints with the model.  ``export_model(module)`` turns the trained (EMA) module back into a
  plain backbone for ``model.pt``, so sampling needs nothing of the method.  Default: the
  backbone itself, both ways.
* ``absorbs`` (class attribute) ``{other method: {option: value}}``: composing with that method
  means this one with those values of its own options (``cm+t2h`` = CM with T2H's calibration
  inside its own loss), where both would otherwise define the loss.
* ``init_from_method`` (class attribute), ``fine_tune_config(cfg)`` and ``init_step(cfg)``: a method
  that fine-tunes another method's model names that method; the grid runs that method's cell of the
  same dataset, imbalance and seed first (keeping its EMA weights at ``init_step``, when given) and
  starts this one from them, or from its final ``model.pt``, with the cell config
  ``fine_tune_config`` returns (CBDM's fine-tune protocol, ``cbdm-ft``).

``labels`` (:class:`Labels`) holds the batch's true labels (``labels.true``), what the model is
conditioned on (``labels.model``: the true labels with the null label ``model.num_classes`` where
the label was dropped for guidance) and ``labels.cond``: a Python bool when the whole batch is
conditional or not (the official whole-batch drop; no device sync needed to branch on it), or a
bool tensor [B] for per-sample dropping.  Condition the model on ``labels.model``; use
``labels.true`` for what the official code computes from the data's labels whatever the drop
(T2H's calibration).  All randomness must come from ``generator``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from benchmark.core.config import Config, Options
from benchmark.engine.batches import Cond, Labels
from benchmark.engine.diffusion import GaussianDiffusion

__all__ = ["Cond", "Labels", "Method", "ddpm_loss", "draw_t_noise", "mse_per_sample", "overrides"]


def mse_per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every dimension but the batch one."""
    return (a.float() - b.float()).square().flatten(1).mean(1)


def ddpm_loss(
    model: torch.nn.Module, diffusion: GaussianDiffusion, x0: torch.Tensor, y: torch.Tensor,
    t: torch.Tensor, noise: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The epsilon-prediction loss ||eps_theta(x_t, t, y) - eps||^2 per sample, as {'ddpm': [B]}."""
    x_t = diffusion.q_sample(x0, t, noise)
    return {"ddpm": mse_per_sample(model(x_t, t, y), noise)}


def draw_t_noise(
    diffusion: GaussianDiffusion, x0: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    t = diffusion.sample_t(x0.shape[0], generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return t, noise


class Method:
    name: str = "base"  # set from the registry key
    Options: type[Options] | None = None  # the method's options dataclass (method.<name>.<option>), if any
    official_guidance: float = 0.8  # omega of the method's published evaluation
    term_names: tuple[str, ...] = ("ddpm",)
    init_from_method: str | None = None  # fine-tuning methods: the method whose finished model they start from
    absorbs: dict[str, dict[str, object]] = {}  # composing with these methods sets these options of its own

    def __init__(self, *, class_counts: np.ndarray, options: Options | None = None) -> None:
        """``options``: an instance of ``Options`` (default: its defaults; None for a method without)."""
        self.class_counts = np.asarray(class_counts, dtype=np.int64)
        self.options = options if options is not None or self.Options is None else self.Options()

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    def on(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``tensor`` (a table the method built once: class weights, a prior) on ``device``, copied once per
        device rather than every step."""
        cache = self.__dict__.setdefault("_on_device", {})
        key = (id(tensor), device)
        if key not in cache:
            cache[key] = tensor.to(device)
        return cache[key]

    def class_probs(self, step: int, total_steps: int) -> torch.Tensor | None:
        return None

    def sample_weights(self, y: torch.Tensor) -> torch.Tensor | None:
        return None

    def loss_terms(
        self, model: torch.nn.Module, diffusion: GaussianDiffusion, x0: torch.Tensor, labels: Labels,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        t, noise = draw_t_noise(diffusion, x0, generator)
        return ddpm_loss(model, diffusion, x0, labels.model, t, noise)

    def trainable_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """Trainable modules owned by the method, built once for ``model`` (see the module docstring)."""
        return {}

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The module trained in place of the backbone (see the module docstring). Default: the backbone."""
        return model

    def export_model(self, model: nn.Module) -> nn.Module:
        """The plain backbone ``model.pt`` holds, from the trained module ``wrap_model`` returned."""
        return model

    @classmethod
    def fine_tune_config(cls, cfg: Config) -> Config:
        """The cell config of a fine-tuning run (read only when ``init_from_method`` is set; the grid
        then sets ``train.init_from`` itself).  ``cfg`` is the cell config before fine-tuning, so its
        ``train.steps`` is the parent's budget.  Raises ConfigError for options out of range."""
        return cfg

    @classmethod
    def init_step(cls, cfg: Config) -> int | None:
        """The parent's training step whose EMA weights a fine-tuning run starts from (the parent's cell
        keeps them), or None for the parent's final model.  ``cfg`` as in :meth:`fine_tune_config`."""
        return None


def overrides(cls: type[Method], attr: str) -> bool:
    """Whether method class ``cls`` supplies its own ``attr`` (used to compose methods)."""
    return getattr(cls, attr) is not getattr(Method, attr)
