"""Samplers (ancestral DDPM, DDIM) and the resumable generation of evaluation sets.

Every image owns a seed.  Its initial noise and every later noise draw come from a CPU
``torch.Generator`` seeded with that seed and consumed in the same order whatever the batch,
so the same image comes out for any batch size, GPU count or device (edm's generate.py habit).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmark.core.config import DDIM_LAST, SampleConfig
from benchmark.core.device import autocast, resolve_precision
from benchmark.core.distributed import barrier, current
from benchmark.core.errors import ConfigError
from benchmark.core.files import save_npz_atomic
from benchmark.core.progress import progress as progress_bar
from benchmark.core.registry import Registry
from benchmark.engine.diffusion import GaussianDiffusion, guided_eps


def images_per_class(cfg, num_classes: int) -> int:
    """Images per class of the evaluation set: ``n_total // C`` when the protocol fixes the total
    (``sample.n_total``), else ``sample.n_per_class``."""
    if cfg.n_total is None:
        return cfg.n_per_class
    if cfg.n_total < 2 * num_classes:
        raise ConfigError(f"sample.n_total={cfg.n_total} leaves fewer than 2 images for each of the {num_classes} "
                          "classes; raise it or set sample.n_total=none and sample.n_per_class")
    return cfg.n_total // num_classes


def balanced_labels(num_classes: int, n_per_class: int) -> torch.Tensor:
    """[0]*n, [1]*n, ... : exactly ``n_per_class`` images of every class."""
    return torch.arange(num_classes, dtype=torch.int64).repeat_interleave(n_per_class)


def eval_labels(rule: str, num_classes: int, n_per_class: int, *, seed: int) -> torch.Tensor:
    """The evaluation set's labels (``sample.labels``): ``balanced`` is exactly ``n_per_class`` of every
    class; ``uniform`` draws n_per_class x C labels i.i.d. uniform, as CBDM's, OC's and CORAL's samplers do
    (``torch.randint``), from ``RandomState(seed)``, sorted into class blocks (the images' seeds follow
    their position, so a set stays the same for any batch size)."""
    if rule == "balanced":
        return balanced_labels(num_classes, n_per_class)
    if rule == "uniform":
        drawn = np.random.RandomState(seed).randint(0, num_classes, size=num_classes * n_per_class)
        return torch.from_numpy(np.sort(drawn).astype(np.int64))
    raise ConfigError(f"unknown sample.labels {rule!r}; valid: balanced, uniform")


def paired_subset(rule: str, num_classes: int, n_per_class: int, n_full: int, *, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The labels and seeds of a set of ``n_per_class`` per class whose every image is an image of the
    ``n_full`` set (same label, same seed): balanced labels take each class's first ``n_per_class``;
    uniform labels take the first n_per_class x C draws of the full set's i.i.d. sequence (still i.i.d.
    uniform), in class blocks."""
    full_seeds = sample_seeds(seed, num_classes * n_full)
    if rule == "balanced":
        return (balanced_labels(num_classes, n_per_class),
                full_seeds.view(num_classes, n_full)[:, :n_per_class].reshape(-1))  # fmt: skip
    if rule != "uniform":
        raise ConfigError(f"unknown sample.labels {rule!r}; valid: balanced, uniform")
    drawn = np.random.RandomState(seed).randint(0, num_classes, size=num_classes * n_full)
    order = np.argsort(drawn, kind="stable")  # the full set's class blocks (eval_labels' sort)
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    subset = np.argsort(drawn[: num_classes * n_per_class], kind="stable")
    return torch.from_numpy(drawn[subset].astype(np.int64)), full_seeds[torch.from_numpy(position[subset])]


def sample_seeds(base_seed: int, n: int) -> torch.Tensor:
    """One distinct seed per image.

    torch's CPU generator keeps only 32 bits of a seed, so the seeds live in [0, 2**32):
    consecutive from an offset that a large odd multiplier spreads apart for different base
    seeds (distinct within a set of up to 2**32 images).
    """
    offset = (int(base_seed) * 2654435761) % 2**32
    return (offset + torch.arange(n, dtype=torch.int64)) % 2**32


class _Noise:
    """Per-image noise streams: one CPU generator per image, moved to the device in one copy."""

    def __init__(self, seeds: torch.Tensor, shape: tuple[int, ...], device: torch.device) -> None:
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds.tolist()]
        self.shape = shape
        self.device = device

    def draw(self) -> torch.Tensor:
        out = torch.stack([torch.randn(self.shape, generator=g) for g in self.gens])
        return out.to(self.device, non_blocking=True)


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """Uniformly spaced timesteps 0, T/steps, ... (the DDIM paper's 'uniform' skip), ascending."""
    if not 1 <= steps <= T:
        raise ConfigError(f"sampler steps={steps} must lie in 1..{T} (the diffusion's T); e.g. --set sample.steps=50")
    return sorted({i * T // steps for i in range(steps)})


# a sampler: (model, diffusion, x_T, labels, noise, steps=, eta=, guidance=, ddim_last=) -> x_0 in model space;
# its randomness only from ``noise`` (per-image streams), so a set does not depend on the batch size
SAMPLERS: Registry[Callable[..., torch.Tensor]] = Registry("sampler")


@SAMPLERS.register("ddpm")
def ddpm_ancestral(model, diffusion: GaussianDiffusion, x, y, noise: _Noise, *, steps, eta, guidance,
                   ddim_last: str = "x0") -> torch.Tensor:
    """Ancestral sampling over all T steps with the large variance (beta_t), as the DDPM paper's CIFAR runs
    (``steps``, ``eta`` and ``ddim_last`` are DDIM's and unused here)."""
    tab, n = diffusion.table(y.device), x.shape[0]
    for i in reversed(range(diffusion.T)):
        t = torch.full((n,), i, dtype=torch.int64, device=y.device)
        eps = guided_eps(model, x, t, y, guidance)
        mean = tab["sqrt_recip_alpha"][i] * (x - tab["eps_coef"][i] * eps)
        x = mean + tab["sigma_large"][i] * noise.draw() if i > 0 else mean
    return x


@SAMPLERS.register("ddim")
def ddim(model, diffusion: GaussianDiffusion, x, y, noise: _Noise, *, steps, eta, guidance,
         ddim_last: str = "x0") -> torch.Tensor:
    """DDIM over ``steps`` uniformly spaced timesteps; ``eta`` 0 is deterministic given x_T.  ``ddim_last``
    ``clamp`` is OC's / CM's loop: the next time is clamp(t - skip, 0), so the step from t = 0 is the identity."""
    seq = ddim_timesteps(diffusion.T, steps)
    ab, n = diffusion.table(y.device)["alphas_bar"], x.shape[0]
    for j in reversed(range(len(seq))):
        i = seq[j]
        if j == 0 and ddim_last == "clamp" and i == 0:
            break  # OC_LT / CM: the step from t = 0 goes to clamp(0 - skip, 0) = 0, the identity
        t = torch.full((n,), i, dtype=torch.int64, device=y.device)
        eps = guided_eps(model, x, t, y, guidance)
        a_t = ab[i]
        a_prev = ab[seq[j - 1]] if j > 0 else torch.ones_like(a_t)
        if ddim_last == "clamp" and eta == 0:  # OC's / CM's update, in their arithmetic (the same map)
            c1, c2, c3, c4 = a_t.sqrt(), (1 - a_t).sqrt(), a_prev.sqrt(), (1 - a_prev).sqrt()
            x = c3 / c1 * x + (c4 - c3 * c2 / c1) * eps
            continue
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and j > 0:
            x = x + sigma * noise.draw()
    return x


@torch.no_grad()
def _sample_batch(model, diffusion: GaussianDiffusion, y, noise: _Noise, *, sampler, steps, eta, guidance,
                  ddim_last: str = "x0"):
    x = denoise(model, diffusion, y, noise, sampler=sampler, steps=steps, eta=eta, guidance=guidance,
                ddim_last=ddim_last)
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def denoise(model, diffusion: GaussianDiffusion, y, noise: _Noise, *, sampler, steps, eta, guidance,
            ddim_last: str = "x0") -> torch.Tensor:
    """The sampler's float output before clipping and quantisation (see ``sample_images``)."""
    return SAMPLERS.get(sampler)(model, diffusion, noise.draw(), y, noise, steps=steps, eta=eta, guidance=guidance,
                                 ddim_last=ddim_last)


def sample_images(
    model: torch.nn.Module,
    diffusion: GaussianDiffusion,
    *,
    labels: torch.Tensor,
    seeds: torch.Tensor,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    guidance: float | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = False,
    precision: str = "fp32",
    ddim_last: str = "x0",
) -> torch.Tensor:
    """Generate one image per (label, seed) pair; returns uint8 [N, C, H, W] on the CPU.

    ``precision``: the model's arithmetic, fp32 | bf16 | auto (bf16 where ``device`` runs it
    natively); the sampler's own update runs in fp32 either way.  ``ddim_last``: DDIM's step from
    its smallest timestep (``sample.ddim_last``): ``x0`` lands on the x0 prediction, ``clamp`` is
    OC's / CM's sampler, whose next time is clamp(t - skip, 0): at t = 0 the step is the identity."""
    if labels.shape != seeds.shape or labels.ndim != 1:
        raise ConfigError("labels and seeds must be 1-D tensors of equal length (one seed per image)")
    SAMPLERS.get(sampler)  # an unknown name: a ConfigError listing the valid ones, before any work
    if ddim_last not in DDIM_LAST:
        raise ConfigError(f"unknown ddim_last {ddim_last!r}; valid: {', '.join(DDIM_LAST)}")
    device = torch.device(device)
    precision = resolve_precision(precision, device, key="sample.precision")
    shape = (model.in_channels, model.resolution, model.resolution)
    was_training = model.training
    model.eval()
    out = []
    try:
        starts = range(0, len(labels), batch_size)
        for s in progress_bar(starts, desc=f"sampling ({sampler})", enabled=progress, transient=True, unit="batch"):
            y = labels[s : s + batch_size].to(device)
            noise = _Noise(seeds[s : s + batch_size], shape, device)
            with autocast(precision, device):
                out.append(
                    _sample_batch(model, diffusion, y, noise, sampler=sampler, steps=steps, eta=eta, guidance=guidance,
                                  ddim_last=ddim_last).cpu()
                )
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros((0, *shape), dtype=torch.uint8)
    return torch.cat(out)


def generate_eval_set(
    model: torch.nn.Module,
    diffusion: GaussianDiffusion,
    *,
    num_classes: int,
    n_per_class: int,
    cfg: SampleConfig,
    seed: int,
    out_path: Path,
    device: torch.device | str,
    progress: bool = True,
    guidance: float | None = None,
    chunk_size: int | None = None,
    paired_with: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write ``n_per_class`` images of every class to ``out_path`` (.npz: images, labels); under
    ``cfg.labels=uniform`` n_per_class x C images with i.i.d. uniform labels (``eval_labels``).

    ``guidance`` (when given) overrides ``cfg.guidance``; the caller passes the method's
    official strength when ``cfg.guidance`` is None.  Finished chunks are kept in
    ``<out_path>.parts/`` and reused when the same command runs again; a chunk written by a
    different configuration (sampler, steps, seeds, ...) is recomputed, never mixed in.

    ``paired_with`` (>= ``n_per_class``): image j of class c takes the seed it has in a set of
    ``paired_with`` per class, so a smaller set (an intermediate budget point) holds the first
    ``n_per_class`` images of every class of the larger one's seeds: paired across the points.

    Under torchrun the chunks are dealt out to the ranks (rank r takes every world-th one);
    rank 0 joins the chunk files into ``out_path``.  Images depend on their seeds alone, so the
    set is the same for any number of processes.
    """
    out_path = Path(out_path)
    d = current()
    if out_path.exists():
        with np.load(out_path) as data:
            return torch.from_numpy(data["images"]), torch.from_numpy(data["labels"])
    w = guidance if guidance is not None else cfg.guidance
    if isinstance(w, tuple):  # sample.guidance is a list: a caller sampling one set names its scale
        if len(w) != 1:
            raise ConfigError(f"one evaluation set is drawn at one guidance scale, not {w}; pass guidance=")
        w = w[0]
    if w is None:
        raise ConfigError("no guidance strength: set sample.guidance or pass the method's official_guidance")
    labels = eval_labels(cfg.labels, num_classes, n_per_class, seed=seed)
    seeds = sample_seeds(seed, len(labels))
    if paired_with is not None and paired_with != n_per_class:
        if paired_with < n_per_class:
            raise ValueError(f"paired_with={paired_with} must be at least n_per_class={n_per_class}")
        labels, seeds = paired_subset(cfg.labels, num_classes, n_per_class, paired_with, seed=seed)
    precision = resolve_precision(cfg.precision, device, key="sample.precision")
    cfg = replace(cfg, precision=precision)
    what = (cfg.sampler, cfg.steps, cfg.eta, float(w), seed, num_classes, n_per_class, precision)
    if paired_with not in (None, n_per_class):
        what += (paired_with,)
    if cfg.sampler == "ddim" and cfg.ddim_last != "x0":  # the defaults' key stays what it was
        what += (cfg.ddim_last,)
    if cfg.labels != "balanced":
        what += (cfg.labels,)
    key = hashlib.sha256(repr(what).encode()).hexdigest()[:16]
    parts = out_path.with_name(out_path.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    chunk = chunk_size or max(cfg.batch_size, 1024)
    if d.world > 1:  # every rank gets work; whole sampling batches per chunk
        share = -(-len(labels) // d.world)
        chunk = min(chunk, -(-share // cfg.batch_size) * cfg.batch_size)
    images = []
    starts = range(0, len(labels), chunk)
    if d.world > 1:
        for s in starts[d.rank :: d.world]:
            _sample_part(model, diffusion, parts / f"chunk_{s:08d}.npz", key, labels[s : s + chunk],
                         seeds[s : s + chunk], cfg, w, device)  # fmt: skip
        barrier()  # every part is on disk; rank 0 reads them below
        if not d.main:
            barrier()  # rank 0 writes out_path
            return generate_eval_set(model, diffusion, num_classes=num_classes, n_per_class=n_per_class, cfg=cfg,
                                     seed=seed, out_path=out_path, device=device, progress=False, guidance=guidance,
                                     paired_with=paired_with)  # fmt: skip
    for s in progress_bar(starts, desc=f"generating {out_path.name}", enabled=progress, unit="chunk"):
        part = parts / f"chunk_{s:08d}.npz"
        if part.exists():
            with np.load(part) as data:
                if str(data["key"]) == key and len(data["images"]) == len(labels[s : s + chunk]):
                    images.append(torch.from_numpy(data["images"]))
                    continue
        imgs = sample_images(
            model, diffusion, labels=labels[s : s + chunk], seeds=seeds[s : s + chunk], sampler=cfg.sampler,
            steps=cfg.steps, eta=cfg.eta, guidance=w, batch_size=cfg.batch_size, device=device, precision=precision,
            ddim_last=cfg.ddim_last,
        )
        save_npz_atomic(part, images=imgs.numpy(), key=np.array(key))
        images.append(imgs)
    result = torch.cat(images)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_npz_atomic(out_path, images=result.numpy(), labels=labels.numpy())
    shutil.rmtree(parts, ignore_errors=True)
    if d.world > 1:
        barrier()
    return result, labels


def _sample_part(model, diffusion, part: Path, key: str, labels, seeds, cfg: SampleConfig, w: float, device) -> None:
    """One chunk of a torchrun job's share, kept unless a finished file of the same config is there."""
    if part.exists():
        with np.load(part) as data:
            if str(data["key"]) == key and len(data["images"]) == len(labels):
                return
    imgs = sample_images(model, diffusion, labels=labels, seeds=seeds, sampler=cfg.sampler, steps=cfg.steps,
                         eta=cfg.eta, guidance=w, batch_size=cfg.batch_size, device=device,
                         precision=cfg.precision, ddim_last=cfg.ddim_last)  # fmt: skip
    save_npz_atomic(part, images=imgs.numpy(), key=np.array(key))
