"""Samplers (ancestral DDPM, DDIM) and the resumable generation of evaluation sets.

Every image owns a seed.  Its initial noise and every later noise draw come from a CPU
``torch.Generator`` seeded with that seed and consumed in the same order whatever the batch,
so the same image comes out for any batch size, GPU count or device (edm's generate.py habit).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmark.core.config import SampleConfig
from benchmark.core.device import autocast, resolve_precision
from benchmark.core.distributed import barrier, current
from benchmark.core.errors import ConfigError
from benchmark.core.files import save_npz_atomic
from benchmark.engine.diffusion import GaussianDiffusion, guided_eps

SAMPLERS = ("ddim", "ddpm")


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


@torch.no_grad()
def _sample_batch(model, diffusion: GaussianDiffusion, y, noise: _Noise, *, sampler, steps, eta, guidance):
    tab = diffusion.table(y.device)
    x = noise.draw()
    n = x.shape[0]
    if sampler == "ddpm":
        for i in reversed(range(diffusion.T)):
            t = torch.full((n,), i, dtype=torch.int64, device=y.device)
            eps = guided_eps(model, x, t, y, guidance)
            mean = tab["sqrt_recip_alpha"][i] * (x - tab["eps_coef"][i] * eps)
            x = mean + tab["sigma_large"][i] * noise.draw() if i > 0 else mean
    elif sampler == "ddim":
        seq = ddim_timesteps(diffusion.T, steps)
        ab = tab["alphas_bar"]
        for j in reversed(range(len(seq))):
            i = seq[j]
            t = torch.full((n,), i, dtype=torch.int64, device=y.device)
            eps = guided_eps(model, x, t, y, guidance)
            a_t = ab[i]
            a_prev = ab[seq[j - 1]] if j > 0 else torch.ones_like(a_t)
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
            if eta > 0 and j > 0:
                x = x + sigma * noise.draw()
    else:
        raise ConfigError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


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
) -> torch.Tensor:
    """Generate one image per (label, seed) pair; returns uint8 [N, C, H, W] on the CPU.

    ``precision``: the model's arithmetic, fp32 | bf16 | auto (bf16 where ``device`` runs it
    natively); the sampler's own update runs in fp32 either way."""
    if labels.shape != seeds.shape or labels.ndim != 1:
        raise ConfigError("labels and seeds must be 1-D tensors of equal length (one seed per image)")
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    device = torch.device(device)
    precision = resolve_precision(precision, device, key="sample.precision")
    shape = (model.in_channels, model.resolution, model.resolution)
    was_training = model.training
    model.eval()
    out = []
    try:
        starts = range(0, len(labels), batch_size)
        for s in tqdm(starts, desc=f"sampling ({sampler})", disable=not progress, leave=False):
            y = labels[s : s + batch_size].to(device)
            noise = _Noise(seeds[s : s + batch_size], shape, device)
            with autocast(precision, device):
                out.append(
                    _sample_batch(model, diffusion, y, noise, sampler=sampler, steps=steps, eta=eta, guidance=guidance).cpu()
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
    """Write ``n_per_class`` images of every class to ``out_path`` (.npz: images, labels).

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
    labels = balanced_labels(num_classes, n_per_class)
    seeds = sample_seeds(seed, len(labels))
    if paired_with is not None and paired_with != n_per_class:
        if paired_with < n_per_class:
            raise ValueError(f"paired_with={paired_with} must be at least n_per_class={n_per_class}")
        seeds = sample_seeds(seed, num_classes * paired_with).view(num_classes, paired_with)[:, :n_per_class].reshape(-1)
    precision = resolve_precision(cfg.precision, device, key="sample.precision")
    cfg = replace(cfg, precision=precision)
    key = hashlib.sha256(
        repr((cfg.sampler, cfg.steps, cfg.eta, float(w), seed, num_classes, n_per_class, precision)
             + ((paired_with,) if paired_with not in (None, n_per_class) else ())).encode()
    ).hexdigest()[:16]
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
    for s in tqdm(starts, desc=f"generating {out_path.name}", disable=not progress):
        part = parts / f"chunk_{s:08d}.npz"
        if part.exists():
            with np.load(part) as data:
                if str(data["key"]) == key and len(data["images"]) == len(labels[s : s + chunk]):
                    images.append(torch.from_numpy(data["images"]))
                    continue
        imgs = sample_images(
            model, diffusion, labels=labels[s : s + chunk], seeds=seeds[s : s + chunk], sampler=cfg.sampler,
            steps=cfg.steps, eta=cfg.eta, guidance=w, batch_size=cfg.batch_size, device=device, precision=precision,
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
                         precision=cfg.precision)  # fmt: skip
    save_npz_atomic(part, images=imgs.numpy(), key=np.array(key))
