"""The stages of one grid cell: train -> sample -> evaluate, each skipped when done.

Returns the cell's tidy rows (the results.csv schema); under torchrun only rank 0 gets them
(the other ranks get None).  The pseudo-method ``real`` scores
real held-out images (what a perfect generator would reach at the same sample size) and the
downstream classifier trained on the real long-tailed set alone.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pandas as pd

from benchmark.core.config import Config
from benchmark.core.distributed import barrier, broadcast, current, main_first
from benchmark.core.errors import TrainingError
from benchmark.core.files import write_csv_atomic, write_text_atomic
from benchmark.core.names import CLASS, NO_FEATURES, REAL, TRAIN_COUNT
from benchmark.core.threads import stage_threads
from benchmark.data import build_dataset
from benchmark.engine.diffusion import GaussianDiffusion
from benchmark.engine.sampling import generate_eval_set, images_per_class
from benchmark.engine.trainer import load_model, train
from benchmark.eval.downstream import real_rows
from benchmark.eval.evaluate import evaluate_set, real_floor_rows, reference_label
from benchmark.eval.features import resolve_feature_space_name
from benchmark.harness.cells import dataset_slug
from benchmark.harness.points import EXTRA, MAIN, cell_points, claim, missing_weights, pending, scales
from benchmark.harness.results import RESULT_COLUMNS, with_later_columns

log = logging.getLogger("ltgen")


def identity_columns(cfg: Config, cell, dataset, *, guidance: float | None) -> dict:
    is_real = cell.method == REAL
    return {
        "dataset": dataset_slug(cell.dataset),
        "profile": cell.profile,
        "imbalance": cell.imbalance,
        "split_fingerprint": dataset.fingerprint,
        "method": cell.method,
        "seed": cell.seed,
        "train_steps": 0 if is_real else cfg.train.steps,
        "protocol": cfg.protocol,
        "sampler": REAL if is_real else cfg.sample.sampler,
        "sampler_steps": 0 if is_real else cfg.sample.steps,
        "guidance": math.nan if is_real or guidance is None else float(guidance),
        # resolved before the cell runs (grid.run_cell): fp32 or bf16, what the stage really used
        "train_precision": "none" if is_real else cfg.train.precision,
        "sample_precision": "none" if is_real else cfg.sample.precision,
        "reference": reference_label(cfg.eval.reference, dataset),
        "feature_space_default": resolve_feature_space_name(cfg.eval.feature_space, dataset, cfg.eval),
        "point": MAIN,  # run_stages names each point's own
    }


def class_name_note(name: str) -> str:
    """A class name as it can sit in a note (``;`` separates note fields, ``=`` key and value)."""
    return str(name).replace(";", ",").replace("=", "-").replace("\n", " ")


def count_rows(dataset) -> pd.DataFrame:
    """The class sizes (and names) of the split, so plots and leaderboards can put metrics against
    them from the table alone: ``note`` is ``group=<group>;name=<class name>``."""
    groups = dataset.groups
    return pd.DataFrame(
        {
            "metric": TRAIN_COUNT,
            "group": CLASS,
            "class": list(range(dataset.num_classes)),
            "n_gen": 0,
            "n_ref": 0,
            "value": [float(c) for c in dataset.counts],
            "note": [f"group={g};name={class_name_note(n)}" for g, n in zip(groups, dataset.class_names)],
        }
    )


def finish_rows(metric_rows: pd.DataFrame, ident: dict, dataset) -> pd.DataFrame:
    default_space = ident.pop("feature_space_default")
    counts = count_rows(dataset)
    counts["feature_space"] = metric_rows["feature_space"].iloc[0] if len(metric_rows) else default_space
    rows = pd.concat([metric_rows, counts], ignore_index=True)
    for key, value in ident.items():
        rows[key] = value
    rows["note"] = rows["note"].fillna("")
    return rows[RESULT_COLUMNS]


def with_run_note(rows: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Every row of a method's cell records its training batch and how its evaluation labels were drawn
    (``sample.labels``): both are part of a published protocol, and neither has a column."""
    run = f"train_batch={cfg.train.batch_size};eval_labels={cfg.sample.labels}"
    rows["note"] = [f"{n};{run}" if n else run for n in rows["note"]]
    return rows


def missing_start(cell, path: Path) -> TrainingError:
    """The error of a fine-tuning cell whose starting weights are not there, naming the fix."""
    parent_model = path.parent.parent / "model.pt"
    if path.name.startswith("ema_") and parent_model.exists():  # the parent finished without keeping them
        step = int(path.stem.split("_")[1])
        return TrainingError(
            f"{cell.method} starts from the EMA weights its parent cell had at step {step} ({path}), but that "
            f"cell finished without keeping them (it was trained before a fine-tuning cell asked for them). "
            f"Fix: retrain the parent so it keeps them (rerun with --force on that cell's method, e.g. "
            f"--methods ddpm --force), or fine-tune its final model with --set method.cbdm_ft.start=1"
        )
    return TrainingError(
        f"{cell.method} starts from {path}, which does not exist: the cell that writes it must finish training "
        "first (see that cell's cell.log if it failed), then rerun"
    )


def run_stages(cfg: Config, cell, folder: Path, *, device, cache_dir: Path, progress: bool) -> pd.DataFrame | None:
    # under torchrun rank 0 downloads / caches the data before the others read it (real cells: rank 0 alone)
    with main_first(together=cell.method != REAL):
        dataset = build_dataset(cfg.data)
    log.info("data %s: %d images, fingerprint %s", cell.dataset, int(dataset.counts.sum()), dataset.fingerprint)
    # each stage runs on the CPU threads free at its start (cfg.threads; benchmark.core.threads)
    def threads(stage: str):
        return stage_threads(cfg.threads, device, stage, say=print if current().main else None)

    if cell.method == REAL:
        ident = identity_columns(cfg, cell, dataset, guidance=None)
        parts = []
        with threads("evaluate"):
            if cfg.eval.real_floor:
                parts.append(real_floor_rows(
                    dataset, cfg=cfg.eval, n_per_class=images_per_class(cfg.sample, dataset.num_classes),
                    cache_dir=cache_dir, device=device, seed=cell.seed, progress=progress,
                ))  # fmt: skip
            if cfg.eval.downstream:
                real = pd.DataFrame(real_rows(dataset=dataset, epochs=cfg.eval.downstream_epochs, seed=cell.seed,
                                              device=device, cache_dir=cache_dir, progress=progress))  # fmt: skip
                real.insert(0, "feature_space", NO_FEATURES)
                parts.append(real)
        return finish_rows(pd.concat(parts, ignore_index=True), ident, dataset)

    method = cell.spec.build(class_counts=dataset.counts, options=cfg.method)
    if cfg.train.init_from and not Path(cfg.train.init_from).exists() and not (folder / "model.pt").exists():
        raise missing_start(cell, Path(cfg.train.init_from))
    # every rank runs the points rank 0 found unfinished (decided once, before any point writes its files)
    todo = broadcast([p.name for p in pending(cfg, folder)])
    if (folder / "model.pt").exists():
        log.info("stage train: done (model.pt)")
    else:
        log.info("stage train (%d steps%s)", cfg.train.steps,
                 f", from {cfg.train.init_from}" if cfg.train.init_from else "")  # fmt: skip
    with threads("train"):
        train(cfg=cfg, dataset=dataset, method=method, run_dir=folder, seed=cell.seed, device=device, progress=progress)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    n_final = images_per_class(cfg.sample, dataset.num_classes)
    parts = []
    for point in cell_points(cfg):
        guidance = point.guidance if point.guidance is not None else method.official_guidance
        ident = identity_columns(cfg, cell, dataset, guidance=guidance)
        ident.update(train_steps=point.step, point=MAIN if point.main else EXTRA)
        if point.name not in todo:
            if current().main:
                parts.append(read_point_rows(point.folder(folder)))
            continue
        rows = run_point(point, cfg=cfg, cell=cell, folder=folder, dataset=dataset, diffusion=diffusion,
                         guidance=guidance, n_final=n_final, device=device, cache_dir=cache_dir, progress=progress,
                         threads=threads)
        if rows is not None:
            rows = with_run_note(finish_rows(rows, ident, dataset), cfg)
            write_point(point.folder(folder), rows)
            parts.append(rows)
    if not current().main:
        return None
    return pd.concat(parts, ignore_index=True)[RESULT_COLUMNS]


def run_point(point, *, cfg: Config, cell, folder: Path, dataset, diffusion, guidance: float, n_final: int, device,
              cache_dir: Path, progress: bool, threads) -> pd.DataFrame | None:
    """Sample and score one point (harness/points.py); its evaluation rows on rank 0, None on the others.
    ``threads(stage)``: the context a stage runs in, on the CPU threads free at its start."""
    weights = point.weights(folder)
    if not weights.exists():
        raise missing_weights(point, folder, cell.method)
    where = claim(point, folder) if current().main else point.folder(folder)
    barrier()  # the point's folder is ready before any rank writes into it
    model, _info = load_model(weights, device)
    n_per_class = point.n_per_class(n_final)
    log.info("stage sample, step %d (%d per class, %s %d steps, guidance %s)", point.step, n_per_class,
             cfg.sample.sampler, cfg.sample.steps, guidance)  # fmt: skip
    # every method and every point of a cell seed draws from the same initial noise: a paired comparison
    with threads("sample"):
        images, labels = generate_eval_set(
            model, diffusion, num_classes=dataset.num_classes, n_per_class=n_per_class, cfg=cfg.sample,
            guidance=guidance, seed=cell.seed, out_path=where / "samples.npz", device=device, progress=progress,
            paired_with=n_final,
        )  # fmt: skip
    del model
    log.info("stage evaluate, step %d guidance %s", point.step, guidance)
    # under torchrun the ranks split the feature extraction; rank 0 alone computes the rows.  The reference
    # and training images' features come from the cache after the first point: extracted once per cell.
    with threads("evaluate"):
        return evaluate_set(
            images, labels, dataset=dataset, cfg=cfg.eval, cache_dir=cache_dir, device=device, seed=cell.seed,
            downstream=cfg.eval.downstream and point.main, progress=progress, together=True,
            neighbours_path=where / "neighbours.npz", floor_n=n_final if cfg.eval.real_floor else None,
            halves=len(scales(cfg)) > 1,  # a guidance sweep: each method's scale is chosen on one half
        )  # fmt: skip


def write_point(folder: Path, rows: pd.DataFrame) -> None:
    """A finished point's rows and marker (the main point's are the cell's own metrics.csv / done.json)."""
    write_csv_atomic(folder / "metrics.csv", rows)
    write_text_atomic(folder / "done.json", json.dumps({"rows": len(rows), "finished": time.ctime()}))


def read_point_rows(folder: Path) -> pd.DataFrame:
    rows = pd.read_csv(folder / "metrics.csv", dtype={"split_fingerprint": str, "note": str})
    rows["note"] = rows["note"].fillna("")
    return with_later_columns(rows)[RESULT_COLUMNS]
