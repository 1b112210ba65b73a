"""The one training loop every method shares (the method supplies pieces, never a loop of its own).

Adam + linear warmup + grad-norm clipping + EMA, label drop for guidance, the dataset resident
on the device as uint8 with batches and flips drawn there.  Randomness: data order, flips, t,
noise and auxiliary labels come from one device generator; the whole-batch label-drop coin from
a CPU generator (so branching on it never waits for the device); weight init and dropout from
the global RNG, forked for the duration of the run.  All three states go into each checkpoint,
so a resumed run continues bit-identically on the CPU.  The host syncs with the device only
every ``log_every`` steps (logging and the non-finite check) and at checkpoints.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from benchmark.core.config import Config, to_json
from benchmark.core.distributed import (
    all_gather,
    average_grads,
    barrier,
    current,
    mean,
    shard_draws,
)
from benchmark.core.errors import DataError, TrainingError
from benchmark.engine.backbone import UNet, build_unet, unet_kwargs
from benchmark.engine.checkpoint import (
    TrainLog,
    atomic_save,
    latest_checkpoint,
    load,
    prune_checkpoints,
)
from benchmark.engine.diffusion import GaussianDiffusion

if TYPE_CHECKING:  # the loop only calls the interface; methods/ sits above the engine
    from methods.base import Method


class BatchDrawer:
    """Draws batch indices on the device: uniform over instances, or class first then instance."""

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        self.n = len(labels)
        self.order = torch.argsort(labels, stable=True)
        self.counts = torch.bincount(labels, minlength=num_classes)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self._counts_cpu = self.counts.cpu()  # validation of class_probs must not sync the device
        self._probs_src: torch.Tensor | None = None
        self._probs_dev: torch.Tensor | None = None

    def draw(self, batch: int, probs: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        device = self.order.device
        if probs is None:
            return torch.randint(0, self.n, (batch,), generator=gen, device=device)
        if probs is not self._probs_src:  # validate + move once per distinct tensor, not per step
            cpu_counts = self._counts_cpu
            if probs.shape != cpu_counts.shape or bool(((probs > 0) & (cpu_counts == 0)).any()):
                raise TrainingError(
                    "the method's class_probs must give one probability per class and none to a class "
                    "without training images; fix the method's class_probs()"
                )
            self._probs_src, self._probs_dev = probs, probs.to(device=device, dtype=torch.float32, non_blocking=True)
        c = torch.multinomial(self._probs_dev, batch, replacement=True, generator=gen)
        u = torch.rand(batch, generator=gen, device=device)
        j = torch.minimum((u * self.counts[c]).long(), self.counts[c] - 1)
        return self.order[self.starts[c] + j]


def _seeds(seed: int) -> tuple[int, int, int]:
    """Independent seeds for weight init/dropout, the device stream and the host stream."""
    a, b, c = np.random.SeedSequence(int(seed)).generate_state(3)
    return int(a), int(b), int(c)


def _identity(cfg: Config, method: Method, dataset, seed: int, kwargs: dict) -> str:
    t = cfg.train
    return json.dumps(
        {"model": kwargs, "method": method.name, "seed": seed, "batch": t.batch_size, "lr": t.lr,
         "steps": t.steps, "data": getattr(dataset, "fingerprint", None), "label_drop": t.label_drop},
        sort_keys=True,
    )


def train(
    *, cfg: Config, dataset, method: Method, run_dir: Path, seed: int, device: torch.device | str,
    progress: bool = True,
) -> Path:
    """Train ``method`` on ``dataset``; return run_dir/'model.pt' (EMA weights). Skips if it exists."""
    run_dir = Path(run_dir)
    final = run_dir / "model.pt"
    if final.exists():
        return final
    device = torch.device(device)
    tc = cfg.train
    if len(dataset.train_labels) == 0:
        raise DataError("the training set is empty; check the dataset and imbalance settings")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = tc.tf32
        torch.backends.cudnn.allow_tf32 = tc.tf32
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotune the convolutions once (as edm does)
    init_seed, dev_seed, host_seed = _seeds(seed)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(init_seed)
        return _run(cfg, dataset, method, run_dir, seed, device, progress, dev_seed, host_seed)


def _run(cfg, dataset, method, run_dir, seed, device, progress, dev_seed, host_seed) -> Path:
    tc = cfg.train
    cuda = device.type == "cuda"
    model = build_unet(cfg.model, channels=dataset.channels, resolution=dataset.resolution,
                       num_classes=dataset.num_classes).to(device)
    kwargs = unet_kwargs(model, cfg.model)
    if tc.init_from:
        start = load(Path(tc.init_from))
        if start.get("model_kwargs") != kwargs:
            raise TrainingError(
                f"train.init_from={tc.init_from} holds a different model; use a model.pt of the same size and data"
            )
        model.load_state_dict(start["ema"])
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False)
    # trainable modules the method owns (CORAL's projection head): optimised, clipped and
    # checkpointed with the model, but not part of model.pt (sampling never uses them)
    aux = {k: m.to(device).train() for k, m in method.trainable_modules(model).items()}
    model_params = [p for p in model.parameters() if p.requires_grad]
    params = model_params + [p for m in aux.values() for p in m.parameters() if p.requires_grad]
    ema_params = list(ema.parameters())
    opt = torch.optim.Adam(params, lr=tc.lr, **({"fused": True} if cuda else {"foreach": True}))
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    gen = torch.Generator(device=device).manual_seed(dev_seed)
    host = torch.Generator().manual_seed(host_seed)
    identity = _identity(cfg, method, dataset, seed, kwargs)

    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    step = 0
    path = latest_checkpoint(ckpt_dir)
    if path is not None:
        state = load(path)
        if state["identity"] != identity:
            raise TrainingError(
                f"{path} was written by a different run configuration; delete {ckpt_dir} to start afresh "
                "or use another results folder"
            )
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        for k, m in aux.items():
            m.load_state_dict(state["aux"][k])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["gen_device"])
        host.set_state(state["gen_host"])
        torch.set_rng_state(state["rng_cpu"])
        if cuda and state["rng_cuda"].numel():
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        step = int(state["step"])
    d = current()
    if d.world > 1 and not d.main:  # ranks 1.. own dropout streams; rank 0 continues the one-process stream
        ranks = state.get("rng_cpu_ranks") if path is not None else None
        if ranks is not None and len(ranks) == d.world:
            torch.set_rng_state(ranks[d.rank].clone())  # a row of the stack: own its storage
            if cuda and state["rng_cuda_ranks"][d.rank].numel():
                torch.cuda.set_rng_state(state["rng_cuda_ranks"][d.rank].clone(), device)
        else:  # a fresh run, or resumed on a different number of processes
            torch.manual_seed(int(np.random.SeedSequence([seed, d.rank, step]).generate_state(1)[0]))

    images = dataset.train_images.to(device).contiguous()
    labels = dataset.train_labels.to(device=device, dtype=torch.int64)
    drawer = BatchDrawer(labels, dataset.num_classes)
    hflip = dataset.source.hflip if tc.hflip is None else tc.hflip
    null = dataset.num_classes
    b = d.local_batch(tc.batch_size)  # this rank's share of the global batch
    net = model
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index or 0] if cuda else None)
    in_ddp = {id(p) for p in model.parameters()}
    extra = [p for p in params if id(p) not in in_ddp]  # a method's own modules: averaged by hand
    fmodel = torch.compile(net) if tc.compile else net
    names = tuple(method.term_names)
    columns = ["step", "loss", *names, "lr", "grad_norm", "images_per_s"]
    log = TrainLog(run_dir / "train_log.csv", columns, resume_step=step) if d.main else _NoLog()
    acc = torch.zeros(len(names) + 1, device=device)
    window, t0 = 0, time.perf_counter()
    clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")
    B = tc.batch_size
    model.train()

    def save_checkpoint() -> None:
        cstate = {
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(), "step": step,
            "gen_device": gen.get_state(), "gen_host": host.get_state(), "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if cuda else torch.zeros(0, dtype=torch.uint8),
            "identity": identity, "config": to_json(cfg), "method": method.name,
            "aux": {k: m.state_dict() for k, m in aux.items()},
        }
        if d.world > 1:  # every rank's dropout stream, so a resume on as many processes is exact
            cpu_states, cuda_states = zip(*all_gather((cstate["rng_cpu"], cstate["rng_cuda"])))
            cstate["rng_cpu_ranks"], cstate["rng_cuda_ranks"] = torch.stack(cpu_states), torch.stack(cuda_states)
        if d.main:
            atomic_save(cstate, ckpt_dir / f"ckpt_{step:08d}.pt")
            prune_checkpoints(ckpt_dir, keep=f"ckpt_{step:08d}.pt")
        barrier()

    def flush() -> None:
        nonlocal window, t0, acc
        if window == 0:
            return
        values = (mean(acc) / window).tolist()  # the one host sync of the window (same on every rank)
        if not all(np.isfinite(values)):
            last = latest_checkpoint(ckpt_dir)
            kept = f"the last good checkpoint {last} is kept" if last else "no checkpoint was written yet"
            raise TrainingError(
                f"non-finite loss or gradient between steps {step - window + 1} and {step} "
                f"({', '.join(f'{n}={v:.4g}' for n, v in zip([*names, 'grad_norm'], values))}); {kept}. "
                "Lower train.lr, set train.amp=none, or check the data and the method's loss terms."
            )
        dt = time.perf_counter() - t0
        terms = values[: len(names)]
        log.write([step, sum(terms), *terms, opt.param_groups[0]["lr"], values[-1], window * B / max(dt, 1e-9)])
        bar.set_postfix(loss=f"{sum(terms):.4f}")
        acc = torch.zeros_like(acc)
        window, t0 = 0, time.perf_counter()

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and tc.amp == "bf16")
    bar = tqdm(total=tc.steps, initial=step, desc=f"train {method.name}", disable=not progress or not d.main)
    try:
        while step < tc.steps:
            idx = drawer.draw(B, method.class_probs(step, tc.steps), gen)
            x = images[idx]
            if hflip:
                flip = torch.rand(B, generator=gen, device=device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            x0 = x.float() / 127.5 - 1.0
            if tc.channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            y = labels[idx]
            if tc.label_drop_mode == "batch":
                cond = bool(torch.rand((), generator=host) >= tc.label_drop)  # CPU coin: no device sync
                y_in = y if cond else torch.full_like(y, null)
            else:
                drop = torch.rand(B, generator=gen, device=device) < tc.label_drop
                cond, y_in = ~drop, torch.where(drop, null, y)
            if d.world > 1:  # the global batch was drawn exactly as in one process; keep this rank's slice
                sl = slice(d.rank * b, (d.rank + 1) * b)
                x0, y, y_in = x0[sl], y[sl], y_in[sl]
                cond = cond[sl] if isinstance(cond, torch.Tensor) else cond
            with autocast, shard_draws(gen, local=b):
                terms = method.loss_terms(fmodel, diffusion, x0, y_in, cond, gen)
            if tuple(terms) != names:
                raise TrainingError(f"method {method.name!r} returned terms {tuple(terms)}, declared {names}")
            w = method.sample_weights(y)
            means = [(v * w).mean() if w is not None else v.mean() for v in terms.values()]
            loss = torch.stack(means).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the model's gradients over ranks: the global batch mean
            if extra and d.world > 1:
                average_grads(extra)
            gnorm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
            opt.param_groups[0]["lr"] = tc.lr * min(1.0, (step + 1) / tc.warmup) if tc.warmup > 0 else tc.lr
            opt.step()
            torch._foreach_lerp_(ema_params, model_params, 1.0 - tc.ema_decay)
            acc += torch.stack([*[m.detach().float() for m in means], gnorm.detach().float()])
            step += 1
            window += 1
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.steps:
                flush()
            if step % tc.ckpt_every == 0 or step == tc.steps:
                flush()
                save_checkpoint()
                t0 = time.perf_counter()  # checkpoint time does not count against images/s
    finally:
        bar.close()
        log.close()
    info = {
        "method": method.name, "official_guidance": float(method.official_guidance), "seed": seed,
        "steps": step, "config": to_json(cfg), "fingerprint": getattr(dataset, "fingerprint", None),
    }
    final = run_dir / "model.pt"
    if d.main:
        atomic_save({"ema": ema.state_dict(), "model_kwargs": kwargs, "info": json.dumps(info)}, final)
    barrier()
    return final


class _NoLog:
    """Ranks 1.. of a torchrun job write no training log."""

    def write(self, row: list) -> None:
        pass

    def close(self) -> None:
        pass


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[UNet, dict]:
    """The EMA UNet stored by :func:`train` (eval mode, on ``device``) and its info dict."""
    state = load(Path(path))
    kw = dict(state["model_kwargs"])
    kw["ch_mult"], kw["attn_resolutions"] = tuple(kw["ch_mult"]), tuple(kw["attn_resolutions"])
    model = UNet(**kw)
    model.load_state_dict(state["ema"])
    return model.to(device).eval(), json.loads(state["info"])
