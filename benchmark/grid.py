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
import math
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


def expand_grid(cfg: Config) -> list[Cell]:
    """Cells in run order; the real-data reference cells come first (they are shared)."""
    grid = cfg.grid
    cells = []
    imbalances = grid.imbalances if cfg.data.profile in ("exp", "step") else (1.0,)
    for imbalance in imbalances:
        if cfg.eval.real_floor or cfg.eval.downstream:
            cells += [Cell(cfg.data.dataset, cfg.data.profile, imbalance, REAL, s) for s in grid.seeds]
        for method in grid.methods:
            cells += [Cell(cfg.data.dataset, cfg.data.profile, imbalance, method, s) for s in grid.seeds]
    return cells


def cell_config(cfg: Config, cell: Cell) -> Config:
    batch = cfg.train.batch_size
    for item in cfg.train.method_batch_size:
        name, _, value = item.partition("=")
        if name == cell.method or name in cell.method.split("+"):
            batch = int(value)
    return replace(
        cfg,
        data=replace(cfg.data, dataset=cell.dataset, profile=cell.profile, imbalance=cell.imbalance),
        train=replace(cfg.train, batch_size=batch),
        grid=GridConfig(methods=(cell.method,), imbalances=(cell.imbalance,), seeds=(cell.seed,)),
    )


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
        diff = [k for k in sorted(set(old) | set(new)) if k not in _EXECUTION_ONLY and old.get(k) != new.get(k)]
        if diff:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:5])
            raise ConfigError(
                f"{folder} holds a run made with a different config ({shown}). "
                "Rerun with --force to redo this cell, or use --out for a new results folder."
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True))


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

    device = resolve_device(cfg.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = expand_grid(cfg)
    outcomes = []
    for i, cell in enumerate(cells, 1):
        folder = cell.folder(out)
        print(f"[{i}/{len(cells)}] {cell.name}  ->  {folder}", flush=True)
        outcomes.append(run_cell(cfg, cell, out, device=device, force=force, progress=progress))
        status = outcomes[-1]
        print(f"[{i}/{len(cells)}] {cell.name}: {status.status} in {status.seconds:.0f}s"
              + (f"  ERROR: {status.error}" if status.error else ""), flush=True)  # fmt: skip
    return outcomes


def run_cell(cfg: Config, cell: Cell, out: Path, *, device, force: bool = False, progress: bool = True) -> CellOutcome:
    from .stages import run_stages

    folder = cell.folder(out)
    start = time.time()
    if force and folder.exists():
        _clear_cell(folder)
    ccfg = cell_config(cfg, cell)
    handler = None
    try:
        check_or_write_config(folder, ccfg, cell)
        if (folder / "done.json").exists():
            rows = pd.read_csv(folder / "metrics.csv", dtype={"split_fingerprint": str, "note": str})
            append_cell(out / "results.csv", rows)  # no-op when present; heals a table lost or deleted
            return CellOutcome(cell, folder, "skipped", time.time() - start)
        handler = _attach_log(folder / "cell.log")
        log.info("cell %s, config %s", cell.name, folder / "config.json")
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
        if isinstance(exc, BenchmarkError):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "cell.log", "a") as fh:
            fh.write(traceback.format_exc())
        return CellOutcome(cell, folder, "failed", time.time() - start, message)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _clear_cell(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder)


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


def finite(x: float) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))
