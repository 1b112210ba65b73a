"""Throughput of the engine: training images/s (ddpm, cbdm) and sampling images/s (DDIM + guidance).

    python -m benchmark.perf --size small --resolution 32 --batch 64 --device cpu --steps 20

Runs the real training loop (benchmark.trainer.train) on random data of the given shape, so
what it measures is what a benchmark cell pays.  Not a test; a yardstick for later work.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from methods import get_method

from .backbone import build_unet, count_parameters
from .config import MODEL_SIZES, Config, SampleConfig, TrainConfig
from .device import resolve_device
from .diffusion import GaussianDiffusion
from .sampling import balanced_labels, sample_images, sample_seeds


def fake_dataset(*, channels: int, resolution: int, num_classes: int, n_max: int = 500, imbalance: float = 0.01):
    counts = np.array([int(n_max * imbalance ** (i / max(1, num_classes - 1))) for i in range(num_classes)])
    g = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.full((int(n),), c, dtype=torch.int64) for c, n in enumerate(counts)])
    images = torch.randint(0, 256, (len(labels), channels, resolution, resolution), generator=g, dtype=torch.uint8)
    return SimpleNamespace(
        train_images=images, train_labels=labels, counts=counts, num_classes=num_classes, channels=channels,
        resolution=resolution, source=SimpleNamespace(hflip=True), fingerprint="perf",
    )


def train_throughput(cfg: Config, dataset, method_name: str, *, steps: int, device: torch.device) -> float:
    method = get_method(method_name, class_counts=dataset.counts, options=cfg.method)
    with tempfile.TemporaryDirectory() as tmp:
        warm = replace(cfg, train=replace(cfg.train, steps=2, log_every=2, ckpt_every=2))
        from .trainer import train

        train(cfg=warm, dataset=dataset, method=method, run_dir=Path(tmp) / "warm", seed=0, device=device, progress=False)
        timed = replace(cfg, train=replace(cfg.train, steps=steps, log_every=steps, ckpt_every=steps))
        train(cfg=timed, dataset=dataset, method=method, run_dir=Path(tmp) / "run", seed=0, device=device, progress=False)
        with open(Path(tmp) / "run" / "train_log.csv") as fh:
            return float(list(csv.DictReader(fh))[-1]["images_per_s"])


def sample_throughput(cfg: Config, dataset, *, n: int, steps: int, guidance: float, device: torch.device) -> float:
    model = build_unet(cfg.model, channels=dataset.channels, resolution=dataset.resolution,
                       num_classes=dataset.num_classes).to(device)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    labels = balanced_labels(dataset.num_classes, -(-n // dataset.num_classes))[:n]
    kw = dict(labels=labels, seeds=sample_seeds(0, n), sampler="ddim", steps=steps, guidance=guidance,
              batch_size=cfg.sample.batch_size, device=device)
    sample_images(model, diffusion, **{**kw, "labels": labels[:2], "seeds": kw["seeds"][:2], "steps": 2})  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    sample_images(model, diffusion, **kw)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=sorted(MODEL_SIZES))
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per method")
    p.add_argument("--methods", default="ddpm,cbdm")
    p.add_argument("--sample-n", type=int, default=None, help="images to sample (default: --batch)")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    model_cfg = MODEL_SIZES[args.size]
    cfg = Config(
        model=model_cfg,
        train=TrainConfig(batch_size=args.batch, warmup=10, compile=args.compile),
        sample=SampleConfig(batch_size=args.batch),
    )
    data = fake_dataset(channels=args.channels, resolution=args.resolution, num_classes=args.classes)
    n_params = count_parameters(build_unet(model_cfg, channels=args.channels, resolution=args.resolution,
                                           num_classes=args.classes))
    print(f"device={device} threads={torch.get_num_threads()} size={args.size} ({n_params / 1e6:.2f}M params) "
          f"{args.channels}x{args.resolution}x{args.resolution} batch={args.batch}")
    for name in args.methods.split(","):
        ips = train_throughput(cfg, data, name, steps=args.steps, device=device)
        print(f"train {name:>14}: {ips:9.1f} images/s  ({ips / args.batch:.2f} steps/s)")
    n = args.sample_n or args.batch
    ips = sample_throughput(cfg, data, n=n, steps=args.sample_steps, guidance=args.guidance, device=device)
    print(f"sample ddim-{args.sample_steps} w={args.guidance}: {ips:9.2f} images/s "
          f"({ips * args.sample_steps:.1f} image-steps/s, cond+uncond in one forward)")


if __name__ == "__main__":
    main()
