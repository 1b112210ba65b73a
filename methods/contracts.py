"""The contracts every method keeps, checked on a CPU in seconds: the same code runs in the test suite
(tests/test_contracts.py, tests/test_distributed.py) and in ``ltgen-bench check-method NAME``, so a
method from outside the package is held to what ours are held to before it spends a GPU hour.

Each contract is a function of the method's name (a composition too) that returns nothing or raises
:class:`ContractFailure` saying what broke:

* ``class-probs``: class sampling probabilities are a distribution that never draws an empty class;
* ``sample-weights``: per-sample weights are finite and positive;
* ``loss-terms``: the loss terms carry the declared ``term_names``, are finite, and draw their
  randomness only from the generator handed in (the global RNG must not matter);
* ``resume``: a few training steps, cut and resumed from the checkpoint, give the same weights, random
  streams and log bit for bit, and ``model.pt`` is the checkpoint's EMA as the method exports it;
* ``two-processes``: two gloo processes on the CPU give the one-process objective and weights.
"""

from __future__ import annotations

import csv
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from benchmark.core.config import Config, DiffusionConfig, ModelConfig, SampleConfig, TrainConfig
from benchmark.engine.backbone import build_unet
from benchmark.engine.batches import Labels
from benchmark.engine.checkpoint import latest_checkpoint, load
from benchmark.engine.diffusion import GaussianDiffusion
from benchmark.engine.trainer import _seeds, load_model, train

from .base import Method
from .registry import MethodConfig, resolve
from .resample import ResampleOptions


class ContractFailure(AssertionError):
    """A method broke a contract; the message says which and how."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ContractFailure(message)


TINY_MODEL = ModelConfig(ch=8, ch_mult=(1, 2), attn_resolutions=(4,), num_res_blocks=1, dropout=0.1)
EMPTY_CLASS_COUNTS = np.array([12, 6, 0, 2])  # class 2 has no training image
DIFF = GaussianDiffusion(T=50)


@dataclass(frozen=True)
class TinyData:
    """A stand-in for LongTailDataset with exactly the attributes the trainer reads (8x8 images)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    counts: np.ndarray
    num_classes: int
    channels: int
    resolution: int
    source: SimpleNamespace
    fingerprint: str = "tiny"
    groups: tuple[str, ...] = ()  # empty: one group, "all" (the trackers' sample grids)


def tiny_data(counts=(12, 6, 2), *, channels=1, resolution=8, hflip=True, seed=0) -> TinyData:
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    images = torch.randint(0, 256, (len(labels), channels, resolution, resolution), generator=g, dtype=torch.uint8)
    return TinyData(images, labels, np.asarray(counts), len(counts), channels, resolution, SimpleNamespace(hflip=hflip))


def tiny_config(**train_kw) -> Config:
    """Six steps of a UNet of a few thousand parameters, fp32 (exact equalities must not depend on bf16
    units), class probabilities that change with the step (resample's progressive schedule)."""
    base = TrainConfig(steps=6, batch_size=4, warmup=2, ema_decay=0.9, ckpt_every=3, log_every=2, precision="fp32")
    return Config(
        model=TINY_MODEL, diffusion=DiffusionConfig(T=50), train=replace(base, **train_kw),
        sample=SampleConfig(steps=5, n_per_class=2, batch_size=4, precision="fp32"),
        method=MethodConfig(resample=ResampleOptions(schedule="progressive")),
    )  # fmt: skip


def build(name: str, counts, cfg: Config | None = None) -> Method:
    return resolve(name).build(class_counts=counts, options=(cfg or tiny_config()).method)


class Interrupting:
    """Wraps a method and stops the run when the loop asks for the batch of step ``at``."""

    def __init__(self, inner: Method, at: int) -> None:
        self.inner, self.at = inner, at

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def class_probs(self, step, total_steps):
        if step == self.at:
            raise KeyboardInterrupt
        return self.inner.class_probs(step, total_steps)


# ---------------------------------------------------------------- the contracts


def class_probs(name: str) -> None:
    method = build(name, EMPTY_CLASS_COUNTS)
    for step in (0, 5, 9):
        probs = method.class_probs(step, 10)
        if probs is None:  # uniform over training instances
            continue
        _require(isinstance(probs, torch.Tensor) and tuple(probs.shape) == (4,) and probs.dtype.is_floating_point,
                 f"class_probs({step}, 10) must be a float tensor of one value per class (4), got {probs!r}")
        _require(bool((probs >= 0).all()) and abs(float(probs.sum()) - 1.0) < 1e-6,
                 f"class_probs({step}, 10) is not a distribution: {probs.tolist()}")
        _require(float(probs[2]) == 0.0, f"class_probs({step}, 10) draws class 2, which has no training image")


def sample_weights(name: str) -> None:
    method = build(name, EMPTY_CLASS_COUNTS)
    y = torch.tensor([0, 1, 3, 3, 0])  # labels of the classes that have images
    w = method.sample_weights(y)
    if w is None:
        return
    _require(isinstance(w, torch.Tensor) and tuple(w.shape) == (5,), f"sample_weights must give one weight per sample, got {w!r}")
    _require(bool(torch.isfinite(w).all()) and bool((w > 0).all()), f"sample_weights are not finite and positive: {w.tolist()}")


def loss_terms(name: str) -> None:
    data = tiny_data()
    method = build(name, data.counts)
    torch.manual_seed(0)
    model = method.wrap_model(build_unet(TINY_MODEL, channels=1, resolution=8, num_classes=3).eval())  # as trained
    method.trainable_modules(model)  # a method's own modules exist before its loss is called, as in training
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    y = torch.tensor([0, 1, 2, 0])

    def run(global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)  # the global RNG must not matter: all randomness is the generator's
        terms = method.loss_terms(model, DIFF, x0, Labels(true=y, model=y, cond=True), torch.Generator().manual_seed(3))
        _require(tuple(terms) == tuple(method.term_names),
                 f"loss_terms returned the terms {tuple(terms)}, but term_names declares {tuple(method.term_names)}")
        values = list(terms.values())
        _require(all(isinstance(v, torch.Tensor) and tuple(v.shape) == (4,) for v in values),
                 "every loss term must be a per-sample tensor [B] (here [4])")
        return torch.stack(values)

    a, b = run(0), run(1)
    _require(bool(torch.isfinite(a).all()), f"loss terms are not finite: {a.tolist()}")
    _require(torch.equal(a, b), "the loss terms change with the global RNG: draw every random number from the "
                                "generator passed to loss_terms (torch.randn(..., generator=generator))")


def _train(run_dir: Path, method, cfg: Config, data: TinyData) -> Path:
    return train(cfg=cfg, dataset=data, method=method, run_dir=run_dir, seed=0, device="cpu", progress=False)


def resume(name: str, workdir: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        _resume(name, Path(tmp))


def _resume(name: str, tmp: Path) -> None:
    cfg, data = tiny_config(), tiny_data()
    make = lambda: build(name, data.counts, cfg)  # noqa: E731
    full = _train(tmp / "full", make(), cfg, data)
    try:
        _train(tmp / "cut", Interrupting(make(), at=4), cfg, data)
    except KeyboardInterrupt:
        pass
    else:
        raise ContractFailure("the run did not ask class_probs for step 4 (it must ask once per step)")
    _require(latest_checkpoint(tmp / "cut" / "checkpoints").name == "ckpt_00000003.pt", "no checkpoint at step 3")
    resumed = _train(tmp / "cut", make(), cfg, data)
    a, b = load(full), load(resumed)
    model, info = load_model(full)
    _require(info["method"] == name and info["steps"] == 6, f"model.pt names {info['method']!r} at {info['steps']}")
    torch.manual_seed(_seeds(0)[0])  # the weights the run started from
    init = build_unet(TINY_MODEL, channels=1, resolution=8, num_classes=3).state_dict()
    _require(any(not torch.equal(v, init[k]) for k, v in a["ema"].items()), "training did not change the weights")
    _require(all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"]),
             "a run cut at step 4 and resumed ends with other weights than an uncut run: keep every state the method "
             "changes in trainable_modules / wrap_model (checkpointed) and draw randomness from the generator")
    ca, cb = (load(latest_checkpoint(p / "checkpoints")) for p in (tmp / "full", tmp / "cut"))
    _require(all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
             and all(torch.equal(ca["aux"][m][k], cb["aux"][m][k]) for m in ca["aux"] for k in ca["aux"][m]),
             "the resumed checkpoint's weights differ from the uncut run's")
    _require(torch.equal(ca["gen_device"], cb["gen_device"]) and torch.equal(ca["rng_cpu"], cb["rng_cpu"]),
             "the random streams of the resumed run differ from the uncut run's")
    trained = make().wrap_model(build_unet(TINY_MODEL, channels=1, resolution=8, num_classes=3))
    trained.load_state_dict(ca["ema"])  # model.pt is the checkpoint's EMA as the method exports it (CM folds B A)
    exported = make().export_model(trained).state_dict()
    _require(ca["step"] == 6 and all(torch.equal(exported[k], v) for k, v in model.state_dict().items()),
             "model.pt is not the last checkpoint's EMA as export_model turns it into a plain backbone")
    logs = []
    for p in (tmp / "full", tmp / "cut"):
        with open(p / "train_log.csv") as fh:
            logs.append([{k: v for k, v in r.items() if k != "images_per_s"} for r in csv.DictReader(fh)])
    _require(logs[0] == logs[1] and [int(r["step"]) for r in logs[0]] == [2, 3, 4, 6],
             "the training log of the resumed run differs from the uncut run's")
    for r in logs[0]:
        _require(all(math.isfinite(float(r[k])) for k in ("loss", "grad_norm", *make().term_names)),
                 f"a logged loss is not finite: {r}")


# ---------------------------------------------------------------- two gloo processes = one


def distributed_config(name: str) -> Config:
    cfg = replace(tiny_config(label_drop_mode="sample", label_drop=0.3),  # per-sample drops: a per-sample draw too
                  model=replace(TINY_MODEL, dropout=0.0))  # dropout streams differ per rank by design
    if name == "t2h":  # T = 1000 reaches the noise levels where the swap posterior leaves the sample itself
        cfg = replace(cfg, diffusion=replace(cfg.diffusion, T=1000))
    return cfg


def train_distributed_config(name: str, run_dir: Path) -> Path:
    cfg, data = distributed_config(name), tiny_data()
    return _train(run_dir, build(name, data.counts, cfg), cfg, data)


def _rank(rank: int, world: int, port: int, out: Path, names: list[str]) -> None:
    import torch.distributed as dist

    from benchmark.core.distributed import init_from_env

    from .plugins import load_plugins

    load_plugins()  # a spawned process: the plugin files of $LTGEN_PLUGINS, set by the parent that loaded them
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    init_from_env("cpu")
    try:
        for name in names:
            train_distributed_config(name, out / name.replace("+", "_"))
    finally:
        dist.destroy_process_group()


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    with open(run_dir / "train_log.csv") as fh:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(fh)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes_match_one(names: list[str], workdir: Path) -> dict[str, str]:
    """Train each method on one process and on two gloo processes (one spawn for all); return what differs
    by name (an empty dict: every method matches)."""
    for name in names:
        train_distributed_config(name, workdir / "one" / name.replace("+", "_"))
    torch.multiprocessing.spawn(_rank, args=(2, free_port(), workdir / "two", list(names)), nprocs=2, join=True)
    failed: dict[str, str] = {}
    for name in names:
        one, two = (workdir / k / name.replace("+", "_") for k in ("one", "two"))
        a, b = _losses(one), _losses(two)
        if [s for s, _ in a] != [s for s, _ in b] or len(a) != 4:
            failed[name] = f"the two-process run logged steps {[s for s, _ in b]}, one process {[s for s, _ in a]}"
        elif not np.allclose([v for _, v in b], [v for _, v in a], rtol=1e-4, atol=0):
            failed[name] = (f"two processes give the objective {[v for _, v in b]}, one process {[v for _, v in a]}: "
                            "draw every random number from the generator, and compute a term over the whole batch from the "
                            "gathered global batch (gather_batch)")
        else:
            ema1, ema2 = (torch.load(p / "model.pt", weights_only=True)["ema"] for p in (one, two))
            if not all(torch.allclose(ema2[k], ema1[k], atol=1e-5, rtol=0) for k in ema1):
                failed[name] = "two processes end with other weights than one process"
    return failed


def two_processes(name: str, workdir: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        failed = two_processes_match_one([name], Path(tmp))
    if failed:
        raise ContractFailure(failed[name])


CONTRACTS: dict[str, Callable[[str], None]] = {
    "class-probs": class_probs,
    "sample-weights": sample_weights,
    "loss-terms": loss_terms,
    "resume": resume,
    "two-processes": two_processes,
}


@dataclass(frozen=True)
class Outcome:
    method: str
    contract: str
    passed: bool
    seconds: float
    message: str = ""

    def line(self) -> str:
        word = "pass" if self.passed else "FAIL"
        tail = f": {self.message}" if self.message else ""
        return f"{word}  {self.method:<24} {self.contract:<15} {self.seconds:6.1f} s{tail}"


def check_method(name: str, *, contracts: Iterable[str] | None = None,
                 report: Callable[[Outcome], None] | None = None) -> list[Outcome]:  # fmt: skip
    """Run the contracts (all by default) on method ``name``; a contract that raises anything fails, with
    the exception's message.  ``report`` sees each outcome as it comes."""
    outcomes = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors of a few KB: more threads only contend (several-fold slower on a busy CPU)
    try:
        for contract in contracts or CONTRACTS:
            outcomes.append(_run_one(name, contract, report))
    finally:
        torch.set_num_threads(threads)
    return outcomes


def _run_one(name: str, contract: str, report: Callable[[Outcome], None] | None) -> Outcome:
    start = time.perf_counter()
    try:
        CONTRACTS[contract](name)
        outcome = Outcome(name, contract, True, time.perf_counter() - start)
    except Exception as exc:  # a broken method may raise anything; the contract names it
        message = str(exc) if isinstance(exc, ContractFailure) else f"{type(exc).__name__}: {exc}"
        outcome = Outcome(name, contract, False, time.perf_counter() - start, " ".join(message.split())[:400])
    if report:
        report(outcome)
    return outcome
