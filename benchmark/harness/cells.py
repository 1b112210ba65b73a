"""Grid cells: what one cell is (dataset x imbalance x method x seed), where its folder lives, its
config, and the config record that guards a folder against mixing runs of different settings: a
changed sampling or evaluation key redoes only those stages, a changed training key is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from benchmark.core.config import EVALUATE, SAMPLE, TRAIN, Config, GridConfig, stage_of, to_dict, upgrade_flat_record
from benchmark.core.device import bf16_support, resolve_precision
from benchmark.core.errors import ConfigError
from benchmark.core.files import write_text_atomic
from benchmark.core.names import REAL, cell_folder, dataset_slug  # noqa: F401  (dataset_slug: imported from here too)
from benchmark.core.presets import protocol_guidance
from benchmark.engine.checkpoint import ema_checkpoint_name
from benchmark.harness.points import kept_steps
from methods import METHODS, MethodSpec, resolve
from methods.registry import method_source


@dataclass(frozen=True)
class Cell:
    dataset: str
    profile: str
    imbalance: float
    method: str
    seed: int

    @property
    def spec(self) -> MethodSpec:
        """The cell's method resolved (cached by name); not for the real-data cell."""
        return resolve(self.method)

    @property
    def name(self) -> str:
        return f"{dataset_slug(self.dataset)} {self.profile}-{self.imbalance:g} {self.method} seed{self.seed}"

    def folder(self, out: Path) -> Path:
        return cell_folder(out, self.dataset, self.profile, self.imbalance, self.method, self.seed)


def method_order(methods: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The methods in run order, each fine-tuning method (``init_from_method``, e.g. cbdm-ft) after
    the method it starts from; and the methods added to the grid for that reason."""
    order: list[str] = []
    added: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in chain:
            raise ConfigError(f"methods {' -> '.join((*chain, name))} fine-tune each other in a circle")
        tuner = resolve(name).fine_tuner
        if tuner is not None:
            if tuner.init_from_method not in methods and tuner.init_from_method not in added:
                added.append(tuner.init_from_method)
            visit(tuner.init_from_method, (*chain, name))
        order.append(name)

    for name in methods:
        visit(name, ())
    return order, added


def expand_grid(cfg: Config) -> list[Cell]:
    """Cells in run order; the real-data reference cells come first (they are shared).  A method that
    fine-tunes another's model runs after that method's cell, which is added when not asked for."""
    grid = cfg.grid
    cells = []
    # a value given twice (--seeds 0,0) is one cell: two workers must never run the same folder
    imbalances = tuple(dict.fromkeys(grid.imbalances)) if cfg.data.profile in ("exp", "step") else (1.0,)
    seeds = tuple(dict.fromkeys(grid.seeds))
    methods, _added = method_order(grid.methods)
    for imbalance in imbalances:
        if cfg.eval.real_floor or cfg.eval.downstream:
            cells += [Cell(cfg.data.dataset, cfg.data.profile, imbalance, REAL, s) for s in seeds]
        for method in methods:
            cells += [Cell(cfg.data.dataset, cfg.data.profile, imbalance, method, s) for s in seeds]
    return cells


def parent_cell(cell: Cell) -> Cell | None:
    """The cell whose finished model ``cell`` fine-tunes (same dataset, imbalance, seed), or None.
    Launchers that run cells in parallel must finish it first."""
    if cell.method == REAL:
        return None
    tuner = cell.spec.fine_tuner
    return None if tuner is None else replace(cell, method=tuner.init_from_method)


def method_batch(cfg: Config, method: str) -> int:
    """The global batch of ``method``: ``train.batch_size``, or the last ``train.method_batch_size`` rule
    'name=batch' that covers it.  A rule covers the method of that name and every method whose objective is
    that method's or derives from it ('cbdm=48': cbdm, cbdm-ft, cbdm+resample, cbdm+reweight)."""
    batch = cfg.train.batch_size
    if method == REAL:  # the real-data cells train nothing
        return batch
    objective = resolve(method).objective
    for item in cfg.train.method_batch_size:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise ConfigError(f"train.method_batch_size entry {item!r} is not 'method=batch' (e.g. cbdm=48)")
        if name == method or issubclass(objective, METHODS.get(name)):
            batch = int(value)
    return batch


def _keep_ema_steps(cfg: Config, cell: Cell) -> tuple[int, ...]:
    """Steps of ``cell``'s training whose EMA weights a fine-tuning cell of the grid starts from."""
    steps = set()
    for name in cfg.grid.methods:
        tuner = resolve(name).fine_tuner
        if tuner is not None and tuner.init_from_method == cell.method:
            step = tuner.init_step(cfg)
            if step is not None:
                steps.add(step)
    return tuple(sorted(steps))


def cell_config(cfg: Config, cell: Cell, out: Path | None = None) -> Config:
    """The config of one cell; ``out`` (the results folder) is needed for a fine-tuning cell, whose
    ``train.init_from`` is its parent cell's EMA weights at the step it starts from (kept by the parent,
    see ``train.keep_ema_at``) or the parent's final model.pt."""
    ccfg = replace(
        cfg,
        data=replace(cfg.data, dataset=cell.dataset, profile=cell.profile, imbalance=cell.imbalance),
        train=replace(cfg.train, batch_size=method_batch(cfg, cell.method), keep_ema_at=_keep_ema_steps(cfg, cell)),
        grid=GridConfig(methods=(cell.method,), imbalances=(cell.imbalance,), seeds=(cell.seed,)),
        method_code="" if cell.method == REAL else method_source(cell.spec),
    )
    omega = protocol_guidance(cfg.protocol, dataset=dataset_slug(cell.dataset), imbalance=cell.imbalance,
                              method=cell.method)
    if cfg.sample.guidance is None and omega is not None:  # the table's omega for this method and data, recorded
        ccfg = replace(ccfg, sample=replace(ccfg.sample, guidance=(omega,)))
    parent = parent_cell(cell)
    if parent is None:
        return _keeping_points(ccfg, cell)
    if out is None:
        raise ValueError(f"cell_config needs the results folder for {cell.name}, which fine-tunes {parent.name}")
    tuner = cell.spec.fine_tuner
    step = tuner.init_step(ccfg)
    ccfg = tuner.fine_tune_config(ccfg)
    folder = parent.folder(Path(out).resolve())
    init = folder / "model.pt" if step is None else folder / "checkpoints" / ema_checkpoint_name(step)
    return _keeping_points(replace(ccfg, train=replace(ccfg.train, init_from=str(init))), cell)


def _keeping_points(ccfg: Config, cell: Cell) -> Config:
    """The cell's config keeping, besides what fine-tuning cells start from, the EMA weights of its own
    budget points (eval.checkpoints and train.keep_ema_fractions of its own train.steps)."""
    if cell.method == REAL:
        return ccfg
    keep = tuple(sorted({*ccfg.train.keep_ema_at, *kept_steps(ccfg)}))
    return replace(ccfg, train=replace(ccfg.train, keep_ema_at=keep))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def cell_stage_of(cell: Cell, key: str) -> str | None:
    """The first stage of ``cell`` a change of ``key`` redoes (see :func:`benchmark.core.config.stage_of`).
    A real-data cell trains and samples nothing: its data is its training, and of the sampling keys
    only the number of images per class counts (the real floor's n)."""
    stage = stage_of(key)
    if cell.method != REAL or stage is None:
        return stage
    if key.startswith("data."):
        return TRAIN
    return EVALUATE if stage == EVALUATE or key == "sample.n_per_class" else None


@dataclass(frozen=True)
class Change:
    """How a cell's new config differs from its folder's record: the first stage to redo (SAMPLE or
    EVALUATE; None when no changed key affects this cell) and the changed keys (key, old, new)."""

    redo: str | None
    keys: tuple[tuple[str, object, object], ...]

    def describe(self, limit: int = 5) -> str:
        shown = ", ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in self.keys[:limit])
        return shown + (f" and {len(self.keys) - limit} more" if len(self.keys) > limit else "")


def check_or_write_config(folder: Path, cfg: Config, cell: Cell) -> Change | None:
    """Write the cell's config record into a new folder, or compare it with the record there.

    None: no record yet (now written) or no key that matters changed.  A :class:`Change` when
    sampling or evaluation keys changed: the caller removes what they invalidate, then writes the
    new record with :func:`write_config`.  A changed training key is refused (ConfigError naming
    ``--force`` and ``--out``): the model would no longer match its config.
    """
    path = folder / "config.json"
    if not path.exists() or not _holds_work(folder):  # a folder that computed nothing takes the new config
        write_config(folder, cfg, cell)
        return None
    old = upgrade_flat_record(_flatten(json.loads(path.read_text())["config"]))  # a first-layout record too
    new = _flatten(to_dict(cfg))
    if parent_cell(cell) is not None:  # the grid's own init_from: where the parent cell is inside OUT
        for rec in (old, new):
            rec["train.init_from"] = _inside_out(rec.get("train.init_from"))
    # Only keys both records know are compared: a field added in a later version (with a default
    # that keeps the old behaviour) must not orphan every finished cell of an older results folder.
    for rec in (old, new):  # the main point's scale; the others are points with their own folders
        if "sample.guidance" in rec:
            rec["sample.guidance"] = main_scale(rec["sample.guidance"])
    changed = [(k, old[k], new[k]) for k in sorted(set(old) & set(new)) if old[k] != new[k]
               and stage_of(k) is not None and _reads(cell, k)]
    if not changed:
        return None
    training = [c for c in changed if cell_stage_of(cell, c[0]) == TRAIN]
    if training:
        shown = Change(TRAIN, tuple(training)).describe()
        raise ConfigError(
            f"{folder} holds a run made with a different config ({shown}), and these keys change the trained "
            "model. Rerun with --force to retrain this cell, or use --out for a new results folder. (Changed "
            "sampling or evaluation keys alone redo only those stages.)"
        )
    stages = {cell_stage_of(cell, k) for k, _, _ in changed}
    redo = SAMPLE if SAMPLE in stages else EVALUATE if EVALUATE in stages else None
    return Change(redo, tuple(changed))


def main_scale(recorded):
    """The first guidance scale of a config record's ``sample.guidance`` (a number in records written
    before it took a list; None for each method's official one)."""
    if isinstance(recorded, list):
        return float(recorded[0]) if recorded else None
    return None if recorded is None else float(recorded)


def write_config(folder: Path, cfg: Config, cell: Cell) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"cell": cell.__dict__, "config": to_dict(cfg)}
    write_text_atomic(folder / "config.json", json.dumps(record, indent=2, sort_keys=True))


def row_key(cell: Cell) -> dict:
    """The values of :data:`benchmark.harness.results.FOLDER_KEY` in the rows this cell writes."""
    return {"dataset": dataset_slug(cell.dataset), "profile": cell.profile, "imbalance": cell.imbalance,
            "method": cell.method, "seed": cell.seed}  # fmt: skip


def _reads(cell: Cell, key: str) -> bool:
    """Whether ``key`` can change what ``cell`` computes: a method.<name>.* option only when the cell's method
    has that part (each part reads its own section)."""
    if not key.startswith("method.") or cell.method == REAL:
        return not key.startswith("method.")  # the real-data cells read no method option
    return key.split(".")[1] in cell.spec.sections


def _holds_work(folder: Path) -> bool:
    """Whether a cell folder holds anything computed (a cell that failed before training holds none, so a
    rerun with a corrected config may take it over)."""
    if any((folder / name).exists() for name in ("model.pt", "samples.npz", "metrics.csv", "done.json")):
        return True
    ckpts = folder / "checkpoints"
    return ckpts.is_dir() and any(ckpts.iterdir())


def resolve_precisions(cfg: Config, folder: Path, device) -> Config:
    """The cell's config with train.precision and sample.precision made concrete (fp32 | bf16).

    ``auto`` in a cell whose config.json already names a precision keeps that one where it can
    run (a resumed run does not switch precision midway, and a finished cell is not re-resolved
    on another machine); otherwise ``auto`` resolves on ``device``.  A finished cell is never
    checked against the device: nothing runs there.
    """
    path = Path(folder) / "config.json"
    old = json.loads(path.read_text())["config"] if path.exists() else {}
    done = (Path(folder) / "done.json").exists()
    support = bf16_support(device)
    chosen = {}
    for stage in ("train", "sample"):
        asked, prev = getattr(cfg, stage).precision, old.get(stage, {}).get("precision")
        if asked == "auto" and prev in ("fp32", "bf16") and (done or prev == "fp32" or support.runs):
            chosen[stage] = prev
        elif done and asked in ("fp32", "bf16"):
            chosen[stage] = asked
        else:
            chosen[stage] = resolve_precision(asked, device, key=f"{stage}.precision")
    return replace(cfg, train=replace(cfg.train, precision=chosen["train"]),
                   sample=replace(cfg.sample, precision=chosen["sample"]))


def _inside_out(path: str | None) -> str | None:
    """A grid-set init_from (OUT/runs/.../model.pt) without OUT, so a moved results folder still resumes."""
    if not path:
        return path
    parts = Path(path).parts
    return "/".join(parts[len(parts) - 1 - parts[::-1].index("runs"):]) if "runs" in parts else path
