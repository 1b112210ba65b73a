"""Named presets and evaluation protocols.

A preset is a complete :class:`Config`; a protocol is a named set of sampling and
evaluation choices that published numbers depend on.  Rows from different protocols are
never mixed in one leaderboard, so the protocol name is recorded with every row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from benchmark.core.config import (
    MODEL_SIZES,
    PAPER_METHODS,
    Config,
    DataConfig,
    EvalConfig,
    GridConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
)
from benchmark.core.registry import Registry

PRESETS: Registry[Callable[[], Config]] = Registry("preset")
PROTOCOLS: Registry[Callable[[Config], Config]] = Registry("protocol")

# the GPU presets add the later methods; cbdm-ft fine-tunes the grid's ddpm models (a tenth of the steps)
GPU_METHODS = (*PAPER_METHODS, "t2h", "coral", "cbdm-ft")
DEFAULT_PRESET = "demo"


def get_preset(name: str, protocol: str | None = None) -> Config:
    cfg = PRESETS.get(name)()
    if protocol is not None:
        cfg = PROTOCOLS.get(protocol)(cfg)
    return cfg


# ---------------------------------------------------------------- protocols


@PROTOCOLS.register("ddpm1000")
def _ddpm1000(cfg: Config) -> Config:
    """Protocol A: DDPM ancestral sampling over all T steps, each method's official guidance
    (DDPM 0.8, CBDM 1.6, T2H 1.5), Inception features against the balanced train set."""
    return _protocol(cfg, "ddpm1000", sampler="ddpm", steps=cfg.diffusion.T, eta=1.0, guidance=None)


def _protocol(cfg: Config, name: str, *, sampler: str, steps: int, eta: float, guidance: float | None) -> Config:
    """The published protocols all score against the balanced train set; they differ in sampling."""
    return replace(
        cfg,
        protocol=name,
        sample=replace(cfg.sample, sampler=sampler, steps=steps, eta=eta, guidance=guidance),
        eval=replace(cfg.eval, reference="train-balanced"),
    )


@PROTOCOLS.register("ddim")
def _ddim(cfg: Config) -> Config:
    """Protocol B: DDIM 50 steps (eta 0), guidance 1.5, class-balanced labels."""
    return _protocol(cfg, "ddim", sampler="ddim", steps=50, eta=0.0, guidance=1.5)


@PROTOCOLS.register("ddim100")
def _ddim100(cfg: Config) -> Config:
    """T2H's official evaluation: DDIM 100 steps (eta 0), guidance 1.5, balanced train reference."""
    return _protocol(cfg, "ddim100", sampler="ddim", steps=100, eta=0.0, guidance=1.5)


# ---------------------------------------------------------------- presets


@PRESETS.register("smoke")
def _smoke() -> Config:
    """ddpm, cbdm, reweight and resample on scikit-learn's 8x8 digits for a few steps: the end-to-end check."""
    return Config(
        preset="smoke",
        protocol="cpu-ddim10",
        device="cpu",
        data=DataConfig(dataset="digits", profile="exp", imbalance=0.1),
        model=replace(MODEL_SIZES["tiny"], attn_resolutions=(4,)),
        train=TrainConfig(
            steps=30, batch_size=32, lr=1e-3, warmup=5, ema_decay=0.9, ckpt_every=10, log_every=5
        ),
        sample=SampleConfig(sampler="ddim", steps=10, guidance=1.0, n_per_class=12, batch_size=64),
        eval=EvalConfig(
            feature_space="classifier", reference="test", kid_subsets=10, classifier_epochs=2, batch_size=256
        ),
        grid=GridConfig(methods=PAPER_METHODS, imbalances=(0.1,), seeds=(0,)),
    )


def _demo_config() -> Config:
    return Config(
        preset="demo",
        protocol="cpu-ddim20-g1",
        device="auto",
        data=DataConfig(dataset="fashion-mnist", resolution=16, profile="exp", imbalance=0.01),
        # 0.63M parameters; a high learning rate and a short EMA because the budget is 1000 steps
        model=ModelConfig(ch=24, ch_mult=(1, 2, 2), attn_resolutions=(8,), num_res_blocks=1, dropout=0.0),
        train=TrainConfig(
            steps=1000, batch_size=64, lr=2e-3, warmup=50, ema_decay=0.995, ckpt_every=100, log_every=25,
            channels_last=True,
        ),
        sample=SampleConfig(sampler="ddim", steps=20, guidance=1.0, n_per_class=100, batch_size=500),
        eval=EvalConfig(
            feature_space="classifier", reference="test", kid_subsets=50, classifier_epochs=3, downstream_epochs=5
        ),
        grid=GridConfig(methods=PAPER_METHODS, imbalances=(0.01,), seeds=(0,)),
    )


@PRESETS.register("demo")
def _demo() -> Config:
    """Fashion-MNIST-LT (IR 100) at 16x16 on a CPU budget: the default benchmark."""
    return _demo_config()


@PRESETS.register("demo-sweep")
def _demo_sweep() -> Config:
    """The demo at two imbalance settings (IR 100 and IR 10)."""
    cfg = _demo_config()
    return replace(cfg, preset="demo-sweep", grid=replace(cfg.grid, imbalances=(0.01, 0.1)))


def _paper(dataset: str, name: str) -> Config:
    cfg = Config(
        preset=name,
        device="auto",
        data=DataConfig(dataset=dataset, profile="exp", imbalance=0.01),
        model=MODEL_SIZES["paper"],
        train=TrainConfig(steps=300_000, batch_size=64, method_batch_size=("cbdm=48",)),
        sample=SampleConfig(n_per_class=50_000 // (10 if dataset == "cifar10" else 100), batch_size=512),
        eval=EvalConfig(feature_space="inception", reference="train-balanced", pr_k=3),
        grid=GridConfig(methods=GPU_METHODS, imbalances=(0.01,), seeds=(0,)),
    )
    return _ddim(cfg)


@PRESETS.register("cifar10lt")
def _cifar10lt() -> Config:
    """CIFAR-10-LT, paper UNet, 300k steps, 50k images, Inception; protocol ddim (or --protocol ddpm1000)."""
    return _paper("cifar10", "cifar10lt")


@PRESETS.register("cifar100lt")
def _cifar100lt() -> Config:
    """CIFAR-100-LT, paper UNet, 300k steps, 50k images, Inception; protocol ddim (or --protocol ddpm1000)."""
    return _paper("cifar100", "cifar100lt")


@PRESETS.register("imagefolder")
def _imagefolder() -> Config:
    """Template for your own data: --dataset imagefolder:PATH (one subfolder per class)."""
    cfg = _demo_config()
    return replace(
        cfg,
        preset="imagefolder",
        data=replace(cfg.data, dataset="imagefolder:REPLACE/WITH/PATH", resolution=32, profile="none"),
        model=MODEL_SIZES["small"],
        # a folder is usually small: up to 30 class-balanced epochs of >= 4096 draws, stopped on a held-out plateau
        eval=replace(cfg.eval, feature_space="auto", classifier_epochs=30),
    )


def preset_doc(name: str) -> str:
    doc = PRESETS.get(name).__doc__ or ""
    return " ".join(doc.split())
