"""Grid runs: dataset x imbalance x method x seed, each cell in its own resumable folder.

Every stage writes into the cell folder and is skipped when its output exists: training
(``model.pt``), sampling (``samples.npz``), evaluation (``metrics.csv``).  The resolved
config is written before work starts and checked on every rerun, so a changed setting can
never silently mix with old outputs: a changed evaluation key re-evaluates the stored
samples, a changed sampling key resamples from the stored model, a changed training key is
refused.  A cell's rows enter ``results.csv`` when the cell is complete, replacing those of an
earlier run of it.  What every cell needs is checked once before the first starts (see
:mod:`benchmark.harness.preflight`); a cell failing on its own is logged and reported, the
others go on.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from benchmark.core.config import EVALUATE, SAMPLE, Config
from benchmark.core.device import resolve_device, resolve_precision
from benchmark.core.distributed import broadcast, current
from benchmark.core.errors import BenchmarkError, DataError
from benchmark.core.files import write_csv_atomic, write_text_atomic
from benchmark.core.names import REAL
from benchmark.data import build_dataset
from benchmark.eval.outlook import evaluator_outlook
from benchmark.harness.cells import (
    Cell,
    Change,
    cell_config,
    check_or_write_config,
    expand_grid,
    method_order,
    resolve_precisions,
    row_key,
    write_config,
)
from benchmark.harness.points import cell_points, forget_points, pending
from benchmark.harness.preflight import preflight
from benchmark.harness.results import RESULT_COLUMNS, append_cell, drop_cell, put_cell
from benchmark.harness.stages import read_point_rows, run_stages

log = logging.getLogger("ltgen")


@dataclass
class CellOutcome:
    cell: Cell
    folder: Path
    status: str  # done | skipped | failed
    seconds: float
    error: str = ""


def run_grid(cfg: Config, out: Path, *, force: bool = False, progress: bool = True) -> list[CellOutcome]:
    device = resolve_device(cfg.device)
    for stage in ("train", "sample"):  # bad input fails here, once, not in every cell
        resolve_precision(getattr(cfg, stage).precision, device, key=f"{stage}.precision")
    out = Path(out)
    preflight(cfg, out, force=force)  # what every cell needs, checked once: one message, nothing run
    out.mkdir(parents=True, exist_ok=True)
    cells = expand_grid(cfg)
    outcomes = []
    say = print if current().main else (lambda *a, **k: None)  # under torchrun rank 0 speaks
    for name in method_order(cfg.grid.methods)[1]:
        say(f"note: method {name!r} added to the grid: a method of the grid fine-tunes its models", flush=True)
    for line in evaluation_check(cfg, cells):
        say(line, flush=True)
    for i, cell in enumerate(cells, 1):
        folder = cell.folder(out)
        say(f"[{i}/{len(cells)}] {cell.name}  ->  {folder}", flush=True)
        outcomes.append(run_cell(cfg, cell, out, device=device, force=force, progress=progress))
        status = outcomes[-1]
        say(f"[{i}/{len(cells)}] {cell.name}: {status.status} in {status.seconds:.0f}s"
              + (f"  ERROR: {status.error}" if status.error else ""), flush=True)  # fmt: skip
    return outcomes


def evaluation_check(cfg: Config, cells: list[Cell]) -> list[str]:
    """Before the first cell: what 'auto' resolves to, and how far a classifier evaluator can be trusted
    at this data's size (see benchmark/eval/outlook.py).  Missing Inception weights for an explicit
    ``eval.feature_space=inception`` are an error here, before any training.  Data that cannot be
    loaded is left to the cells, which report it."""
    if not cells:
        return []
    try:
        first = cells[0]
        dataset = build_dataset(replace(cfg.data, dataset=first.dataset, profile=first.profile, imbalance=first.imbalance))
    except DataError:
        return []
    return evaluator_outlook(dataset, cfg.eval)


def run_cell(cfg: Config, cell: Cell, out: Path, *, device, force: bool = False, progress: bool = True) -> CellOutcome:
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
        drop_cell(out / "results.csv", row_key(cell))
    handler = None
    try:
        ccfg = resolve_precisions(cell_config(cfg, cell, out), folder, device)
        change = check_or_write_config(folder, ccfg, cell)
        if change is not None:
            _redo(change, ccfg, cell, out)
        if (folder / "done.json").exists() and (cell.method == REAL or not pending(ccfg, folder)):
            announce("skip")
            rows = pd.concat([read_point_rows(p.folder(folder)) for p in cell_points(ccfg)] if cell.method != REAL
                             else [pd.read_csv(folder / "metrics.csv", dtype={"split_fingerprint": str, "note": str})])
            append_cell(out / "results.csv", rows)  # no-op when present; heals a table lost or deleted
            return CellOutcome(cell, folder, "skipped", time.time() - start)
        handler = _attach_log(folder / "cell.log")
        log.info("cell %s, config %s", cell.name, folder / "config.json")
        announce("run")
        rows = run_stages(ccfg, cell, folder, device=device, cache_dir=out / "cache", progress=progress)
        rows = rows[RESULT_COLUMNS]
        if cell.method == REAL:  # a method cell's points wrote their own files as each finished (stages.write_point)
            write_csv_atomic(folder / "metrics.csv", rows)
        put_cell(out / "results.csv", rows)  # replaces the rows of an earlier run of this cell, if any
        if cell.method == REAL:
            write_text_atomic(folder / "done.json", json.dumps({"rows": len(rows), "finished": time.ctime()}))
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


def prepare_rescore(cfg: Config, out: Path) -> list[str]:
    """``run --rescore``: every finished cell of the grid evaluates again from what it stored (its
    samples.npz; a real-data cell from the data), with the current code, and its rows replace the
    old ones when it finishes.  Nothing is retrained or resampled: a finished method cell without
    stored samples is left as it is, and said so.  Returns one line per cell."""
    lines = []
    for cell in expand_grid(cfg):
        folder = cell.folder(out)
        if not (folder / "done.json").exists():
            continue
        if cell.method != REAL and not (folder / "samples.npz").exists():
            lines.append(f"  {cell.name}: not rescored: {folder / 'samples.npz'} is gone (its rows stay; "
                         "--force retrains and resamples it)")
            continue
        for name in ("done.json", "metrics.csv"):
            (folder / name).unlink(missing_ok=True)
        forget_points(folder, samples=False)
        with open(folder / "cell.log", "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} --rescore: re-evaluating from the stored samples\n")
        lines.append(f"  {cell.name}: re-evaluating from the stored samples")
    return lines


def _redo(change: Change, cfg: Config, cell: Cell, out: Path) -> None:
    """Remove what the changed keys invalidate, record the new config, and say what will be redone."""
    folder = cell.folder(out)
    if change.redo == SAMPLE:
        gone = ["samples.npz", "samples.npz.parts", "metrics.csv", "done.json"]
        action = "resampling from the stored model and re-evaluating"
    elif change.redo == EVALUATE:
        gone = ["metrics.csv", "done.json"]
        action = "re-evaluating from the stored samples"
    else:
        gone, action = [], "nothing to redo: no changed key affects what this cell computes"
    for name in gone:
        path = folder / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    if change.redo in (SAMPLE, EVALUATE) and {k for k, _, _ in change.keys} != {"sample.guidance"}:
        forget_points(folder, samples=change.redo == SAMPLE)  # a new first scale concerns the main point alone
    if change.redo == SAMPLE:  # rows of samples that no longer exist (any feature space) go now
        drop_cell(out / "results.csv", row_key(cell))
    write_config(folder, cfg, cell)
    kept = [name for name in ("model.pt", "samples.npz") if (folder / name).exists()]
    message = f"config changed ({change.describe()}): {action}" + (f"; kept {', '.join(kept)}" if kept else "")
    with open(folder / "cell.log", "a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
    print(f"  {cell.name}: {message}", flush=True)


def _follow_cell(cfg: Config, cell: Cell, out: Path, *, device, progress: bool) -> CellOutcome:
    """Ranks 1.. of a torchrun job: train, sample and extract features with rank 0 when it runs the cell."""
    folder, start = cell.folder(out), time.time()
    if cell.method == REAL or broadcast(None) != "run":
        return CellOutcome(cell, folder, "skipped", 0.0)
    try:
        ccfg = resolve_precisions(cell_config(cfg, cell, out), folder, device)  # rank 0 wrote config.json already
        run_stages(ccfg, cell, folder, device=device, cache_dir=out / "cache", progress=False)
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


def summarize(outcomes: list[CellOutcome], out: Path, *, wall: float | None = None) -> str:
    """The closing lines of a run; ``wall``: the command's own seconds (cells that ran side by side,
    ``--jobs``, sum to more than the time the run took, so the sum is said as such)."""
    done = sum(o.status == "done" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    failed = [o for o in outcomes if o.status == "failed"]
    total = sum(o.seconds for o in outcomes)
    took = f"in {total / 60:.1f} min"
    if wall is not None:
        took = f"in {wall / 60:.1f} min (the cells' own times sum to {total / 60:.1f})"
    lines = [
        "",
        f"{len(outcomes)} cells: {done} run, {skipped} already finished (skipped), {len(failed)} failed {took}",
        f"results table : {Path(out) / 'results.csv'}",
        f"leaderboards  : {Path(out) / 'leaderboard.md'} (.tex; every column: leaderboard_full.md, .csv)",
        f"plots         : {Path(out) / 'plots'}/",
        f"one page      : {Path(out) / 'report.html'}",
        f"cell folders  : {Path(out) / 'runs'}/  (config.json, model.pt + model.safetensors, samples.npz, metrics.csv, cell.log)",
    ]
    for o in failed:
        lines.append(f"FAILED {o.cell.name}: {o.error}  (log: {o.folder / 'cell.log'})")
    return "\n".join(lines)
