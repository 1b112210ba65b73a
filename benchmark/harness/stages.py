"""The stages of one grid cell: train -> sample -> evaluate, each skipped when done.

Returns the cell's tidy rows (the results.csv schema); under torchrun only rank 0 gets them
(the other ranks get None).  The pseudo-method ``real`` scores
real held-out images (what a perfect generator would reach at the same sample size) and the
downstream classifier trained on the real long-tailed set alone.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd

from benchmark.core.config import Config
from benchmark.core.distributed import current, main_first
from benchmark.core.errors import TrainingError
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
from benchmark.harness.results import RESULT_COLUMNS
from methods import get_method

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


def missing_start(cell, path: Path) -> TrainingError:
    """The error of a fine-tuning cell whose starting weights are not there, naming the fix."""
    parent_model = path.parent.parent / "model.pt"
    if path.name.startswith("ema_") and parent_model.exists():  # the parent finished without keeping them
        step = int(path.stem.split("_")[1])
        return TrainingError(
            f"{cell.method} starts from the EMA weights its parent cell had at step {step} ({path}), but that "
            f"cell finished without keeping them (it was trained before a fine-tuning cell asked for them). "
            f"Fix: retrain the parent so it keeps them (rerun with --force on that cell's method, e.g. "
            f"--methods ddpm --force), or fine-tune its final model with --set method.cbdm_ft_start=1"
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

    method = get_method(cell.method, class_counts=dataset.counts, options=cfg.method)
    guidance = cfg.sample.guidance if cfg.sample.guidance is not None else method.official_guidance
    ident = identity_columns(cfg, cell, dataset, guidance=guidance)

    if cfg.train.init_from and not Path(cfg.train.init_from).exists() and not (folder / "model.pt").exists():
        raise missing_start(cell, Path(cfg.train.init_from))
    log.info("stage train (%d steps%s)", cfg.train.steps, f", from {cfg.train.init_from}" if cfg.train.init_from else "")
    with threads("train"):
        model_path = train(cfg=cfg, dataset=dataset, method=method, run_dir=folder, seed=cell.seed, device=device,
                           progress=progress)  # fmt: skip
    model, _info = load_model(model_path, device)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)

    n_per_class = images_per_class(cfg.sample, dataset.num_classes)
    log.info("stage sample (%d per class, %s %d steps, guidance %s)", n_per_class, cfg.sample.sampler,
             cfg.sample.steps, guidance)  # fmt: skip
    # every method of a cell seed draws from the same initial noise: a paired comparison
    with threads("sample"):
        images, labels = generate_eval_set(
            model, diffusion, num_classes=dataset.num_classes, n_per_class=n_per_class,
            cfg=replace(cfg.sample, guidance=guidance), seed=cell.seed, out_path=folder / "samples.npz",
            device=device, progress=progress,
        )  # fmt: skip
    del model

    log.info("stage evaluate")
    # under torchrun the ranks split the feature extraction; rank 0 alone computes the rows
    with threads("evaluate"):
        rows = evaluate_set(
            images, labels, dataset=dataset, cfg=cfg.eval, cache_dir=cache_dir, device=device, seed=cell.seed,
            downstream=cfg.eval.downstream, progress=progress, together=True,
            neighbours_path=folder / "neighbours.npz", floor_n=n_per_class if cfg.eval.real_floor else None,
        )  # fmt: skip
    if not current().main:
        return None
    return finish_rows(rows, ident, dataset)
