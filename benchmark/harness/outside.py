"""Bring your own samples: score images from a model outside the harness with the same protocol.

The samples (an ``.npz`` with ``images`` and ``labels``, or one folder per class) are scored
exactly like a grid cell's samples and their rows enter the same results table under the
name the user gives, so an outside model sits on the leaderboard next to the built-in ones.  That
name is a plain one (it names a folder under ``OUT/runs``) and never one of a method's: the rows and
the folder of a trained cell are never touched.  One name and seed can be scored at several points
(``--train-steps``, ``--guidance``; harness/outside_points.py): a new point adds its rows, the same point
again keeps them unless ``--force`` replaces that point's rows alone, and says which.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.core.config import Config, to_dict
from benchmark.core.device import resolve_device
from benchmark.core.distributed import current, main_first
from benchmark.core.errors import ConfigError, DataError
from benchmark.core.files import write_text_atomic
from benchmark.core.names import REAL
from benchmark.core.threads import stage_threads
from benchmark.data import build_dataset
from benchmark.engine.sampling import images_per_class
from benchmark.eval.evaluate import evaluate_set, load_samples, reference_label
from benchmark.harness.cells import Cell, dataset_slug
from benchmark.harness.outside_points import NEIGHBOURS, OutsidePoint, check_told_apart, plan_point, settle
from benchmark.harness.points import EXTRA, MAIN
from benchmark.harness.preflight import preflight
from benchmark.harness.results import CELL_KEY, RESULT_COLUMNS, put_point
from benchmark.harness.stages import finish_rows
from methods import METHODS, get_method_class

PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def evaluate_external(cfg: Config, *, samples: Path, name: str, seed: int, out: Path, progress: bool = True,
                      force: bool = False, train_steps: int | None = None,
                      guidance: float | None = None) -> pd.DataFrame | None:  # fmt: skip
    """Score the samples and append their rows; under torchrun the ranks split the feature
    extraction and rank 0 alone scores and writes (the others return None).  ``train_steps`` and
    ``guidance``, when given, are recorded in the rows (else they are unknown: NaN)."""
    if train_steps is not None and train_steps < 1:
        raise ConfigError(f"--train-steps {train_steps} must be a positive step count (the model's training steps)")
    if guidance is not None and not guidance >= 0:
        raise ConfigError(f"--guidance {guidance} must be a scale of at least 0 (the samples' guidance strength)")
    cell = Cell(cfg.data.dataset, cfg.data.profile, cfg.data.imbalance, name, seed)
    folder = cell.folder(out)
    check_outside_name(cfg, name, folder)  # before anything is read or written
    device = resolve_device(cfg.device)
    preflight(cfg, out, grid=False)  # data, weights and the results folder, before the samples are read
    main = current().main
    with main_first():  # rank 0 fetches / caches the data before the others read it
        dataset = build_dataset(cfg.data)
    results = Path(out) / "results.csv"
    key = {"dataset": dataset_slug(cfg.data.dataset), "profile": cfg.data.profile, "imbalance": cfg.data.imbalance,
           "split_fingerprint": dataset.fingerprint, "method": name, "seed": seed, "protocol": cfg.protocol}  # fmt: skip
    plan = plan_point(results, {c: key[c] for c in CELL_KEY}, OutsidePoint(train_steps, guidance), folder)
    check_told_apart(plan, samples, name=name, seed=seed, force=force)
    which = f"{name!r} (seed {seed}{plan.point.says()})"
    if plan.present and not force:  # the same point scored before: nothing to compute
        if main:
            print(f"rows for {which} were already in {results} ({plan.present} rows, scored from "
                  f"{plan.earlier or 'samples not recorded'}); kept the existing ones: pass --force to replace them")
        return None if not main else pd.DataFrame(columns=RESULT_COLUMNS)
    images, labels = load_samples(samples, class_names=list(dataset.class_names))  # folders by index or class name
    _check_samples(images, labels, dataset)
    counts = np.bincount(np.asarray(labels), minlength=dataset.num_classes)
    per_class = images_per_class(cfg.sample, dataset.num_classes)
    if main and (len(set(counts.tolist())) > 1 or counts[0] != per_class):
        print(f"note: the samples hold {counts.min()}..{counts.max()} images per class, the preset uses "
              f"{per_class}; FID depends on n, so compare with runs of the same n (n_gen is recorded)")  # fmt: skip
    made = plan.staging(folder)
    record = {"external_samples": str(samples), "train_steps": train_steps, "guidance": guidance, "config": to_dict(cfg)}
    if main:
        made.mkdir(parents=True, exist_ok=True)
        write_text_atomic(made / "config.json", json.dumps(record, indent=2))
    with stage_threads(cfg.threads, device, "evaluate", say=print if main else None):  # the cores free now
        rows = evaluate_set(images, labels, dataset=dataset, cfg=cfg.eval, cache_dir=Path(out) / "cache",
                            device=device, seed=seed, downstream=cfg.eval.downstream, progress=progress, together=True,
                            neighbours_path=made / NEIGHBOURS,
                            floor_n=per_class if cfg.eval.real_floor else None,
                            # a scale given: this may be one of the model's scales, whose best is chosen on one half
                            # of the images and read on the other, as in a grid's guidance sweep
                            halves=guidance is not None)  # fmt: skip
    if not main:
        return None
    ident = {
        **key, "train_steps": math.nan if train_steps is None else train_steps,
        "sampler": "external", "sampler_steps": 0,
        "guidance": math.nan if guidance is None else float(guidance),
        "train_precision": "external", "sample_precision": "external",
        "reference": reference_label(cfg.eval.reference, dataset), "feature_space_default": cfg.eval.feature_space,
        "point": MAIN if plan.main else EXTRA,
    }  # fmt: skip
    table = finish_rows(rows, ident, dataset)
    table = table[RESULT_COLUMNS]
    settle(plan, folder, table, record)
    put_point(results, table, main=plan.main)
    if plan.present:
        print(f"replaced the {plan.present} earlier rows of {which}, scored from "
              f"{plan.earlier or 'samples not recorded'}, with these from {samples}")
    if plan.takes_over:
        print(f"the main point of {name!r} (seed {seed}), the one leaderboards rank, is now {plan.point.label} (the "
              f"largest step scored); {plan.main_before.label} is an extra point of its curves")  # fmt: skip
    elif not plan.main and plan.main_before is not None:
        print(f"{plan.point.label} is an extra point of {name!r} (seed {seed}); the main point, the one leaderboards "
              f"rank, stays {plan.main_before.label} (the largest step scored, at equal steps the first)")  # fmt: skip
    return table


def check_outside_name(cfg: Config, name: str, folder: Path) -> str | None:
    """Refuse a ``--name`` that is not a plain name, that a method goes by (a grid cell's rows would mix
    with these), or whose folder holds a cell that ``run`` made; return the samples an earlier
    ``evaluate`` of the same name scored (None when there was none)."""
    if not PLAIN_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"--name {name!r} is not a plain name: use letters, digits, '.', '_' and '-' (at most 64, "
                          "no path separators), e.g. --name my-model")  # fmt: skip
    taken = {*cfg.grid.methods, *METHODS.names(), REAL}
    slug = name.replace("+", "_")
    clash = next((m for m in sorted(taken) if m.replace("+", "_") == slug), None)
    if clash is None and "_" in name:  # the folder of a composition, e.g. cbdm_resample of cbdm+resample
        try:
            get_method_class(name.replace("_", "+"))
            clash = name.replace("_", "+")
        except ConfigError:
            pass
    if clash is not None:
        raise ConfigError(f"--name {name!r} is the name of the method {clash!r}: the rows of outside samples must "
                          f"never mix with a trained cell's; pick another, e.g. --name {name}-outside")  # fmt: skip
    record = folder / "config.json"
    if not folder.exists():
        return None
    try:
        earlier = json.loads(record.read_text()).get("external_samples") if record.is_file() else None
    except (OSError, ValueError):
        earlier = None
    if earlier is None:
        raise ConfigError(f"--name {name!r}: {folder} holds a cell that `run` made, not outside samples; pick another "
                          "name (its files are left as they are)")  # fmt: skip
    return str(earlier)


def _check_samples(images, labels, dataset) -> None:
    if images.ndim != 4:
        raise DataError(f"samples must be a batch of images [N, C, H, W]; got shape {tuple(images.shape)}")
    c, h, w = images.shape[1:]
    if c != dataset.channels and (h, w) == (dataset.resolution, dataset.resolution):
        kind = {1: "grayscale", 3: "RGB"}
        raise DataError(
            f"samples have {c} channel(s) ({kind.get(c, 'other')}) but the benchmark data has {dataset.channels} "
            f"({kind.get(dataset.channels, 'other')}); convert the samples to {dataset.channels} channel(s) "
            "(the resolution already matches)"
        )
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
