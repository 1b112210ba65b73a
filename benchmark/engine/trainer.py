"""The one training loop every method shares (the method supplies pieces, never a loop of its own).

Adam + linear warmup + grad-norm clipping + EMA, label drop for guidance, the dataset resident
on the device as uint8 with batches and flips drawn there (``batches.py``).  Randomness: data
order, flips, t, noise and auxiliary labels come from one device generator; the whole-batch
label-drop coin from a CPU generator (so branching on it never waits for the device); weight
init and dropout from the global RNG, forked for the duration of the run.  All three states go
into each checkpoint, so a resumed run continues bit-identically on the CPU.  The host syncs
with the device only every ``log_every`` steps (logging and the non-finite check) and at
checkpoints.

Where things happen, so a change has one place to go: the backbone is built in
:func:`build_model` and handed to the method's ``wrap_model`` in :func:`_setup` (``model.pt``
gets it back through ``export_model`` in :func:`_save_model`), wrapped for the forward pass
(DDP, ``torch.compile``) in :func:`_wrap`, autocast is entered and the method's loss terms are called in :func:`_objective`, one
optimiser step is :func:`_step`, logging is :class:`_Window`, checkpoints are
:func:`_save_checkpoint` / :func:`_restore`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from benchmark.core.config import Config, TrainConfig, to_json
from benchmark.core.device import autocast, resolve_precision, train_numerics
from benchmark.core.distributed import (
    Dist,
    all_gather,
    average_grads,
    barrier,
    current,
    mean,
    shard_draws,
)
from benchmark.core.errors import DataError, TrainingError
from benchmark.core.progress import progress as progress_bar
from benchmark.engine.backbone import UNet, build_unet, unet_kwargs
from benchmark.engine.batches import Batch, BatchDrawer, Batches
from benchmark.engine.checkpoint import (
    TrainLog,
    atomic_save,
    ema_checkpoint_name,
    latest_checkpoint,
    load,
    prune_checkpoints,
)
from benchmark.engine.diffusion import GaussianDiffusion
from benchmark.engine.export import export_weights
from benchmark.engine.trackers import make_tracker, sample_grids

if TYPE_CHECKING:  # the loop only calls the interface; methods/ sits above the engine
    from methods.base import Method

__all__ = ["BatchDrawer", "build_model", "load_model", "train"]


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
    # auto -> fp32 | bf16 on this device; the run (and its checkpoints) carry the resolved one
    cfg = replace(cfg, train=replace(cfg.train, precision=resolve_precision(cfg.train.precision, device,
                                                                           key="train.precision")))
    tc = cfg.train
    if len(dataset.train_labels) == 0:
        raise DataError("the training set is empty; check the dataset and imbalance settings")
    cuda = device.type == "cuda"
    init_seed, dev_seed, host_seed = _seeds(seed)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
    # TF32 and cuDNN autotuning for this run only: sampling and evaluation after it get the caller's settings
    with train_numerics(device, tf32=tc.tf32, tf32_matmul=tc.tf32_matmul), torch.random.fork_rng(devices=devices):
        torch.manual_seed(init_seed)
        run = _setup(cfg=cfg, dataset=dataset, method=method, run_dir=run_dir, seed=seed, device=device,
                     dev_seed=dev_seed, host_seed=host_seed)  # fmt: skip
        _loop(run, progress=progress)
        return _save_model(run)


def build_model(cfg: Config, dataset, device: torch.device) -> tuple[UNet, dict]:
    """The backbone of a run (from ``train.init_from`` when set) and the kwargs that rebuild it."""
    tc = cfg.train
    model = build_unet(cfg.model, channels=dataset.channels, resolution=dataset.resolution,
                       num_classes=dataset.num_classes).to(device)  # fmt: skip
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
    return model, kwargs


@dataclass
class _Run:
    """Everything one training run holds; the functions below read it and advance ``step``."""

    cfg: Config
    method: Method
    device: torch.device
    dist: Dist
    model: nn.Module  # the trained backbone, as the method wraps it (what the checkpoint and EMA track)
    kwargs: dict  # rebuilds the plain backbone (model.pt, through method.export_model)
    ema: nn.Module
    aux: dict[str, nn.Module]  # the method's own trainable modules (see methods/base.py)
    model_params: list[nn.Parameter]
    ema_params: list[nn.Parameter]  # in the order of model_params
    params: list[nn.Parameter]  # what the optimiser steps and clipping sees: model + aux
    opt: torch.optim.Optimizer
    diffusion: GaussianDiffusion
    gen: torch.Generator  # the device stream: batches, t, noise, auxiliary labels
    host: torch.Generator  # the host stream: the whole-batch label-drop coin
    identity: str  # a checkpoint from another configuration is refused
    run_dir: Path
    step: int = 0
    batches: Batches | None = None
    net: nn.Module | None = None  # what loss_terms calls: the model wrapped for the forward pass
    extra: list[nn.Parameter] = field(default_factory=list)  # parameters outside DDP: averaged by hand
    groups: list[str] = field(default_factory=list)  # each class's group: the trackers' sample grids

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"


def _setup(
    *, cfg: Config, dataset, method: Method, run_dir: Path, seed: int, device: torch.device, dev_seed: int,
    host_seed: int,
) -> _Run:
    """Build the model, optimiser and generators, resume from the latest checkpoint, draw batches from the data."""
    tc = cfg.train
    backbone, kwargs = build_model(cfg, dataset, device)
    # the module trained in place of the backbone (CM's expert parts; the backbone itself for most methods)
    model = method.wrap_model(backbone).to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False)
    # trainable modules the method owns (CORAL's projection head): optimised, clipped and
    # checkpointed with the model, but not part of model.pt (sampling never uses them)
    aux = {k: m.to(device).train() for k, m in method.trainable_modules(model).items()}
    model_params = [p for p in model.parameters() if p.requires_grad]
    params = model_params + [p for m in aux.values() for p in m.parameters() if p.requires_grad]
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    run = _Run(
        cfg=cfg, method=method, device=device, dist=current(), model=model, kwargs=kwargs, ema=ema, aux=aux,
        model_params=model_params, ema_params=list(ema.parameters()), params=params,
        opt=torch.optim.Adam(params, lr=tc.lr, **fused), diffusion=GaussianDiffusion.from_config(cfg.diffusion),
        gen=torch.Generator(device=device).manual_seed(dev_seed), host=torch.Generator().manual_seed(host_seed),
        identity=_identity(cfg, method, dataset, seed, kwargs), run_dir=run_dir,
        # stand-in datasets (perf, tests) may have no groups: one group then
        groups=list(getattr(dataset, "groups", None) or ["all"] * dataset.num_classes),
    )
    run.ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = _restore(run)
    _seed_rank_streams(run, state, seed)
    run.batches = Batches(
        images=dataset.train_images.to(device), labels=dataset.train_labels.to(device=device, dtype=torch.int64),
        num_classes=dataset.num_classes, batch_size=tc.batch_size,
        hflip=dataset.source.hflip if tc.hflip is None else tc.hflip, label_drop=tc.label_drop,
        label_drop_mode=tc.label_drop_mode, channels_last=tc.channels_last, gen=run.gen, host=run.host,
        dist=run.dist,
    )
    run.net = _wrap(run)
    in_ddp = {id(p) for p in model.parameters()}
    run.extra = [p for p in params if id(p) not in in_ddp]
    return run


def _wrap(run: _Run) -> nn.Module:
    """The module the method's loss terms call: the model, under DDP on several ranks, compiled if asked."""
    net = run.model
    if run.dist.world > 1:
        ids = [run.device.index or 0] if run.cuda else None
        net = torch.nn.parallel.DistributedDataParallel(run.model, device_ids=ids)
    return torch.compile(net) if run.cfg.train.compile else net


def _restore(run: _Run) -> dict | None:
    """Continue from the latest checkpoint of this run, if any; return its state."""
    path = latest_checkpoint(run.ckpt_dir)
    if path is None:
        return None
    state = load(path)
    if state["identity"] != run.identity:
        raise TrainingError(
            f"{path} was written by a different run configuration; delete {run.ckpt_dir} to start afresh "
            "or use another results folder"
        )
    run.model.load_state_dict(state["model"])
    run.ema.load_state_dict(state["ema"])
    for k, m in run.aux.items():
        m.load_state_dict(state["aux"][k])
    run.opt.load_state_dict(state["optimizer"])
    run.gen.set_state(state["gen_device"])
    run.host.set_state(state["gen_host"])
    torch.set_rng_state(state["rng_cpu"])
    if run.cuda and state["rng_cuda"].numel():
        torch.cuda.set_rng_state(state["rng_cuda"], run.device)
    run.step = int(state["step"])
    if run.dist.main:  # said on the console and in the cell's log (cell.log), so a resume is never silent
        message = f"resuming from step {run.step} of {run.cfg.train.steps} ({path})"
        logging.getLogger("ltgen").info(message)
        print(f"  {message}", flush=True)
    return state


def _seed_rank_streams(run: _Run, state: dict | None, seed: int) -> None:
    """Ranks 1.. own dropout streams; rank 0 continues the one-process stream."""
    d = run.dist
    if d.world == 1 or d.main:
        return
    ranks = state.get("rng_cpu_ranks") if state is not None else None
    if ranks is not None and len(ranks) == d.world:
        torch.set_rng_state(ranks[d.rank].clone())  # a row of the stack: own its storage
        if run.cuda and state["rng_cuda_ranks"][d.rank].numel():
            torch.cuda.set_rng_state(state["rng_cuda_ranks"][d.rank].clone(), run.device)
    else:  # a fresh run, or resumed on a different number of processes
        torch.manual_seed(int(np.random.SeedSequence([seed, d.rank, run.step]).generate_state(1)[0]))


def _autocast(run: _Run) -> torch.autocast:
    """The precision the forward pass runs in: bf16 autocast when ``train.precision`` resolved to bf16
    (on CUDA or a CPU with bf16 units), else fp32; parameters, gradients and Adam stay fp32."""
    return autocast(run.cfg.train.precision, run.device)


def _objective(run: _Run, batch: Batch) -> list[torch.Tensor]:
    """The weighted batch mean of each of the method's loss terms (their sum is the loss)."""
    method, names = run.method, tuple(run.method.term_names)
    with _autocast(run), shard_draws(run.gen, local=run.batches.local):
        terms = method.loss_terms(run.net, run.diffusion, batch.x0, batch.labels, run.gen)
    if tuple(terms) != names:
        raise TrainingError(f"method {method.name!r} returned terms {tuple(terms)}, declared {names}")
    w = method.sample_weights(batch.y)
    return [(v * w).mean() if w is not None else v.mean() for v in terms.values()]


def learning_rate(tc: TrainConfig, step: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based): linear warmup, then train.lr_schedule."""
    if tc.warmup > 0 and step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    if tc.lr_schedule == "cosine":
        span = max(1, tc.steps - tc.warmup)
        return tc.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - tc.warmup) / span)))
    return tc.lr


def ema_decay(tc: TrainConfig, step: int) -> float:
    """The EMA decay of step ``step``: train.ema_decay, capped early on when train.ema_warmup is set."""
    return min(tc.ema_decay, (1 + step) / (10 + step)) if tc.ema_warmup else tc.ema_decay


def _step(run: _Run, batch: Batch) -> torch.Tensor:
    """One optimiser step on ``batch``; returns the logged figures (each term's mean, grad norm)."""
    tc = run.cfg.train
    means = _objective(run, batch)
    loss = torch.stack(means).sum()
    run.opt.zero_grad(set_to_none=True)
    loss.backward()  # DDP averages the model's gradients over ranks: the global batch mean
    if run.extra and run.dist.world > 1:
        average_grads(run.extra)
    clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")
    gnorm = torch.nn.utils.clip_grad_norm_(run.params, clip, foreach=True)
    run.opt.param_groups[0]["lr"] = learning_rate(tc, run.step)
    run.opt.step()
    torch._foreach_lerp_(run.ema_params, run.model_params, 1.0 - ema_decay(tc, run.step))
    run.step += 1
    return torch.stack([*[m.detach().float() for m in means], gnorm.detach().float()])


class _Window:
    """The figures of the steps since the last log row, summed on the device; one host sync per row."""

    def __init__(self, run: _Run, bar) -> None:
        self.run, self.bar = run, bar
        self.names = tuple(run.method.term_names)
        columns = ["step", "loss", *self.names, "lr", "grad_norm", "images_per_s"]
        self.log = TrainLog(run.run_dir / "train_log.csv", columns, resume_step=run.step) if run.dist.main else _NoLog()
        self.tracker = make_tracker(run.cfg.train.logger if run.dist.main else "csv", run.run_dir, resume_step=run.step,
                                    config=json.loads(to_json(run.cfg)), config_json=to_json(run.cfg),
                                    name="/".join(run.run_dir.parts[-4:]))  # fmt: skip
        self.acc = torch.zeros(len(self.names) + 1, device=run.device)
        self.steps, self.t0 = 0, time.perf_counter()

    def add(self, figures: torch.Tensor) -> None:
        self.acc += figures
        self.steps += 1

    def restart_clock(self) -> None:
        self.t0 = time.perf_counter()

    def flush(self) -> None:
        """Write the window's mean figures; stop the run on a non-finite loss or gradient."""
        if self.steps == 0:
            return
        run, names, window = self.run, self.names, self.steps
        values = (mean(self.acc) / window).tolist()  # the one host sync of the window (same on every rank)
        if not all(np.isfinite(values)):
            last = latest_checkpoint(run.ckpt_dir)
            kept = f"the last good checkpoint {last} is kept" if last else "no checkpoint was written yet"
            raise TrainingError(
                f"non-finite loss or gradient between steps {run.step - window + 1} and {run.step} "
                f"({', '.join(f'{n}={v:.4g}' for n, v in zip([*names, 'grad_norm'], values))}); {kept}. "
                "Lower train.lr, set train.precision=fp32, or check the data and the method's loss terms."
            )
        dt = time.perf_counter() - self.t0
        terms = values[: len(names)]
        lr = run.opt.param_groups[0]["lr"]
        rate = window * run.cfg.train.batch_size / max(dt, 1e-9)
        self.log.write([run.step, sum(terms), *terms, lr, values[-1], rate])
        self.tracker.scalars(run.step, {"loss/total": sum(terms), **{f"loss/{n}": v for n, v in zip(names, terms)},
                                        "train/lr": lr, "train/grad_norm": values[-1], "train/images_per_s": rate})  # fmt: skip
        self.bar.set_postfix(loss=f"{sum(terms):.4f}")
        self.acc = torch.zeros_like(self.acc)
        self.steps = 0
        self.restart_clock()

    def grids(self) -> None:
        """A fixed-seed sample grid per class group from the EMA weights, for trackers that show images."""
        run = self.run
        if not self.tracker.wants_images:
            return
        sc = run.cfg.sample
        # the grid's main scale (the first of sample.guidance), else the method's official strength
        guidance = float(sc.guidance[0]) if sc.guidance is not None else float(run.method.official_guidance)
        model = run.method.export_model(run.ema)
        self.tracker.images(run.step, sample_grids(model, run.diffusion, groups=run.groups, sample_cfg=sc,
                                                   guidance=guidance, device=run.device))  # fmt: skip

    def close(self) -> None:
        self.log.close()
        self.tracker.close()


def _loop(run: _Run, *, progress: bool) -> None:
    """Train from ``run.step`` to ``train.steps``: log every ``log_every``, checkpoint every ``ckpt_every``."""
    tc = run.cfg.train
    run.model.train()
    bar = progress_bar(total=tc.steps, initial=run.step, desc=f"train {run.method.name}",
                       enabled=progress and run.dist.main, unit="step")  # fmt: skip
    window = _Window(run, bar)
    try:
        while run.step < tc.steps:
            batch = run.batches.draw(run.method.class_probs(run.step, tc.steps))
            window.add(_step(run, batch))
            bar.update(1)
            if run.step % tc.log_every == 0 or run.step == tc.steps:
                window.flush()
            if run.step in tc.keep_ema_at:  # a fine-tuning cell starts from these weights (cbdm-ft)
                _save_ema(run, run.ckpt_dir / ema_checkpoint_name(run.step))
            if run.step % tc.ckpt_every == 0 or run.step == tc.steps:
                window.flush()
                _save_checkpoint(run)
                window.grids()
                window.restart_clock()  # checkpoint time does not count against images/s
    finally:
        bar.close()
        window.close()


def _save_checkpoint(run: _Run) -> None:
    """Everything a bit-exact resume needs: weights, optimiser, step and every random stream."""
    d, step = run.dist, run.step
    state = {
        "model": run.model.state_dict(), "ema": run.ema.state_dict(), "optimizer": run.opt.state_dict(),
        "step": step, "gen_device": run.gen.get_state(), "gen_host": run.host.get_state(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(run.device) if run.cuda else torch.zeros(0, dtype=torch.uint8),
        "identity": run.identity, "config": to_json(run.cfg), "method": run.method.name,
        "aux": {k: m.state_dict() for k, m in run.aux.items()},
    }
    if d.world > 1:  # every rank's dropout stream, so a resume on as many processes is exact
        cpu_states, cuda_states = zip(*all_gather((state["rng_cpu"], state["rng_cuda"])))
        state["rng_cpu_ranks"], state["rng_cuda_ranks"] = torch.stack(cpu_states), torch.stack(cuda_states)
    if d.main:
        atomic_save(state, run.ckpt_dir / f"ckpt_{step:08d}.pt")
        prune_checkpoints(run.ckpt_dir, keep=f"ckpt_{step:08d}.pt")
    barrier()


def _save_model(run: _Run) -> Path:
    """model.pt: the EMA weights, the kwargs that rebuild the backbone and what produced them; the same
    weights as model.safetensors + model.json, which any tool loads without pickle (``export.py``)."""
    path = _save_ema(run, run.run_dir / "model.pt")
    if run.dist.main:
        export_weights(path)
    return path


def _save_ema(run: _Run, path: Path) -> Path:
    """The EMA weights at ``run.step`` in model.pt's format (model.pt itself, or a kept ema_<step>.pt)."""
    method, ident = run.method, json.loads(run.identity)
    info = {
        "method": method.name, "official_guidance": float(method.official_guidance), "seed": ident["seed"],
        "steps": run.step, "config": to_json(run.cfg), "fingerprint": ident["data"],
    }
    if run.dist.main:
        ema = method.export_model(run.ema).state_dict()  # a plain backbone (CM folds its expert parts in)
        atomic_save({"ema": ema, "model_kwargs": run.kwargs, "info": json.dumps(info)}, path)
    barrier()
    return path


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
