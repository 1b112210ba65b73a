"""Checks made once, before any cell starts, so bad input fails with one message instead of once per cell.

:func:`check_config` checks the names a config holds against their registries (datasets, methods,
samplers, feature spaces, resize methods) and the ranges the grid needs.  :func:`preflight` then
runs :data:`CHECKS`, the things every cell needs from outside (the output folder writable, the
data available and readable, the weights of the feature space present) and raises one
:class:`PreflightError` listing every problem with its fix.  What can only fail inside a cell
(a loss that diverges, a file of that cell) stays a per-cell failure.

A check is a function of a :class:`Needs` that raises a :class:`BenchmarkError` naming the fix;
add one with ``@check``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.core.config import Config, DataConfig, check_names
from benchmark.core.distributed import main_first
from benchmark.core.errors import BenchmarkError, ConfigError
from benchmark.core.names import REAL
from benchmark.core.registry import UnknownNameError
from benchmark.core.threads import parse_threads
from benchmark.data import DATASETS, RESIZE_METHODS, build_dataset
from benchmark.data.sources import parse_spec
from benchmark.engine.sampling import SAMPLERS, images_per_class
from benchmark.eval.features import FEATURE_SPACES, resolve_feature_space_name
from benchmark.harness.cells import cell_config, expand_grid, parent_cell
from benchmark.harness.points import checkpoint_steps, missing_weights, pending
from methods import get_method_class


class PreflightError(BenchmarkError):
    """What the cells need is missing or unusable; the message lists every problem with its fix."""


@dataclass
class Needs:
    """What the checks look at: the config, the results folder, the data configs of the cells (one per
    split), and what the checks found (the built datasets, for the checks after the data check)."""

    cfg: Config
    out: Path
    data: list[DataConfig]
    init_from: list[str]  # model.pt files a cell starts from that no cell of this run writes
    datasets: dict[DataConfig, object] = field(default_factory=dict)


CHECKS: list[Callable[[Needs], None]] = []


def check(fn: Callable[[Needs], None]) -> Callable[[Needs], None]:
    """Add ``fn`` to the checks :func:`preflight` runs (in the order they are added)."""
    CHECKS.append(fn)
    return fn


def _among(kind: str, names: Collection[str]) -> Callable[[str], None]:
    def check_name(name: str) -> None:
        if name not in names:
            raise UnknownNameError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(names)}")

    return check_name


def _dataset(spec: str) -> None:
    name, _ = parse_spec(spec)
    if name not in DATASETS:
        message = DATASETS.unknown_message(name).rstrip(".")
        raise UnknownNameError(f"{message} (and imagefolder:PATH for a folder with one subfolder per class)")


# registry named by a config field (benchmark.core.config.named) -> the check of one name
REGISTRIES: dict[str, Callable[[str], object]] = {
    "dataset": _dataset,
    "method": get_method_class,  # also builds compositions such as cbdm+resample
    "sampler": _among("sampler", SAMPLERS),
    "feature space": FEATURE_SPACES.get,
    "resize method": _among("resize method", RESIZE_METHODS),
}


def check_config(cfg: Config) -> None:
    """Names against their registries and the ranges every cell needs; a ConfigError names the fix."""
    check_names(cfg, REGISTRIES)
    parse_threads(cfg.threads)
    for imbalance in cfg.grid.imbalances:
        if not 0 < imbalance <= 1:
            raise ConfigError(f"imbalance {imbalance} is outside (0, 1]; it is n_min/n_max, e.g. 0.01 for IR 100")
    if not cfg.grid.methods or not cfg.grid.seeds or not cfg.grid.imbalances:
        raise ConfigError("the grid is empty: give at least one method, one seed and one imbalance")
    if cfg.sample.n_per_class < 2:
        raise ConfigError("sample.n_per_class must be at least 2 (metrics need two or more images per class)")
    if cfg.train.steps < 1 or cfg.train.batch_size < 1:
        raise ConfigError("train.steps and train.batch_size must be positive")
    checkpoint_steps(cfg)  # every budget point a whole step of the budget


def points_kept(cfg: Config, out: Path, cell, *, force: bool) -> str | None:
    """Why a cell that finished training cannot score a budget point it is asked for (its EMA weights at
    that step were not kept), or None."""
    folder = cell.folder(out)
    if force or cell.method == REAL or not (folder / "model.pt").exists():
        return None
    for point in pending(cfg, folder):
        if not point.weights(folder).exists():
            return f"{cell.name}: {missing_weights(point, folder, cell.method)}"
    return None


# ---------------------------------------------------------------- what every cell needs


@check
def output_folder_writable(needs: Needs) -> None:
    """The results folder (or the nearest folder above it that exists, where it will be made) takes files."""
    folder = needs.out.resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    fix = "pass --out with a folder you can write to"
    if not folder.is_dir():
        raise ConfigError(f"the results folder {needs.out} cannot be made: {folder} is a file; {fix}")
    if not needs.out.exists():
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"the results folder {needs.out} cannot be made: {folder} is not writable; {fix}")
        return
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".preflight-"):
            pass
    except OSError as exc:
        raise ConfigError(f"the results folder {needs.out} is not writable ({exc.strerror or exc}); {fix}") from None


@check
def data_available(needs: Needs) -> None:
    """Every split the cells train and score on builds: files present and readable, counts possible."""
    for data in needs.data:
        with main_first():  # under torchrun rank 0 fetches the files before the others read them
            needs.datasets[data] = build_dataset(data)


@check
def sample_size(needs: Needs) -> None:
    """sample.n_total leaves at least two images for every class of every split (it is split evenly)."""
    for dataset in needs.datasets.values():
        images_per_class(needs.cfg.sample, dataset.num_classes)


@check
def feature_space_weights(needs: Needs) -> None:
    """The pretrained weights of the feature space are on this machine ('auto' resolved per dataset as the
    cells resolve it: where it falls back to the classifier offline, nothing is needed)."""
    spaces = {needs.cfg.eval.feature_space} if needs.cfg.eval.feature_space != "auto" else set()
    spaces |= {resolve_feature_space_name(needs.cfg.eval.feature_space, ds, needs.cfg.eval) for ds in needs.datasets.values()}
    for name in sorted(spaces - {"auto"}):
        FEATURE_SPACES.get(name).check_available(needs.cfg.eval)


@check
def start_weights(needs: Needs) -> None:
    """A model.pt a cell starts from (train.init_from) that no cell of this run writes exists."""
    for path in needs.init_from:
        if not Path(path).is_file():
            raise ConfigError(f"train.init_from={path} is not a file; point it at the model.pt of a finished run "
                              "(OUT/runs/.../model.pt), or leave train.init_from empty to train from scratch")  # fmt: skip


def preflight(cfg: Config, out: Path, *, grid: bool = True, force: bool = False) -> dict[DataConfig, object]:
    """Check, before any cell starts, what every cell needs; one :class:`PreflightError` lists every
    problem.  ``grid=False`` checks a lone evaluation of ``cfg.data`` (the ``evaluate`` command).
    Returns the datasets it built (keyed by their config), which later loads find in memory."""
    out = Path(out)
    if grid:
        check_config(cfg)
    else:
        check_names(cfg, REGISTRIES)
    parse_threads(cfg.threads)
    data, init_from, unkept_points = [cfg.data], [], []
    if grid:
        data = []
        for cell in expand_grid(cfg):
            ccfg = cell_config(cfg, cell, out)
            if ccfg.data not in data:
                data.append(ccfg.data)
            done = (cell.folder(out) / "model.pt").exists() and not force
            if ccfg.train.init_from and parent_cell(cell) is None and not done:
                init_from.append(ccfg.train.init_from)
            unkept = points_kept(ccfg, out, cell, force=force)
            if unkept:
                unkept_points.append(unkept)
    needs = Needs(cfg=cfg, out=out, data=data, init_from=sorted(set(init_from)))
    problems: list[str] = unkept_points[:1]  # one is enough to say the fix
    for fn in CHECKS:
        try:
            fn(needs)
        except BenchmarkError as exc:
            if str(exc) not in problems:
                problems.append(str(exc))
    if len(problems) == 1:
        raise PreflightError(f"nothing was run: {problems[0]}")
    if problems:
        listed = "\n".join(f"  {i}. {p}" for i, p in enumerate(problems, 1))
        raise PreflightError(f"nothing was run; {len(problems)} problems to fix first:\n{listed}")
    return needs.datasets
