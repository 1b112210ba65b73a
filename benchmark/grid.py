"""Grid runs: dataset x imbalance x method x seed, each cell in its own resumable folder.

Every stage writes into the cell folder and is skipped when its output exists: training
(``model.pt``), sampling (``samples.npz``), evaluation (``metrics.csv``).  The resolved
config is written before work starts and checked on every rerun, so a changed setting can
never silently mix with old outputs.  A cell's rows enter ``results.csv`` once, when the
cell is complete; a failing cell is logged and reported, the others go on.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from .config import Config, GridConfig, from_dict, to_dict
from .errors import BenchmarkError, ConfigError
from .results import COLUMNS, append_cell

log = logging.getLogger("ltgen")

REAL = "real"  # pseudo-method: real held-out images (metric floor) and the real-LT classifier


@dataclass(frozen=True)
class Cell:
    dataset: str
    profile: str
    imbalance: float
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{dataset_slug(self.dataset)} {self.profile}-{self.imbalance:g} {self.method} seed{self.seed}"

    def folder(self, out: Path) -> Path:
        return (
            Path(out) / "runs" / dataset_slug(self.dataset) / f"{self.profile}-{self.imbalance:g}"
            / self.method.replace("+", "_") / f"seed{self.seed}"
        )  # fmt: skip


def dataset_slug(spec: str) -> str:
    if spec.startswith("imagefolder:"):
        return "imagefolder-" + Path(spec.split(":", 1)[1].rstrip("/")).name
    return spec


def method_order(methods: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The methods in run order, each fine-tuning method (``init_from_method``, e.g. cbdm-ft) after
    the method it starts from; and the methods added to the grid for that reason."""
    from methods import fine_tuner

    order: list[str] = []
    added: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in chain:
            raise ConfigError(f"methods {' -> '.join((*chain, name))} fine-tune each other in a circle")
        tuner = fine_tuner(name)
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
    imbalances = grid.imbalances if cfg.data.profile in ("exp", "step") else (1.0,)
    methods, _added = method_order(grid.methods)
    for imbalance in imbalances:
        if cfg.eval.real_floor or cfg.eval.downstream:
            cells += [Cell(cfg.data.dataset, cfg.data.profile, imbalance, REAL, s) for s in grid.seeds]
        for method in methods:
            cells += [Cell(cfg.data.dataset, cfg.data.profile, imbalance, method, s) for s in grid.seeds]
    return cells


def parent_cell(cell: Cell) -> Cell | None:
    """The cell whose finished model ``cell`` fine-tunes (same dataset, imbalance, seed), or None.
    Launchers that run cells in parallel must finish it first."""
    if cell.method == REAL:
        return None
    from methods import fine_tuner

    tuner = fine_tuner(cell.method)
    return None if tuner is None else replace(cell, method=tuner.init_from_method)


def cell_config(cfg: Config, cell: Cell, out: Path | None = None) -> Config:
    """The config of one cell; ``out`` (the results folder) is needed for a fine-tuning cell, whose
    ``train.init_from`` is its parent cell's model.pt."""
    batch = cfg.train.batch_size
    for item in cfg.train.method_batch_size:
        name, _, value = item.partition("=")
        if name == cell.method or name in cell.method.split("+"):
            batch = int(value)
    ccfg = replace(
        cfg,
        data=replace(cfg.data, dataset=cell.dataset, profile=cell.profile, imbalance=cell.imbalance),
        train=replace(cfg.train, batch_size=batch),
        grid=GridConfig(methods=(cell.method,), imbalances=(cell.imbalance,), seeds=(cell.seed,)),
    )
    parent = parent_cell(cell)
    if parent is None:
        return ccfg
    if out is None:
        raise ValueError(f"cell_config needs the results folder for {cell.name}, which fine-tunes {parent.name}")
    from methods import fine_tuner

    ccfg = fine_tuner(cell.method).fine_tune_config(ccfg)
    init = parent.folder(Path(out).resolve()) / "model.pt"
    return replace(ccfg, train=replace(ccfg.train, init_from=str(init)))


# keys that change how fast work runs, never what it computes
_EXECUTION_ONLY = {"device", "preset", "sample.batch_size", "eval.batch_size", "train.ckpt_every", "train.log_every"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def check_or_write_config(folder: Path, cfg: Config, cell: Cell) -> None:
    path = folder / "config.json"
    record = {"cell": cell.__dict__, "config": to_dict(cfg)}
    if path.exists():
        old = _flatten(json.loads(path.read_text())["config"])
        new = _flatten(record["config"])
        # Only keys both records know are compared: a field added in a later version (with a default
        # that keeps the old behaviour) must not orphan every finished cell of an older results folder.
        shared = set(old) & set(new)
        if parent_cell(cell) is not None:  # the grid's own init_from: where the parent cell is inside OUT
            for rec in (old, new):
                rec["train.init_from"] = _inside_out(rec.get("train.init_from"))
        diff = [k for k in sorted(shared) if k not in _EXECUTION_ONLY and old[k] != new[k]]
        if diff:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:5])
            raise ConfigError(
                f"{folder} holds a run made with a different config ({shown}). "
                "Rerun with --force to redo this cell, or use --out for a new results folder."
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True))


def _inside_out(path: str | None) -> str | None:
    """A grid-set init_from (OUT/runs/.../model.pt) without OUT, so a moved results folder still resumes."""
    if not path:
        return path
    parts = Path(path).parts
    return "/".join(parts[len(parts) - 1 - parts[::-1].index("runs"):]) if "runs" in parts else path


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_cell_config(folder: Path) -> Config:
    return from_dict(Config, json.loads((Path(folder) / "config.json").read_text())["config"])


@dataclass
class CellOutcome:
    cell: Cell
    folder: Path
    status: str  # done | skipped | failed
    seconds: float
    error: str = ""


def run_grid(cfg: Config, out: Path, *, force: bool = False, progress: bool = True) -> list[CellOutcome]:
    from .device import resolve_device
    from .distributed import current

    device = resolve_device(cfg.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = expand_grid(cfg)
    outcomes = []
    say = print if current().main else (lambda *a, **k: None)  # under torchrun rank 0 speaks
    for name in method_order(cfg.grid.methods)[1]:
        say(f"note: method {name!r} added to the grid: a method of the grid fine-tunes its models", flush=True)
    for i, cell in enumerate(cells, 1):
        folder = cell.folder(out)
        say(f"[{i}/{len(cells)}] {cell.name}  ->  {folder}", flush=True)
        outcomes.append(run_cell(cfg, cell, out, device=device, force=force, progress=progress))
        status = outcomes[-1]
        say(f"[{i}/{len(cells)}] {cell.name}: {status.status} in {status.seconds:.0f}s"
              + (f"  ERROR: {status.error}" if status.error else ""), flush=True)  # fmt: skip
    return outcomes


def run_cell(cfg: Config, cell: Cell, out: Path, *, device, force: bool = False, progress: bool = True) -> CellOutcome:
    from .distributed import broadcast, current
    from .stages import run_stages

    folder = cell.folder(out)
    start = time.time()
    d = current()
    if d.world > 1 and not d.main:  # torchrun: follow rank 0's decision, train and sample, write nothing
        return _follow_cell(cfg, cell, out, device=device, progress=progress)
    shared = d.world > 1 and cell.method != REAL  # real cells need no training: rank 0 alone runs them

    joined = False  # True once the other ranks are inside this cell with rank 0

    def announce(decision: str) -> None:
        nonlocal shared, joined
        if shared:
            broadcast(decision)
            shared, joined = False, decision == "run"

    if force and folder.exists():
        _clear_cell(folder)
    ccfg = cell_config(cfg, cell, out)
    handler = None
    try:
        check_or_write_config(folder, ccfg, cell)
        if (folder / "done.json").exists():
            announce("skip")
            rows = pd.read_csv(folder / "metrics.csv", dtype={"split_fingerprint": str, "note": str})
            append_cell(out / "results.csv", rows)  # no-op when present; heals a table lost or deleted
            return CellOutcome(cell, folder, "skipped", time.time() - start)
        handler = _attach_log(folder / "cell.log")
        log.info("cell %s, config %s", cell.name, folder / "config.json")
        announce("run")
        rows = run_stages(ccfg, cell, folder, device=device, cache_dir=out / "cache", progress=progress)
        rows = rows[COLUMNS]
        rows.to_csv(folder / "metrics.csv.tmp", index=False)
        os.replace(folder / "metrics.csv.tmp", folder / "metrics.csv")
        append_cell(out / "results.csv", rows, replace=force)
        _write_text_atomic(folder / "done.json", json.dumps({"rows": len(rows), "finished": time.ctime()}))
        return CellOutcome(cell, folder, "done", time.time() - start)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one failing cell must not lose the others
        announce("skip")
        if isinstance(exc, BenchmarkError):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "cell.log", "a") as fh:
            fh.write(traceback.format_exc())
        if joined:  # the other ranks are inside this cell: they cannot go on without rank 0
            raise RankFailure(cell, 0, message) from exc
        return CellOutcome(cell, folder, "failed", time.time() - start, message)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _follow_cell(cfg: Config, cell: Cell, out: Path, *, device, progress: bool) -> CellOutcome:
    """Ranks 1.. of a torchrun job: train, sample and extract features with rank 0 when it runs the cell."""
    from .distributed import broadcast, current
    from .stages import run_stages

    folder, start = cell.folder(out), time.time()
    if cell.method == REAL or broadcast(None) != "run":
        return CellOutcome(cell, folder, "skipped", 0.0)
    try:
        run_stages(cell_config(cfg, cell, out), cell, folder, device=device, cache_dir=out / "cache", progress=False)
    except Exception as exc:
        message = str(exc) if isinstance(exc, BenchmarkError) else f"{type(exc).__name__}: {exc}"
        rank = current().rank
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"cell.rank{rank}.log", "a") as fh:  # rank 0 may be stopped before it can record it
            fh.write(traceback.format_exc())
        raise RankFailure(cell, rank, message) from exc
    return CellOutcome(cell, folder, "done", time.time() - start)


class RankFailure(BenchmarkError):
    """A cell failed on one rank of a torchrun job while the other ranks were inside it.

    The ranks can no longer meet at the same collectives, so the job stops: this process exits
    with an error and torchrun stops the others at once (instead of their waiting for the
    process-group timeout).  Finished cells are kept; the same command resumes.
    """

    def __init__(self, cell: Cell, rank: int, message: str) -> None:
        super().__init__(
            f"cell {cell.name} failed on rank {rank}: {message}. Under torchrun the other processes cannot go on "
            "without it, so the job stops here; fix the cause and rerun the same command: finished cells are "
            "skipped and this one resumes from its last checkpoint"
        )


def _clear_cell(folder: Path) -> None:
    """Everything but the record and logs of the Slurm job that may be running this very cell."""
    import shutil

    for path in folder.iterdir():
        if path.name in ("slurm.json", "submitit"):
            continue
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _attach_log(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def summarize(outcomes: list[CellOutcome], out: Path) -> str:
    done = sum(o.status == "done" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    failed = [o for o in outcomes if o.status == "failed"]
    total = sum(o.seconds for o in outcomes)
    lines = [
        "",
        f"{len(outcomes)} cells: {done} run, {skipped} already finished (skipped), {len(failed)} failed "
        f"in {total / 60:.1f} min",
        f"results table : {Path(out) / 'results.csv'}",
        f"leaderboards  : {Path(out) / 'leaderboard.md'} (.tex, .csv)",
        f"plots         : {Path(out) / 'plots'}/",
        f"cell folders  : {Path(out) / 'runs'}/  (config.json, model.pt, samples.npz, metrics.csv, cell.log)",
    ]
    for o in failed:
        lines.append(f"FAILED {o.cell.name}: {o.error}  (log: {o.folder / 'cell.log'})")
    return "\n".join(lines)
