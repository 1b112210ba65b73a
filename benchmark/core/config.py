"""The configuration tree: frozen dataclasses, presets hold defaults, typed overrides.

``--set section.key=value`` overrides any field; the value is parsed to the field's type and
an unknown key is an error listing close matches.  A string field with a fixed set of values
declares them next to itself (:func:`choice`) and is checked whenever a section is built, so a
misspelt value can never silently fall back to another behaviour; a field naming a registered
thing (dataset, method, sampler, feature space) says which registry (:func:`named`), and
:func:`check_names` checks it against that registry.  The resolved tree is written into every
run folder before work starts (``config.json``) and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from benchmark.core.errors import ConfigError

# ---------------------------------------------------------------- options with fixed or registered values


def choice(default: str, values: Mapping[str, str]) -> Any:
    """A string field that takes one of ``values`` (name -> what it means); checked when built."""
    if next(iter(values), None) != default:
        raise ValueError(f"list the default {default!r} first among the values {list(values)}")
    return field(default=default, metadata={"choices": dict(values)})


def named(default: Any, registry: str, *, also: Mapping[str, str] | None = None,
          item: Callable[[str], str] | None = None) -> Any:  # fmt: skip
    """A field that names entries of ``registry`` (a name or a tuple of names), with extra values
    ``also`` the field accepts besides them (e.g. 'auto'); ``item`` takes the name out of one
    value (e.g. 'cbdm' of 'cbdm=48').  :func:`check_names` checks it."""
    return field(default=default, metadata={"registry": registry, "also": dict(also or {}), "item": item})


@dataclass(frozen=True)
class Bounds:
    """The range of a numeric option: ``ge`` <= value (or ``gt`` <), value <= ``le`` (or < ``lt``)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def admits(self, value: float) -> bool:
        if isinstance(value, float) and value != value:  # NaN is in no range
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))  # fmt: skip

    def describe(self) -> str:
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else "(-inf"
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else "inf)"
        return f"{low}, {high}"


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:  # fmt: skip
    """A numeric field (or a tuple of numbers, each checked) with its range, checked whenever its section
    is built; None passes where the field's type allows it (e.g. ``int | None``)."""
    bounds = Bounds(ge=ge, gt=gt, le=le, lt=lt)
    values = default if isinstance(default, tuple) else (default,)
    if any(v is not None and not bounds.admits(v) for v in values):
        raise ValueError(f"the default {default!r} is outside its own range {bounds.describe()}")
    return field(default=default, metadata={"bounds": bounds})


class _Checked:
    """Checks every :func:`choice` and :func:`bounded` field of a section whenever the section is
    built (presets, ``--set``, ``replace``, :func:`from_dict`)."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            allowed = f.metadata.get("choices")
            value = getattr(self, f.name)
            if allowed is not None and value not in allowed:
                raise ConfigError(not_a_choice(f"{_section_of(type(self))}{f.name}", value, allowed))
            bounds = f.metadata.get("bounds")
            if bounds is not None:
                for item in value if isinstance(value, tuple) else (value,):
                    if item is not None and not bounds.admits(item):
                        raise ConfigError(out_of_range(f"{_section_of(type(self))}{f.name}", value, bounds, f.default))


def out_of_range(key: str, value: Any, bounds: Bounds, default: Any) -> str:
    example = f" E.g. --set {key}={default}" if default is not None and not isinstance(default, tuple) else ""
    each = "each value " if isinstance(value, tuple) else ""
    return f"{key}={value!r} is out of range: {each}must be in {bounds.describe()}.{example}"


def not_a_choice(key: str, value: Any, allowed: Mapping[str, str]) -> str:
    close = difflib.get_close_matches(str(value), list(allowed), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    listed = "; ".join(f"{name} ({doc})" if doc else name for name, doc in allowed.items())
    return f"{key}={value!r} is not a valid value.{hint} Valid values: {listed}. E.g. --set {key}={next(iter(allowed))}"


PRECISION_CHOICES = {"auto": "bf16 where the device runs it natively, else fp32", "fp32": "fp32 throughout",
                     "bf16": "bf16 autocast; refused where the device cannot run it"}
PRECISIONS = tuple(PRECISION_CHOICES)  # numeric precision of a stage (benchmark.core.device.resolve_precision)


@dataclass(frozen=True)
class DataConfig(_Checked):
    dataset: str = named("fashion-mnist", "dataset", also={"imagefolder:PATH": "one subfolder per class"})
    data_root: str | None = None  # where dataset files live / are downloaded to
    resolution: int | None = bounded(None, ge=1)  # None keeps the source's native size
    resize: str = named("bicubic-antialias", "resize method")  # recorded with the data
    profile: str = choice("exp", {
        "exp": "n_i = n_max * imbalance ** (i / (C - 1)), the LDAM profile",
        "step": "the first half of the classes at n_max, the rest at n_max * imbalance",
        "none": "the data as it is",
        "file": "per-class counts from data.counts_file",
    })  # fmt: skip
    imbalance: float = bounded(0.01, gt=0.0, le=1.0)  # n_min / n_max; 0.01 is "IR 100"
    counts_file: str | None = None  # per-class counts (profile "file")
    split_seed: int = bounded(0, ge=0)  # seed of the LDAM selection (0 in all papers)
    # head-class size; None = the smallest class of the pool (LDAM: the balanced class size)
    n_max: int | None = bounded(None, ge=1)
    groups: str = choice("auto", {
        "auto": "the dataset's own rule",
        "thresholds": "many > data.many_threshold, few < data.few_threshold",
        "thirds": "class-index thirds",
    })  # fmt: skip
    many_threshold: int = bounded(100, ge=0)  # many: count > this
    few_threshold: int = bounded(20, ge=0)  # few: count < this
    reference_folder: str | None = None  # imagefolder: separate balanced evaluation folder
    # folders without a reference split: auto | holdout | holdout-only | balanced | folder (benchmark/data/reference.py)
    reference_protocol: str = "auto"
    # holdout: fraction of every class held out (reference + evaluator test)
    reference_fraction: float = bounded(0.2, gt=0.0, lt=1.0)
    reference_min: int = bounded(20, ge=1)  # holdout: a class with fewer held out is scored against all its images (flagged)
    # listfile:LIST (one "relative/path label" line per image, the OLTR convention)
    list_root: str | None = None  # folder the list's paths are relative to (None: the list file's folder)
    reference_list: str | None = None  # evaluation list (e.g. ImageNet_LT_test.txt), same root
    class_names: str | None = None  # a file with one name per line (line i = class i), or "folders"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.few_threshold > self.many_threshold:
            raise ConfigError(f"data.few_threshold={self.few_threshold} is above data.many_threshold={self.many_threshold}: "
                              "a class would be both many and few; keep few_threshold <= many_threshold")


@dataclass(frozen=True)
class ModelConfig(_Checked):
    ch: int = bounded(128, ge=1)
    ch_mult: tuple[int, ...] = bounded((1, 2, 2, 2), ge=1)
    attn_resolutions: tuple[int, ...] = bounded((16,), ge=1)
    num_res_blocks: int = bounded(2, ge=1)
    dropout: float = bounded(0.1, ge=0.0, lt=1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.ch_mult:
            raise ConfigError("model.ch_mult needs at least one level, e.g. --set model.ch_mult=1,2,2")


MODEL_SIZES: dict[str, ModelConfig] = {
    # DDPM CIFAR design, ~35.7M parameters at 32x32 (the CBDM / T2H / CORAL backbone)
    "paper": ModelConfig(),
    # CPU sizes
    "small": ModelConfig(ch=32, ch_mult=(1, 2, 2), attn_resolutions=(8,), num_res_blocks=1, dropout=0.0),
    "tiny": ModelConfig(ch=16, ch_mult=(1, 2), attn_resolutions=(4,), num_res_blocks=1, dropout=0.0),
}


@dataclass(frozen=True)
class DiffusionConfig(_Checked):
    T: int = bounded(1000, ge=1)
    beta_1: float = bounded(1e-4, gt=0.0, lt=1.0)
    beta_T: float = bounded(0.02, gt=0.0, lt=1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta_1 > self.beta_T:
            raise ConfigError(f"diffusion.beta_1={self.beta_1} is above diffusion.beta_T={self.beta_T}: the noise "
                              "schedule rises from beta_1 to beta_T (e.g. 1e-4 to 0.02)")


@dataclass(frozen=True)
class TrainConfig(_Checked):
    steps: int = bounded(300_000, ge=1)
    batch_size: int = bounded(64, ge=1)
    lr: float = bounded(2e-4, gt=0.0)
    warmup: int = bounded(5000, ge=0)  # 0: no warm-up
    grad_clip: float = bounded(1.0, ge=0.0)  # 0: no clipping
    ema_decay: float = bounded(0.9999, ge=0.0, lt=1.0)
    # after the warmup: "constant" (the papers' recipe) or a cosine decay to 0 at train.steps (short CPU budgets)
    lr_schedule: str = choice("constant", {
        "constant": "lr after the linear warmup, to the end",
        "cosine": "cosine decay from lr (end of warmup) to 0 at train.steps",
    })  # fmt: skip
    # EMA warm-up: decay min(ema_decay, (1 + step) / (10 + step)), so a long EMA horizon forgets the random
    # initial weights within a short budget (0.999 ** 2000 still weighs them 0.14 without it)
    ema_warmup: bool = False
    label_drop: float = bounded(0.1, ge=0.0, lt=1.0)  # probability of an unconditional (null-label) draw
    label_drop_mode: str = choice("batch", {
        "batch": "one coin per step drops the labels of the whole batch, as the official code does",
        "sample": "each sample drops its label on its own",
    })  # fmt: skip
    hflip: bool | None = None  # None: the dataset decides (no flips for digits / text-like data)
    ckpt_every: int = bounded(5000, ge=1)
    log_every: int = bounded(100, ge=1)
    precision: str = choice("auto", PRECISION_CHOICES)
    tf32: bool = True  # TF32 on CUDA: cuDNN convolutions, and matmuls unless tf32_matmul is false
    # false: matmuls (linear layers, attention) stay full fp32, PyTorch's default and the official code's
    tf32_matmul: bool = True
    compile: bool = False
    channels_last: bool = False
    logger: str = choice("csv", {
        "csv": "train_log.csv only",
        "tensorboard": "also TensorBoard event files in the cell's tensorboard/ (pip install 'ltgen-bench[tensorboard]')",
        "wandb": "also a Weights & Biases run, offline unless configured (pip install 'ltgen-bench[wandb]')",
    })  # fmt: skip
    init_from: str | None = None  # model.pt whose EMA weights start training (CBDM fine-tune protocol)
    # steps at which the EMA weights are also kept (checkpoints/ema_<step>.pt, model.pt's format): set by
    # the grid on a cell another one fine-tunes from a step of its budget (cbdm-ft)
    keep_ema_at: tuple[int, ...] = bounded((), ge=1)
    # fractions of train.steps whose EMA weights are also kept whatever eval.checkpoints asks (set by the grid
    # into keep_ema_at), so a budget point can be scored later without retraining; () keeps only those asked for
    keep_ema_fractions: tuple[float, ...] = bounded((0.25, 0.5, 0.75), gt=0.0, lt=1.0)
    # per-method batch sizes, e.g. ("cbdm=48",) for the official CBDM runs; a rule covers every method
    # whose objective is that method's (cbdm=48: cbdm-ft, cbdm+resample, ...); others use batch_size
    method_batch_size: tuple[str, ...] = named((), "method", item=lambda pair: pair.partition("=")[0])

    def __post_init__(self) -> None:
        super().__post_init__()
        for pair in self.method_batch_size:
            name, sep, size = pair.partition("=")
            if not sep or not name or not size.isdigit() or int(size) < 1:
                raise ConfigError(f"train.method_batch_size entries are method=batch, e.g. cbdm=48; got {pair!r}")


class Options(_Checked):
    """The base of a method's options: a frozen dataclass in the method's own module (``Options`` of
    :class:`methods.base.Method`), addressed as ``method.<name>.<option>``; :func:`choice` and
    :func:`bounded` fields are checked whenever it is built.  Core knows no method's options: each
    registered method adds its section (:func:`register_method_options`)."""


# section key (the method's name, '-' written '_') -> its options class, in registration order
_METHOD_OPTIONS: dict[str, type] = {}
_OPTION_PREFIX: dict[type, str] = {}
_METHOD_CONFIG: dict[tuple, type] = {}


def method_section(name: str) -> str:
    """The key of method ``name``'s options section under ``method.`` ('my-method' -> 'my_method')."""
    return name.replace("-", "_")


def register_method_options(name: str, cls: type) -> None:
    """Give method ``name`` the section ``method.<name>.`` holding ``cls`` (a frozen :class:`Options`
    dataclass); called by the methods registry, before any config that holds it is built."""
    if not (isinstance(cls, type) and is_dataclass(cls) and issubclass(cls, Options)
            and cls.__dataclass_params__.frozen):  # type: ignore[attr-defined]  # fmt: skip
        raise TypeError(f"the options of method {name!r} must be a @dataclass(frozen=True) subclass of "
                        f"benchmark.core.config.Options; got {cls!r}")  # fmt: skip
    key = method_section(name)
    if not key.isidentifier():
        raise ValueError(f"method name {name!r} cannot name an options section; use letters, digits, '_' and '-'")
    _METHOD_OPTIONS[key] = cls
    _OPTION_PREFIX.setdefault(cls, f"method.{key}.")


# how a method section travels to another process (a --jobs worker, a submitit job): set by the methods
# package, which knows which plugin files the receiving process must load before it can rebuild it
_REDUCER: list[Callable[[Any], tuple]] = []


def set_method_config_reducer(reduce: Callable[[Any], tuple]) -> None:
    _REDUCER[:] = [reduce]


def _reduce_method_config(self: Any) -> tuple:
    if not _REDUCER:
        raise TypeError("a method section is pickled before the methods package is imported")
    return _REDUCER[0](self)


def method_config_class() -> type:
    """The ``method`` section: a frozen dataclass with one field per registered method that has
    options (the same class for the same registered set, so configs built alike compare equal)."""
    sig = tuple(_METHOD_OPTIONS.items())
    if sig not in _METHOD_CONFIG:
        spec = [(key, cls, field(default_factory=cls)) for key, cls in sig]
        _METHOD_CONFIG[sig] = dataclasses.make_dataclass(
            "MethodConfig", spec, frozen=True, bases=(_Checked,), namespace={"__reduce__": _reduce_method_config},
        )
    return _METHOD_CONFIG[sig]


def MethodConfig(**sections: Any) -> Any:  # noqa: N802  (built like the other sections)
    """The ``method`` section with every registered method's defaults, ``sections`` replacing some."""
    return method_config_class()(**sections)


DDIM_LAST = {
    "x0": "the last step lands on the x0 prediction (the DDIM paper's rule)",
    "clamp": "OC's / CM's sampler: the next time is clamp(t - skip, 0), so the step at t = 0 is the identity and "
             "the output keeps sqrt(1 - abar_0) eps of noise",
}


@dataclass(frozen=True)
class SampleConfig(_Checked):
    sampler: str = named("ddim", "sampler")  # ddim | ddpm (ancestral, all T steps)
    steps: int = bounded(50, ge=1)
    eta: float = bounded(0.0, ge=0.0, le=1.0)
    ddim_last: str = choice("x0", DDIM_LAST)  # DDIM's step from the smallest timestep (set by the protocols)
    # omega, one scale or a list (a guidance sweep: each scale is sampled and scored from the same model; the
    # first is the cell's main point); None = each method's official strength
    guidance: tuple[float, ...] | None = bounded((1.5,), ge=0.0)
    n_per_class: int = bounded(5000, ge=2)  # metrics need two or more images per class
    # the evaluation set's size in all, split evenly over the classes (n_total // C each) when set;
    # the published protocols set 50k (their evaluators' sample size)
    n_total: int | None = bounded(None, ge=2)  # at least 2 per class: checked with the data (preflight)
    batch_size: int = bounded(256, ge=1)
    precision: str = choice("auto", PRECISION_CHOICES)
    labels: str = choice("balanced", {  # the evaluation set's labels (set by the protocols)
        "balanced": "exactly n per class (CM's rule)",
        "uniform": "i.i.d. uniform over the classes, n x C in all (CBDM's, OC's and CORAL's samplers)",
    })  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.guidance is not None and not self.guidance:
            raise ConfigError("sample.guidance is an empty list: give one scale or several, e.g. --set "
                              "sample.guidance=0,1,2 (or none for each method's official strength)")


@dataclass(frozen=True)
class EvalConfig(_Checked):
    feature_space: str = named("auto", "feature space", also={"auto": "the dataset's default"})
    reference: str = choice("test", {
        "test": "the balanced test split",
        "train-balanced": "the whole balanced train pool, the papers' choice for CIFAR",
        "longtail": "the long-tailed training subset itself",
    })  # fmt: skip
    resize: str = choice("clean", {
        "clean": "clean-fid's PIL bicubic resize into Inception / DINOv2",
        "legacy": "torch-fidelity's resize",
        "bilinear": "the CBDM/OC evaluator's input path: floats in [0, 1], bilinear to 299, then 2x - 1",
    })  # fmt: skip
    fid_backend: str = choice("torch-fidelity", {
        "torch-fidelity": "torch-fidelity's feature-level FID / KID",
        "clean-fid": "clean-fid's",
    })  # fmt: skip
    inception_weights: str | None = None  # path; else $LTGEN_INCEPTION_WEIGHTS or the torch hub cache
    pr_k: int = bounded(3, ge=1)
    dc_k: int = bounded(5, ge=1)
    min_ref_fid: int = bounded(20, ge=2)  # FID / KID of a slice (overall, group, class) need this many reference images, else NaN
    kid_subsets: int = bounded(100, ge=1)
    kid_subset_size: int = bounded(1000, ge=2)  # shrunk to the smaller set when n is small (recorded)
    bootstrap: int = bounded(0, ge=0)  # bootstrap resamples for confidence intervals (0 = off)
    real_floor: bool = True
    downstream: bool = True
    diversity: bool = True  # Vendi (generated vs real at the same n) and memorisation rows
    batch_size: int = bounded(256, ge=1)
    classifier_epochs: int = bounded(10, ge=1)  # the domain evaluator (classifier feature space): at most this many epochs
    classifier_patience: int = bounded(3, ge=1)  # ... stopping after this many epochs without a held-out gain
    classifier_per_class: int | None = bounded(None, ge=1)  # cap on the evaluator's balanced training pool (None: all images)
    downstream_epochs: int = bounded(10, ge=1)  # CAS / augmentation / real-LT classifiers
    # budget points: fractions of train.steps scored from the EMA weights kept at those steps (1 = the final
    # model, always scored); each point is its own sample + evaluate stage (docs/rankings.md)
    checkpoints: tuple[float, ...] = bounded((1.0,), gt=0.0, le=1.0)
    checkpoint_n_per_class: int | None = bounded(None, ge=2)  # images per class below the final step (None: same)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.checkpoints:
            raise ConfigError("eval.checkpoints is empty: list fractions of train.steps in (0, 1], "
                              "e.g. --set eval.checkpoints=0.5,1")


PAPER_METHODS = ("ddpm", "cbdm", "reweight", "resample")  # the grid's default, and the CPU presets'


@dataclass(frozen=True)
class GridConfig(_Checked):
    methods: tuple[str, ...] = named(PAPER_METHODS, "method")  # compose with '+', e.g. cbdm+resample
    imbalances: tuple[float, ...] = bounded((0.01,), gt=0.0, le=1.0)  # n_min / n_max each
    seeds: tuple[int, ...] = bounded((0,), ge=0)


@dataclass(frozen=True)
class Config(_Checked):
    preset: str = "custom"
    protocol: str = "ddim"  # the named evaluation protocol; rows of different protocols never mix
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: str = "auto"  # CPU threads per stage: auto (the cores free at its start) | N (benchmark.core.threads)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: Any = field(default_factory=MethodConfig)  # method_config_class(): one section per method
    # what the cell's method is made of outside the package: 'file.py sha256:...' per plugin part
    # ('' for built-in methods), so an edited plugin is a changed training setting
    method_code: str = ""
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    grid: GridConfig = field(default_factory=GridConfig)


_SECTIONS = {f.type: f"{f.name}." for f in fields(Config) if is_dataclass(f.default_factory)}  # type: ignore[arg-type]


def _section_of(cls: type) -> str:
    return _OPTION_PREFIX.get(cls) or _SECTIONS.get(cls.__name__, "")


def choice_fields(cls: type = Config, prefix: str = "") -> dict[str, dict[str, str]]:
    """Every :func:`choice` field below ``cls``: dotted key -> {value: what it means}."""
    out: dict[str, dict[str, str]] = {}
    hints = _resolved_types(cls)
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            out.update(choice_fields(hints[f.name], f"{prefix}{f.name}."))
        elif "choices" in f.metadata:
            out[prefix + f.name] = dict(f.metadata["choices"])
    return out


def bounded_fields(cls: type = Config, prefix: str = "") -> dict[str, Bounds]:
    """Every :func:`bounded` field below ``cls``: dotted key -> its range."""
    out: dict[str, Bounds] = {}
    hints = _resolved_types(cls)
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            out.update(bounded_fields(hints[f.name], f"{prefix}{f.name}."))
        elif "bounds" in f.metadata:
            out[prefix + f.name] = f.metadata["bounds"]
    return out


def choices(cls: type, name: str) -> tuple[str, ...]:
    """The values of one :func:`choice` field, e.g. ``choices(EvalConfig, "reference")``."""
    return tuple(next(f for f in fields(cls) if f.name == name).metadata["choices"])


def named_fields(cfg: Any, prefix: str = "") -> Iterator[tuple[str, tuple[str, ...], str, dict[str, str], Any]]:
    """(dotted key, the names it holds, registry, extra accepted values, default) of every :func:`named` field."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            yield from named_fields(value, f"{prefix}{f.name}.")
        elif "registry" in f.metadata:
            item = f.metadata["item"] or (lambda name: name)
            names = value if isinstance(value, tuple) else (value,)
            yield prefix + f.name, tuple(item(n) for n in names), f.metadata["registry"], f.metadata["also"], f.default


def check_names(cfg: Config, lookups: Mapping[str, Callable[[str], object]]) -> None:
    """Check every :func:`named` field against its registry: ``lookups`` maps a registry name to a
    function that raises a ConfigError naming the valid entries for a name it does not know."""
    for key, names, registry, also, default in named_fields(cfg):
        for name in names:
            if name in also:
                continue
            try:
                lookups[registry](name)
            except ConfigError as exc:
                example = f" (e.g. --set {key}={default})" if isinstance(default, str) else ""
                raise ConfigError(f"{key}: {exc}{example}") from None


# ---------------------------------------------------------------- what a changed key redoes

TRAIN, SAMPLE, EVALUATE = "train", "sample", "evaluate"
# the stage a changed key redoes (and every stage after it), by section; None: the key changes how
# fast (or where) work runs, never what it computes
_SECTION_STAGE = {"data": TRAIN, "model": TRAIN, "diffusion": TRAIN, "train": TRAIN, "method": TRAIN,
                  "sample": SAMPLE, "eval": EVALUATE,
                  "grid": None}  # a cell's grid is its own method, imbalance and seed: its folder  # fmt: skip
_KEY_STAGE = {  # the exceptions to their section, and the top-level keys
    "preset": None,
    "device": None,
    "threads": None,
    "protocol": EVALUATE,  # the name the rows carry
    "method_code": TRAIN,
    "train.ckpt_every": None,
    "train.log_every": None,
    "train.compile": None,
    "train.channels_last": None,
    "train.logger": None,  # where the figures also go, not what is computed
    "train.keep_ema_at": None,  # which EMA weights are also kept on disk, not what is computed
    "train.keep_ema_fractions": None,
    # budget points live in their own folders, each recording what it was made with (harness/points.py):
    # adding or dropping one never redoes the others
    "eval.checkpoints": None,
    "eval.checkpoint_n_per_class": None,
    "sample.batch_size": None,  # per-sample seeds: the same images for any batch
    "eval.batch_size": None,
}


def stage_of(key: str) -> str | None:
    """The first stage a change of dotted ``key`` redoes: TRAIN, SAMPLE or EVALUATE; None for a key
    that never changes what is computed."""
    if key in _KEY_STAGE:
        return _KEY_STAGE[key]
    section = key.partition(".")[0]
    if section not in _SECTION_STAGE:
        raise KeyError(f"config key {key!r} has no stage; add its section to _SECTION_STAGE or the key to _KEY_STAGE")
    return _SECTION_STAGE[section]


# ---------------------------------------------------------------- serialisation


def to_dict(cfg: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild a dataclass tree from :func:`to_dict` output (unknown keys are errors)."""
    kwargs = {}
    known = {f.name: f for f in fields(cls)}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"unknown key {key!r} in {cls.__name__}")
        ftype = _resolved_types(cls)[key]
        if cls is Config and key == "method":  # a record of the first layout: flat method.<name>_<option> keys
            value = _nest_method_section(value)
        if is_dataclass(ftype):
            kwargs[key] = from_dict(ftype, value)
        else:
            kwargs[key] = _coerce(value, ftype, key)
    return cls(**kwargs)


def _nest_method_section(section: dict) -> dict:
    """A ``method`` section of the first layout (flat <name>_<option> keys) as per-method sections."""
    if all(isinstance(v, dict) for v in section.values()):
        return section
    flat = upgrade_flat_record({f"method.{k}": v for k, v in section.items() if not isinstance(v, dict)})
    nested: dict[str, dict] = {k: dict(v) for k, v in section.items() if isinstance(v, dict)}
    for key, value in flat.items():
        _, name, option = key.split(".")
        nested.setdefault(name, {})[option] = value
    return nested


# ---------------------------------------------------------------- overrides


def all_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            keys += all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def override(cfg: Config, key: str, raw: Any) -> Config:
    """Return ``cfg`` with dotted ``key`` set to ``raw`` parsed to the field's type."""
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "method":  # method.<name>.<option>; a name's '-' is written '_'
        parts[1] = method_section(parts[1])
        key = ".".join(parts)
    valid = all_keys(cfg)
    if key not in valid and key.startswith("method."):
        raise ConfigError(_unknown_method_option(key, valid))
    if key not in valid:
        close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown config key {key!r}.{hint} Run with --dry-run to see every key, "
            "or `list` for the valid names of datasets, methods and presets."
        )
    return _set(cfg, parts, raw, key)


def _unknown_method_option(key: str, valid: list[str]) -> str:
    """Which method does have that option, or which options the named method has."""
    valid = [k for k in valid if k.startswith("method.")]
    parts = key.split(".")
    if len(parts) != 3:
        renamed = legacy_method_keys().get(key)
        if renamed:
            return f"{key!r} is now {' and '.join(renamed)} (options are per method: method.<name>.<option>)"
        example = f", e.g. --set {valid[0]}=..." if valid else ""
        return f"{key!r} is not a method option: write method.<name>.<option>{example}"
    _, section, option = parts
    own = [k for k in valid if k.startswith(f"method.{section}.")]
    others = [k for k in valid if k.endswith(f".{option}") and k not in own]
    elsewhere = f" {', '.join(others)} belong{'s' if len(others) == 1 else ''} to another method." if others else ""
    if not own:
        sections = sorted({k.split(".")[1] for k in valid})
        return (f"unknown config key {key!r}: method {section!r} has no options (or is not registered; a plugin "
                f"method needs --plugin FILE).{elsewhere} Methods with options: {', '.join(sections)}")
    close = difflib.get_close_matches(key, own, n=2, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (f"unknown config key {key!r}: method {section!r} has no option {option!r}.{elsewhere}{hint} "
            f"Its options: {', '.join(k.split('.')[2] for k in own)} (`list` shows them)")


def legacy_method_keys() -> dict[str, list[str]]:
    """The flat keys of the first layout (``method.<name>_<option>``) -> the per-method keys they became, from
    each options class's ``legacy`` map (old field name -> its option)."""
    out: dict[str, list[str]] = {}
    for section, cls in _METHOD_OPTIONS.items():
        for old, new in getattr(cls, "legacy", {}).items():
            out.setdefault(f"method.{old}", []).append(f"method.{section}.{new}")
    return out


def upgrade_flat_record(flat: dict[str, Any]) -> dict[str, Any]:
    """A flattened config record with its first-layout method keys (``method.<name>_<option>``) mapped to the
    per-method keys they became; keys of that layout no registered method claims are dropped."""
    if not any(k.startswith("method.") and k.count(".") == 1 for k in flat):
        return flat
    out = {k: v for k, v in flat.items() if not (k.startswith("method.") and k.count(".") == 1)}
    for old, news in legacy_method_keys().items():
        if old in flat:
            out.update({new: flat[old] for new in news})
    return out


def _set(node: Any, parts: list[str], raw: Any, full: str) -> Any:
    name = parts[0]
    if len(parts) > 1:
        return replace(node, **{name: _set(getattr(node, name), parts[1:], raw, full)})
    ftype = _resolved_types(type(node))[name]
    return replace(node, **{name: _coerce(raw, ftype, full)})


def apply_overrides(cfg: Config, pairs: list[str]) -> Config:
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r} (for example --set train.steps=2000)")
        key, raw = pair.split("=", 1)
        cfg = override(cfg, key.strip(), raw.strip())
    return cfg


def _resolved_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    if cls is Config:  # the method section's class is made from the registered methods
        hints["method"] = method_config_class()
    return hints


_NONE_WORDS = {"none", "null", ""}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(raw: Any, ftype: Any, key: str) -> Any:
    origin = typing.get_origin(ftype)
    args = typing.get_args(ftype)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in _NONE_WORDS):
            return None
        return _coerce(raw, non_none[0], key)
    if origin is tuple:
        inner = args[0]
        if isinstance(raw, str):
            items = [s for s in raw.replace(" ", "").strip("()[]").split(",") if s]
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
            items = [raw]  # a record of an older version held one number where a list is now taken
        else:
            items = list(raw)
        return tuple(_coerce(i, inner, key) for i in items)
    try:
        if ftype is bool:
            if isinstance(raw, bool):
                return raw
            word = str(raw).lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
            raise ValueError
        if ftype is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            if isinstance(raw, str):
                try:
                    return int(raw)
                except ValueError:  # accept "2e3" for 2000, but not "2.5"
                    as_float = float(raw)
                    if not as_float.is_integer():
                        raise
                    return int(as_float)
            return int(raw)
        if ftype is float:
            return float(raw)
        if ftype is str:
            return str(raw)
    except (TypeError, ValueError):
        pass
    else:
        return raw
    tname = getattr(ftype, "__name__", str(ftype))
    raise ConfigError(f"config key {key!r} expects {tname}, got {raw!r}")
