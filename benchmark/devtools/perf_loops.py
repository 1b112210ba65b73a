"""The three training arms of ``python -m benchmark.devtools.perf``: the harness, a plain reference loop, the bare step.

* harness: the real ``benchmark.engine.trainer.train`` (what a grid cell pays), timed from its own log;
* reference: the loop written the straightforward way, as the official CBDM code does it: fp32,
  a DataLoader over a TensorDataset with shuffle, CBDM's two evaluations as two separate forward
  passes, the EMA by a state_dict copy loop and ``.item()`` every step;
* bare: forward + backward + the harness's Adam on one fixed batch, nothing else (the limit).

Arms run in rounds in alternating order, each after its own untimed warm-up steps; a figure is
the median over rounds and a ratio the median of per-round ratios.
"""

from __future__ import annotations

import copy
import csv
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from benchmark.core.config import Config
from benchmark.core.device import autocast, resolve_precision
from benchmark.engine.backbone import build_unet
from benchmark.engine.diffusion import GaussianDiffusion
from benchmark.engine.trainer import train
from methods import get_method

METHODS = ("ddpm", "cbdm")  # the methods with a reference loop


def fake_dataset(*, channels: int, resolution: int, num_classes: int, n_max: int = 500, imbalance: float = 0.01):
    counts = np.array([int(n_max * imbalance ** (i / max(1, num_classes - 1))) for i in range(num_classes)])
    g = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.full((int(n),), c, dtype=torch.int64) for c, n in enumerate(counts)])
    images = torch.randint(0, 256, (len(labels), channels, resolution, resolution), generator=g, dtype=torch.uint8)
    return SimpleNamespace(
        train_images=images, train_labels=labels, counts=counts, num_classes=num_classes, channels=channels,
        resolution=resolution, source=SimpleNamespace(hflip=True), fingerprint="perf",
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cuda_flags(device: torch.device, *, matmul_tf32: bool, cudnn_tf32: bool, cudnn_benchmark: bool) -> None:
    # train() sets these process-wide; each arm sets its own so the order of arms cannot leak them
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        torch.backends.cudnn.benchmark = cudnn_benchmark


def peak_start(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_mib(device: torch.device, base: int) -> float:
    """CUDA: the arm's peak allocation above what was live before it.  CPU: the process's peak RSS."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------- the three training arms


def harness_seconds(cfg: Config, data, name: str, *, steps: int, warm: int, device, tmp: Path, tag: str) -> float:
    """Seconds the real loop spends on ``steps`` steps after ``warm`` steps, read from its own log."""
    if steps % warm:
        raise ValueError("timed steps must be a multiple of the warm-up steps (one log row per warm-up window)")
    tc = replace(cfg.train, steps=warm + steps, log_every=warm, ckpt_every=warm + steps)
    method = get_method(name, class_counts=data.counts, options=cfg.method)
    run_dir = tmp / tag
    train(cfg=replace(cfg, train=tc), dataset=data, method=method, run_dir=run_dir, seed=0, device=device,
          progress=False)
    with open(run_dir / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))[1:]  # the first window is the warm-up
    return sum(warm * tc.batch_size / float(r["images_per_s"]) for r in rows)


def _ema_state_dict(model: torch.nn.Module, ema: torch.nn.Module, decay: float) -> None:
    # the EMA of the official DDPM/CBDM PyTorch code: a python loop over the state dict, every step
    src, dst = model.state_dict(), ema.state_dict()
    for key in src:
        dst[key].data.copy_(dst[key].data * decay + src[key].data * (1 - decay))


def reference_loss(model, x0, t, y, noise, y_prime, *, sqrt_ab, sqrt_1m_ab, T: int, tau: float, gamma: float):
    """The reference loop's loss: DDPM's, plus CBDM's two terms from a second, separate forward
    pass when ``y_prime`` is given (the same objective as ``methods.cbdm.cbdm_loss``)."""
    x_t = sqrt_ab[t].view(-1, 1, 1, 1) * x0 + sqrt_1m_ab[t].view(-1, 1, 1, 1) * noise
    eps = model(x_t, t, y)
    loss = F.mse_loss(eps, noise)
    if y_prime is not None:
        eps_p = model(x_t, t, y_prime)  # the second, separate forward pass
        w = tau * t.float() / T
        loss = loss + (w * (eps - eps_p.detach()).square().mean((1, 2, 3))).mean()
        loss = loss + gamma * (w * (eps.detach() - eps_p).square().mean((1, 2, 3))).mean()
    return loss


class ReferenceLoop:
    """The training loop written the straightforward way (what the official CBDM code does)."""

    def __init__(self, cfg: Config, data, name: str, *, device: torch.device) -> None:
        tc, self.name, self.device, self.cfg = cfg.train, name, device, cfg
        torch.manual_seed(0)
        self.model = build_unet(cfg.model, channels=data.channels, resolution=data.resolution,
                                num_classes=data.num_classes).to(device)
        self.ema = copy.deepcopy(self.model)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=tc.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / max(1, tc.warmup)))
        images = data.train_images.float() / 127.5 - 1.0
        self.loader = DataLoader(TensorDataset(images, data.train_labels), batch_size=tc.batch_size,
                                 shuffle=True, drop_last=True)
        self.it = iter(self.loader)
        d = GaussianDiffusion.from_config(cfg.diffusion)
        self.T = d.T
        self.sqrt_ab = d.alphas_bar.sqrt().float().to(device)
        self.sqrt_1m_ab = (1 - d.alphas_bar).sqrt().float().to(device)
        counts = torch.as_tensor(data.counts, dtype=torch.float32)
        self.prior = (counts / counts.sum()).to(device)
        self.null = data.num_classes
        self.rng = np.random.default_rng(0)
        self.losses: list[float] = []

    def step(self) -> None:
        tc, o, dev = self.cfg.train, self.cfg.method, self.device
        try:
            x0, y = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            x0, y = next(self.it)
        flip = torch.rand(x0.shape[0]) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0).to(dev)
        y = y.to(dev)
        cond = self.rng.random() >= tc.label_drop
        if not cond:
            y = torch.full_like(y, self.null)
        t = torch.randint(self.T, (x0.shape[0],), device=dev)
        noise = torch.randn_like(x0)
        y_prime = None
        if self.name == "cbdm" and cond:
            y_prime = torch.multinomial(self.prior, x0.shape[0], replacement=True)
        loss = reference_loss(self.model, x0, t, y, noise, y_prime, sqrt_ab=self.sqrt_ab, sqrt_1m_ab=self.sqrt_1m_ab,
                              T=self.T, tau=o.cbdm.tau, gamma=o.cbdm.gamma)
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.opt.step()
        self.sched.step()
        _ema_state_dict(self.model, self.ema, tc.ema_decay)
        self.losses.append(loss.item())


class BareStep:
    """The limit: forward + backward + the harness's Adam on one fixed batch, nothing else.

    Same model settings as the harness (channels_last, ``train.precision``'s autocast, compile); for
    cbdm the forward runs over the doubled batch [x_t; x_t] that CBDM's loss needs.
    """

    def __init__(self, cfg: Config, data, name: str, *, device: torch.device) -> None:
        tc, self.device = cfg.train, device
        torch.manual_seed(0)
        model = build_unet(cfg.model, channels=data.channels, resolution=data.resolution,
                           num_classes=data.num_classes).to(device)
        if tc.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.params = list(model.parameters())
        cuda = device.type == "cuda"
        self.opt = torch.optim.Adam(self.params, lr=tc.lr, **({"fused": True} if cuda else {"foreach": True}))
        self.model = torch.compile(model) if tc.compile else model
        self.autocast = autocast(resolve_precision(tc.precision, device, key="train.precision"), device)
        n = tc.batch_size * (2 if name == "cbdm" else 1)
        shape = (n, data.channels, data.resolution, data.resolution)
        self.x = torch.randn(shape, device=device)
        if tc.channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.noise = torch.randn(shape, device=device)
        self.t = torch.randint(cfg.diffusion.T, (n,), device=device)
        self.y = torch.randint(data.num_classes, (n,), device=device)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with self.autocast:
            out = self.model(self.x, self.t, self.y)
        (out.float() - self.noise).square().mean().backward()
        self.opt.step()


def loop_seconds(arm, *, steps: int, warm: int, device: torch.device) -> float:
    for _ in range(warm):
        arm.step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        arm.step()
    sync(device)
    return time.perf_counter() - t0


def measure_training(cfg: Config, data, name: str, *, rounds: int, steps: int, warm: int, device,
                     precisions: tuple[str, ...] = ("fp32",)) -> dict:
    """images/s per arm (median, min, max over rounds), per-round ratios, peak memory per arm.

    The harness and bare arms run once per precision (``harness fp32``, ``bare bf16``, ...); the
    reference loop is fp32 as the official code is.  Ratios are medians of per-round ratios.
    """
    B = cfg.train.batch_size
    arms = [f"harness {p}" for p in precisions] + ["reference"] + [f"bare {p}" for p in precisions]
    ips: dict[str, list[float]] = {a: [] for a in arms}
    peak = dict.fromkeys(ips, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for arm in (arms if r % 2 == 0 else arms[::-1]):
                kind, _, prec = arm.partition(" ")
                acfg = replace(cfg, train=replace(cfg.train, precision=prec or "fp32"))
                base = peak_start(device)
                if kind == "harness":
                    sec = harness_seconds(acfg, data, name, steps=steps, warm=warm, device=device,
                                          tmp=Path(tmp), tag=f"{name}-{prec}-{r}")
                else:
                    if kind == "reference":
                        # torch's defaults: what the plain loop runs with
                        _cuda_flags(device, matmul_tf32=False, cudnn_tf32=True, cudnn_benchmark=False)
                        obj = ReferenceLoop(acfg, data, name, device=device)
                    else:
                        _cuda_flags(device, matmul_tf32=cfg.train.tf32 and cfg.train.tf32_matmul, cudnn_tf32=cfg.train.tf32,
                                    cudnn_benchmark=True)
                        obj = BareStep(acfg, data, name, device=device)
                    sec = loop_seconds(obj, steps=steps, warm=warm, device=device)
                    del obj
                ips[arm].append(steps * B / sec)
                peak[arm] = max(peak[arm], peak_mib(device, base))
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(ips[a], ips[b]))  # noqa: E731
    out = {"ips": ips, "peak": peak, "vs_ref": {p: ratio(f"harness {p}", "reference") for p in precisions},
           "vs_bare": {p: ratio(f"harness {p}", f"bare {p}") for p in precisions}}
    if {"fp32", "bf16"} <= set(precisions):
        out["bf16_vs_fp32"] = {k: ratio(f"{k} bf16", f"{k} fp32") for k in ("harness", "bare")}
    return out


def gemm_tflops(device: torch.device | str = "cpu", n: int = 2048, reps: int = 5) -> float:
    """TFLOP/s of one fp32 n x n matrix product (TF32 off), best of ``reps`` after a warm-up: the
    practical compute limit the training rates and the k-NN pass are set against on a device with
    no published peak."""
    device = torch.device(device)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a @ b
        best = float("inf")
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    return 2 * n**3 / best / 1e12


def numpy_gemm_tflops(n: int = 2048, reps: int = 3) -> float:
    """TFLOP/s of one float64 n x n product through numpy's BLAS, best of ``reps`` after a warm-up: the
    rate of FID's covariances and KID's kernels, which run in float64 on the CPU."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(n, n)), rng.normal(size=(n, n))
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def fid_kid_flops(n_gen: int, n_ref: int, dim: int, kid_subsets: int, kid_subset_size: int) -> float:
    """The float64 FLOP one overall FID and KID cannot avoid: both covariances (a symmetric product,
    n d^2 each) and, per KID subset, the two symmetric kernels (m^2 d each) and the cross one (2 m^2 d)."""
    m = min(kid_subset_size, n_gen, n_ref)
    return float(dim) * dim * (n_gen + n_ref) + kid_subsets * 4.0 * m * m * dim


def cpu_gemm_tflops(n: int = 2048, reps: int = 5) -> float:
    """``gemm_tflops`` on the CPU."""
    return gemm_tflops("cpu", n, reps)


def train_flops_per_image(cfg: Config, data, *, device: torch.device) -> float:
    """Forward + backward FLOPs of one training image (one forward; cbdm pays two)."""
    model = build_unet(cfg.model, channels=data.channels, resolution=data.resolution,
                       num_classes=data.num_classes).to(device)
    n = 2
    x = torch.randn(n, data.channels, data.resolution, data.resolution, device=device)
    with FlopCounterMode(display=False) as fc:
        model(x, torch.zeros(n, dtype=torch.int64, device=device), torch.zeros(n, dtype=torch.int64, device=device)
              ).square().mean().backward()
    return fc.get_total_flops() / n
