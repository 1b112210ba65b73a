"""Checks made once, before any cell starts, so bad input fails with one message instead of once per cell.

:func:`check_config` checks the names a config holds against their registries (datasets, methods,
samplers, feature spaces, resize methods) and the ranges the grid needs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from benchmark.core.config import Config, check_names
from benchmark.core.errors import ConfigError
from benchmark.core.registry import UnknownNameError
from benchmark.data import DATASETS, RESIZE_METHODS
from benchmark.data.sources import parse_spec
from benchmark.engine.sampling import SAMPLERS
from benchmark.eval.features import FEATURE_SPACES
from methods import get_method_class


def _among(kind: str, names: Collection[str]) -> Callable[[str], None]:
    def check(name: str) -> None:
        if name not in names:
            raise UnknownNameError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(names)}")

    return check


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
    for imbalance in cfg.grid.imbalances:
        if not 0 < imbalance <= 1:
            raise ConfigError(f"imbalance {imbalance} is outside (0, 1]; it is n_min/n_max, e.g. 0.01 for IR 100")
    if not cfg.grid.methods or not cfg.grid.seeds or not cfg.grid.imbalances:
        raise ConfigError("the grid is empty: give at least one method, one seed and one imbalance")
    if cfg.sample.n_per_class < 2:
        raise ConfigError("sample.n_per_class must be at least 2 (metrics need two or more images per class)")
    if cfg.train.steps < 1 or cfg.train.batch_size < 1:
        raise ConfigError("train.steps and train.batch_size must be positive")
