"""Bring your own samples: score images from a model outside the harness with the same protocol.

The samples (an ``.npz`` with ``images`` and ``labels``, or one folder per class) are scored
exactly like a grid cell's samples and their rows enter the same results table under the
name the user gives, so an outside model sits on the leaderboard next to the built-in ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.core.config import Config, to_dict
from benchmark.core.device import resolve_device
from benchmark.core.distributed import current, main_first
from benchmark.core.errors import DataError
from benchmark.core.files import write_csv_atomic, write_text_atomic
from benchmark.core.threads import stage_threads
from benchmark.data import build_dataset
from benchmark.engine.sampling import images_per_class
from benchmark.eval.evaluate import evaluate_set, load_samples, reference_label
from benchmark.harness.cells import Cell, dataset_slug
from benchmark.harness.preflight import preflight
from benchmark.harness.results import RESULT_COLUMNS, append_cell
from benchmark.harness.stages import finish_rows


def evaluate_external(cfg: Config, *, samples: Path, name: str, seed: int, out: Path, progress: bool = True,
                      force: bool = False) -> pd.DataFrame | None:  # fmt: skip
    """Score the samples and append their rows; under torchrun the ranks split the feature
    extraction and rank 0 alone scores and writes (the others return None)."""
    device = resolve_device(cfg.device)
    preflight(cfg, out, grid=False)  # data, weights and the results folder, before the samples are read
    main = current().main
    with main_first():  # rank 0 fetches / caches the data before the others read it
        dataset = build_dataset(cfg.data)
    images, labels = load_samples(samples)
    _check_samples(images, labels, dataset)
    counts = np.bincount(np.asarray(labels), minlength=dataset.num_classes)
    per_class = images_per_class(cfg.sample, dataset.num_classes)
    if main and (len(set(counts.tolist())) > 1 or counts[0] != per_class):
        print(f"note: the samples hold {counts.min()}..{counts.max()} images per class, the preset uses "
              f"{per_class}; FID depends on n, so compare with runs of the same n (n_gen is recorded)")  # fmt: skip
    cell = Cell(cfg.data.dataset, cfg.data.profile, cfg.data.imbalance, name, seed)
    folder = cell.folder(out)
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / "config.json",
                          json.dumps({"external_samples": str(samples), "config": to_dict(cfg)}, indent=2))  # fmt: skip
    with stage_threads(cfg.threads, device, "evaluate", say=print if main else None):  # the cores free now
        rows = evaluate_set(images, labels, dataset=dataset, cfg=cfg.eval, cache_dir=Path(out) / "cache",
                            device=device, seed=seed, downstream=cfg.eval.downstream, progress=progress, together=True,
                            neighbours_path=folder / "neighbours.npz",
                            floor_n=per_class if cfg.eval.real_floor else None)  # fmt: skip
    if not main:
        return None
    ident = {
        "dataset": dataset_slug(cfg.data.dataset), "profile": cfg.data.profile, "imbalance": cfg.data.imbalance,
        "split_fingerprint": dataset.fingerprint, "method": name, "seed": seed, "train_steps": math.nan,
        "protocol": cfg.protocol, "sampler": "external", "sampler_steps": 0, "guidance": math.nan,
        "train_precision": "external", "sample_precision": "external",
        "reference": reference_label(cfg.eval.reference, dataset), "feature_space_default": cfg.eval.feature_space,
    }  # fmt: skip
    table = finish_rows(rows, ident, dataset)
    table = table[RESULT_COLUMNS]
    write_csv_atomic(folder / "metrics.csv", table)
    if not append_cell(Path(out) / "results.csv", table, replace=force):
        print(f"rows for {name!r} (seed {seed}) were already in {Path(out) / 'results.csv'}; kept the existing ones")
    return table


def _check_samples(images, labels, dataset) -> None:
    if images.ndim != 4:
        raise DataError(f"samples must be a batch of images [N, C, H, W]; got shape {tuple(images.shape)}")
    c, h, w = images.shape[1:]
    if c != dataset.channels or h != dataset.resolution or w != dataset.resolution:
        raise DataError(
            f"samples are {c}x{h}x{w} but the benchmark data is {dataset.channels}x{dataset.resolution}x"
            f"{dataset.resolution}; resize them, or pass --set data.resolution={h} to match"
        )
    labels = np.asarray(labels)
    bad = labels[(labels < 0) | (labels >= dataset.num_classes)]
    if len(bad):
        raise DataError(f"sample labels must lie in 0..{dataset.num_classes - 1}; found {sorted(set(bad.tolist()))[:5]}")
    counts = np.bincount(labels, minlength=dataset.num_classes)
    short = [i for i, n in enumerate(counts) if n < 2]
    if short:
        raise DataError(f"classes {short[:10]} have fewer than 2 samples; per-class metrics need at least 2 per class")
