"""Named presets and evaluation protocols.

A preset is a complete :class:`Config`; a protocol is a named set of sampling and
evaluation choices that published numbers depend on.  Rows from different protocols are
never mixed in one leaderboard, so the protocol name is recorded with every row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

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

# the GPU presets add the later methods; cbdm-ft fine-tunes the grid's ddpm models (a tenth of the steps);
# cm+t2h is Capacity Manipulation as released (with T2H's calibration), cm the capacity split alone
GPU_METHODS = (*PAPER_METHODS, "t2h", "coral", "cm", "cm+t2h", "cbdm-ft")
DEFAULT_PRESET = "demo"


PAPER_PRESETS = ("cifar10lt", "cifar100lt", "imagenetlt64")  # their protocol brings its training budget


def get_preset(name: str, protocol: str | None = None) -> Config:
    cfg = PRESETS.get(name)()
    if protocol is not None:
        PROTOCOLS.get(protocol)  # an unknown name lists the valid ones
        cfg = apply_protocol(cfg, protocol, budget=name in PAPER_PRESETS)
    return cfg


# ---------------------------------------------------------------- protocols


@dataclass(frozen=True)
class Evaluator:
    """The measurement settings of a published evaluator: what its numbers rest on."""

    name: str
    feature_space: str  # our feature space that reproduces its network
    features: str  # the network and layer, in words
    resize: str  # eval.resize that reproduces its resizing
    pr_k: int  # k of improved precision / recall
    reference: str  # eval.reference
    n_total: int  # generated images in all


# qym7/CBDM-pytorch score/: pytorch-fid's InceptionV3 (the TF 2015-12-05 graph), float images in [0, 1]
# resized to 299 with F.interpolate(bilinear, align_corners=False), pool3; FID against the balanced train
# set's statistics; improved P/R (k = 5) on those Inception features, only at exactly 50k samples.
# MediaBrain-SJTU/OC_LT (T2H) ships the same score/ code (FID and IS; no P/R).
CBDM_EVALUATOR = Evaluator(
    name="cbdm", feature_space="inception", features="Inception-v3 pool3 (TF 2015-12-05 port)",
    resize="bilinear", pr_k=5, reference="train-balanced", n_total=50_000,
)


@dataclass(frozen=True)
class Budget:
    """The training budget of a published table: it is part of the protocol, because T2H's and CORAL's
    objectives are batch-global (the batch changes the objective, not only the noise of its gradient)."""

    steps: int
    batch: int
    method_batch: tuple[str, ...]  # train.method_batch_size
    source: str


@dataclass(frozen=True)
class Protocol:
    sampler: str
    steps: int
    eta: float
    guidance: float | None  # None: each method's official omega (per dataset where the table tuned it)
    evaluator: Evaluator
    source: str  # whose evaluation it is
    labels: str  # sample.labels: how the evaluation set's labels are drawn
    budget: Budget  # applied to the paper presets (apply_protocol(budget=True))
    ddim_last: str = "x0"  # sample.ddim_last


PROTOCOL_SETTINGS: dict[str, Protocol] = {
    # CORAL's table: DDPM, CBDM, CORAL 150k x 128 with CBDM's sampler, whose labels are torch.randint
    # (CBDM-pytorch main.py); omega per method and dataset (DDPM1000_GUIDANCE)
    "ddpm1000": Protocol("ddpm", 1000, 1.0, None, CBDM_EVALUATOR, "CBDM's evaluation (the CORAL paper's table)",
                         labels="uniform", budget=Budget(150_000, 128, (), "CORAL's table: 150k steps x 128")),
    # the released CM code (configs/cifar100lt_ir100/cm.yaml): DDIM skip 20, omega 1.5, 50k balanced samples,
    # 300k x 64; its sampler is OC's DDIM class (next time clamp(t - skip, 0))
    "ddim": Protocol("ddim", 50, 0.0, 1.5, CBDM_EVALUATOR, "the Capacity Manipulation paper's table",
                     labels="balanced", budget=Budget(300_000, 64, ("cbdm=48",), "CM's release: 300k steps x 64"),
                     ddim_last="clamp"),
    # OC_LT ddpm_gen.py: DDIM skip 10, omega 1.5, labels torch.randint; main.py: batch 128, the 200k checkpoint
    "ddim100": Protocol("ddim", 100, 0.0, 1.5, CBDM_EVALUATOR, "T2H's own evaluation (OC_LT)", labels="uniform",
                        budget=Budget(200_000, 128, (), "T2H's release: batch 128, the 200k checkpoint"),
                        ddim_last="clamp"),
}

# omega of CORAL's table (protocol ddpm1000) per (dataset, imbalance) and method, from a third-party
# transcription of the paper's configs [2nd]; CIFAR-100 IR100's values are also the official codes'
# defaults (DDPM 0.8, CBDM 1.6, T2H 1.5); the CIFAR-10 values are not confirmed in any official code
DDPM1000_GUIDANCE: dict[tuple[str, float], dict[str, float]] = {
    ("cifar10", 0.01): {"ddpm": 0.8, "cbdm": 1.0, "coral": 0.6, "t2h": 1.0},
    ("cifar10", 0.001): {"ddpm": 1.0, "cbdm": 1.8, "coral": 1.0, "t2h": 1.7},
    ("cifar100", 0.01): {"ddpm": 0.8, "cbdm": 1.6, "coral": 0.8, "t2h": 1.5},
}


def protocol_guidance(protocol: str, *, dataset: str, imbalance: float | None, method: str) -> float | None:
    """The omega a protocol's table used for this method on this data (None: not recorded; then the
    method's official strength applies)."""
    if protocol != "ddpm1000" or imbalance is None:
        return None
    return DDPM1000_GUIDANCE.get((dataset, round(float(imbalance), 6)), {}).get(method)


def describe_protocol(name: str) -> str:
    p = PROTOCOL_SETTINGS[name]
    e = p.evaluator
    omega = "each method's official guidance" if p.guidance is None else f"guidance {p.guidance:g}"
    steps = "all T steps" if p.sampler == "ddpm" else f"{p.steps} steps, eta {p.eta:g}, last step {p.ddim_last}"
    return (f"{p.sampler.upper()} ({steps}), {omega}, {p.labels} labels; {p.source}: {e.features}, {e.resize} "
            f"resize, P/R k={e.pr_k}, reference {e.reference}, {e.n_total} images; paper presets: {p.budget.source}")


def apply_protocol(cfg: Config, name: str, *, budget: bool = False) -> Config:
    """The protocol's sampler and its evaluator's settings, recorded in the config (and so in config.json);
    with ``budget`` (the paper presets) also its training steps and batch.

    With profile 'none' the train pool is the long tail itself (ImageNet-LT's list), so there is
    no balanced train set: the balanced test split is the reference, as in the ImageNet-LT papers."""
    p = PROTOCOL_SETTINGS[name]
    e = p.evaluator
    steps = cfg.diffusion.T if p.sampler == "ddpm" else p.steps
    train = cfg.train
    if budget:
        b = p.budget
        train = replace(train, steps=b.steps, batch_size=b.batch, method_batch_size=b.method_batch)
    return replace(
        cfg,
        protocol=name,
        train=train,
        sample=replace(cfg.sample, sampler=p.sampler, steps=steps, eta=p.eta,
                       guidance=None if p.guidance is None else (p.guidance,), n_total=e.n_total,
                       labels=p.labels, ddim_last=p.ddim_last),
        eval=replace(cfg.eval, feature_space=e.feature_space, resize=e.resize, pr_k=e.pr_k,
                     reference="test" if cfg.data.profile == "none" else e.reference),
    )


def _register_protocol(name: str) -> None:
    def fn(cfg: Config) -> Config:
        return apply_protocol(cfg, name)

    fn.__doc__ = describe_protocol(name)
    PROTOCOLS.register(name, fn)


for _name in PROTOCOL_SETTINGS:
    _register_protocol(_name)


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
            # 40 steps: the quarters of the budget are whole steps, so budget points 0.25 / 0.5 / 0.75 can be scored
            steps=40, batch_size=32, lr=1e-3, warmup=5, ema_decay=0.9, ckpt_every=10, log_every=5
        ),
        sample=SampleConfig(sampler="ddim", steps=10, guidance=(1.0,), n_per_class=12, batch_size=64),
        eval=EvalConfig(
            feature_space="classifier", reference="test", kid_subsets=10, classifier_epochs=2, batch_size=256
        ),
        grid=GridConfig(methods=PAPER_METHODS, imbalances=(0.1,), seeds=(0,)),
    )


# the demo's budget: 2 seeds of ddpm and cbdm (the seed paper's baseline and method) fit 15 minutes on 2 cores only
# at this many steps; resample and reweight are left to --methods (docs/demo.md: the measurements behind it)
DEMO_STEPS = 1500
DEMO_METHODS = ("ddpm", "cbdm")


def _demo_config() -> Config:
    return Config(
        preset="demo",
        protocol="cpu-ddim20-g1",
        device="auto",
        data=DataConfig(dataset="fashion-mnist", resolution=16, profile="exp", imbalance=0.01),
        model=ModelConfig(ch=24, ch_mult=(1, 2, 2), attn_resolutions=(8,), num_res_blocks=1, dropout=0.0),
        train=TrainConfig(
            # a high learning rate decayed to 0 (cosine) and a long EMA with warm-up: ddpm's many-group precision was
            # 0.840 at 1500 steps and 0.883 at 2000, against 0.627 and 0.800 for the earlier recipe (constant 2e-3,
            # EMA 0.995) at 1000 and 2000 steps (seed 0, docs/demo-recipe.md)
            # contiguous: on an AMD EPYC with native bf16 (avx512_bf16), channels_last made this model's training
            # 1.07-1.16x slower in fp32 and 1.7x slower in bf16 (perf --preset demo --channels-last on/off, README);
            # a speed-only key
            steps=DEMO_STEPS, batch_size=64, lr=2e-3, warmup=50, lr_schedule="cosine", ema_decay=0.999,
            ema_warmup=True, ckpt_every=250, log_every=25, channels_last=False,
        ),
        sample=SampleConfig(sampler="ddim", steps=20, guidance=(1.0,), n_per_class=100, batch_size=500),
        eval=EvalConfig(
            feature_space="classifier", reference="test", kid_subsets=50, classifier_epochs=3, downstream_epochs=5
        ),
        grid=GridConfig(methods=DEMO_METHODS, imbalances=(0.01,), seeds=(0, 1)),
    )


@PRESETS.register("demo")
def _demo() -> Config:
    """Fashion-MNIST-LT (IR 100) at 16x16 on a CPU budget, ddpm and cbdm, 2 seeds: the default benchmark."""
    return _demo_config()


@PRESETS.register("demo-sweep")
def _demo_sweep() -> Config:
    """The demo at two imbalance settings (IR 100 and IR 10)."""
    cfg = _demo_config()
    return replace(cfg, preset="demo-sweep", grid=replace(cfg.grid, imbalances=(0.01, 0.1)))


# the study's setting, fixed before its seeds were run (docs/repro-cbdm-cpu.md says what was tried first):
# 2-10 training images per few-shot class, each drawn about a thousand times, so a DDPM has the chance to copy
REPRO_CBDM_STEPS = 6000
REPRO_CBDM_CHECKPOINTS = (0.125, 0.25, 0.5, 1.0)


@PRESETS.register("repro-cbdm-cpu")
def _repro_cbdm_cpu() -> Config:
    """The CBDM paper's claim on a CPU: DDPM vs CBDM on digits-LT (IR 50, 2-10 images per few-shot class),
    3 seeds, 6000 steps with budget curves at 1/8, 1/4, 1/2 and 1 (under an hour on 2 cores with --jobs 2)."""
    return Config(
        preset="repro-cbdm-cpu",
        protocol="cpu-ddim20-g1",
        device="auto",
        data=DataConfig(dataset="digits", profile="exp", imbalance=0.02),
        model=ModelConfig(ch=32, ch_mult=(1, 2), attn_resolutions=(4,), num_res_blocks=1, dropout=0.0),
        # a constant learning rate, so a budget point is the same recipe trained shorter (not a snapshot of a decay
        # under way); the EMA warm-up, because at 0.999 without it the kept weights of step 750 are still 47%
        # the random initial ones (budget points of a trial without it scored precision 0.04-0.12, the end 0.92)
        train=TrainConfig(steps=REPRO_CBDM_STEPS, batch_size=64, lr=1e-3, warmup=100, ema_decay=0.999,
                          ema_warmup=True, ckpt_every=500, log_every=100),  # fmt: skip
        sample=SampleConfig(sampler="ddim", steps=20, guidance=(1.0,), n_per_class=100, batch_size=500),
        eval=EvalConfig(feature_space="classifier", reference="test", kid_subsets=20, classifier_epochs=10,
                        downstream=False, checkpoints=REPRO_CBDM_CHECKPOINTS),  # fmt: skip
        grid=GridConfig(methods=("ddpm", "cbdm"), imbalances=(0.02,), seeds=(0, 1, 2)),
    )


# the official CBDM, OC and CORAL code trains and samples in fp32 without autocast, under PyTorch's defaults:
# cuDNN convolutions may use TF32, matmuls do not (the sampler runs under those defaults too)
OFFICIAL_NUMERICS = dict(precision="fp32", tf32=True, tf32_matmul=False)


def _paper(dataset: str, name: str) -> Config:
    cfg = Config(
        preset=name,
        device="auto",
        data=DataConfig(dataset=dataset, profile="exp", imbalance=0.01),
        model=MODEL_SIZES["paper"],
        train=TrainConfig(steps=300_000, batch_size=64, method_batch_size=("cbdm=48",), **OFFICIAL_NUMERICS),
        sample=SampleConfig(batch_size=512, precision="fp32"),
        eval=EvalConfig(feature_space="inception"),
        grid=GridConfig(methods=GPU_METHODS, imbalances=(0.01,), seeds=(0,)),
    )
    return apply_protocol(cfg, "ddim", budget=True)


@PRESETS.register("cifar10lt")
def _cifar10lt() -> Config:
    """CIFAR-10-LT, paper UNet, 300k steps, 50k images, Inception; protocol ddim (or --protocol ddpm1000)."""
    return _paper("cifar10", "cifar10lt")


@PRESETS.register("cifar100lt")
def _cifar100lt() -> Config:
    """CIFAR-100-LT, paper UNet, 300k steps, 50k images, Inception; protocol ddim (or --protocol ddpm1000)."""
    return _paper("cifar100", "cifar100lt")


@PRESETS.register("imagenetlt64")
def _imagenetlt64() -> Config:
    """ImageNet-LT at 64x64 (the CORAL / CM setting): listfile:ImageNet_LT_train.txt with data.list_root
    and data.reference_list (the test list), paper UNet, 300k steps, 50 images per class, Inception; protocol ddim."""
    cfg = Config(
        preset="imagenetlt64",
        device="auto",
        data=DataConfig(
            dataset="listfile:REPLACE/WITH/ImageNet_LT_train.txt", list_root="REPLACE/WITH/IMAGENET_ROOT",
            reference_list="REPLACE/WITH/ImageNet_LT_test.txt", class_names="folders", resolution=64,
            resize="bilinear-antialias", profile="none",
        ),
        # the CIFAR design at 64x64: attention at the second level (32x32), as the ImageNet-LT CM config of a
        # third-party port (its header: the CM repository has no author-provided ImageNet-LT config)
        model=replace(MODEL_SIZES["paper"], attn_resolutions=(32,)),
        train=TrainConfig(steps=300_000, batch_size=64, method_batch_size=("cbdm=48",), **OFFICIAL_NUMERICS),
        sample=SampleConfig(n_per_class=50, batch_size=512, precision="fp32"),
        eval=EvalConfig(feature_space="inception", reference="test", pr_k=3),
        grid=GridConfig(methods=GPU_METHODS, imbalances=(0.01,), seeds=(0,)),
    )
    return apply_protocol(cfg, "ddim", budget=True)


@PRESETS.register("imagefolder")
def _imagefolder() -> Config:
    """Template for your own data: --dataset imagefolder:PATH (one subfolder per class)."""
    cfg = _demo_config()
    return replace(
        cfg,
        preset="imagefolder",
        data=replace(cfg.data, dataset="imagefolder:REPLACE/WITH/PATH", resolution=32, profile="none"),
        model=MODEL_SIZES["small"],
        grid=replace(cfg.grid, methods=PAPER_METHODS, seeds=(0,)),  # a template: every CPU method, one seed
        # a folder is usually small: up to 30 class-balanced epochs of >= 4096 draws, stopped on a held-out plateau
        eval=replace(cfg.eval, feature_space="auto", classifier_epochs=30),
    )


def preset_doc(name: str) -> str:
    doc = PRESETS.get(name).__doc__ or ""
    return " ".join(doc.split())
