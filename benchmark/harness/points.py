"""The points a cell is scored at: budget points (``eval.checkpoints``) x guidance scales (``sample.guidance``).

A cell trains once; each point samples its stored model (the final ``model.pt`` or the EMA weights kept
at that step, ``checkpoints/ema_<step>.pt``) at one scale and scores the images.  The cell's *main point*
(the final model at the first scale listed) keeps the cell folder's own files (samples.npz, metrics.csv,
done.json), so a results folder of a single-point run resumes as it is; every other point has its own
folder ``points/step<S>_g<w>/`` with its samples, rows, ``point.json`` (what it was made with) and
``done.json``.  A point found finished is read, never recomputed; a point added to a finished cell is the
only work a rerun does; a point of a different making (its record differs) is redone alone.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from benchmark.core.config import Config
from benchmark.core.errors import ConfigError, TrainingError
from benchmark.core.files import write_text_atomic
from benchmark.engine.checkpoint import ema_checkpoint_name

MAIN, EXTRA = "main", "extra"  # values of the results table's ``point`` column
POINTS = "points"  # the cell's sub-folder of its other points


@dataclass(frozen=True)
class Point:
    step: int  # the training step whose EMA weights are sampled
    guidance: float | None  # None: the method's official strength
    final: bool  # step == train.steps (model.pt)
    main: bool  # the final model at the first scale: the cell folder's own files
    n_setting: int | None  # eval.checkpoint_n_per_class below the final step (None: the final's n)

    @property
    def name(self) -> str:
        return f"step{self.step}_g{'official' if self.guidance is None else f'{self.guidance:g}'}"

    def folder(self, cell_folder: Path) -> Path:
        return Path(cell_folder) if self.main else Path(cell_folder) / POINTS / self.name

    def record(self) -> dict:
        """What the point's files were made with besides the cell's config (which guards them all)."""
        return {"step": self.step, "guidance": self.guidance, "n_per_class": "final" if self.final else self.n_setting}

    def n_per_class(self, final_n: int) -> int:
        return final_n if self.final or self.n_setting is None else min(self.n_setting, final_n)

    def weights(self, cell_folder: Path) -> Path:
        if self.final:
            return Path(cell_folder) / "model.pt"
        return Path(cell_folder) / "checkpoints" / ema_checkpoint_name(self.step)


def checkpoint_steps(cfg: Config) -> tuple[int, ...]:
    """The steps of ``eval.checkpoints`` (fractions of train.steps; the final step always), ascending.
    A fraction whose step is not a whole step is a ConfigError naming the fix."""
    steps = cfg.train.steps
    out = {steps}
    for frac in cfg.eval.checkpoints:
        exact = Fraction(frac).limit_denominator(10_000) * steps
        if exact.denominator != 1:
            near = _near_whole(frac, steps)
            raise ConfigError(
                f"eval.checkpoints={frac:g} is step {float(exact):g} of train.steps={steps}, not a whole step: "
                f"use a fraction whose step is whole (e.g. {near:g} = step {round(near * steps)}) or a train.steps "
                f"whose {frac:g} is whole (e.g. --set train.steps={steps * exact.denominator})"
            )
        out.add(int(exact))
    return tuple(sorted(out))


def _near_whole(frac: float, steps: int) -> float:
    """The fraction of at most two decimals nearest ``frac`` whose step of ``steps`` is whole (else step/steps)."""
    whole = [k / 100 for k in range(1, 101) if (k * steps) % 100 == 0]
    if whole:
        return min(whole, key=lambda f: (abs(f - frac), f))
    return max(1, round(frac * steps)) / steps


def kept_steps(cfg: Config) -> tuple[int, ...]:
    """Steps below the final whose EMA weights training keeps: every budget point's and those of
    ``train.keep_ema_fractions`` (rounded to a step), so a quarter point can be added after training."""
    steps = cfg.train.steps
    kept = set(checkpoint_steps(cfg)) | {round(f * steps) for f in cfg.train.keep_ema_fractions}
    return tuple(sorted(s for s in kept if 0 < s < steps))


def scales(cfg: Config) -> tuple[float | None, ...]:
    """The guidance scales of ``sample.guidance`` in the order given, each once (None: official)."""
    if cfg.sample.guidance is None:
        return (None,)
    return tuple(dict.fromkeys(float(g) for g in cfg.sample.guidance))


def cell_points(cfg: Config) -> list[Point]:
    """Every point of a method cell: the main point first, then the final model's other scales, then
    the earlier budget points from the latest down."""
    final = cfg.train.steps
    points = []
    for step in sorted(checkpoint_steps(cfg), reverse=True):
        for i, g in enumerate(scales(cfg)):
            points.append(Point(step=step, guidance=g, final=step == final, main=step == final and i == 0,
                                n_setting=cfg.eval.checkpoint_n_per_class))
    return points


def is_done(point: Point, cell_folder: Path) -> bool:
    """The point's rows are on disk and were made as the point asks now."""
    folder = point.folder(cell_folder)
    if not (folder / "done.json").exists() or not (folder / "metrics.csv").exists():
        return False
    if point.main:
        return True
    path = folder / "point.json"
    return path.exists() and json.loads(path.read_text()) == point.record()


def pending(cfg: Config, cell_folder: Path) -> list[Point]:
    """The points of the cell not finished as asked (the main point among them when it is not)."""
    return [p for p in cell_points(cfg) if not is_done(p, cell_folder)]


def claim(point: Point, cell_folder: Path) -> Path:
    """The point's folder, ready for its work: a folder made differently (another record) is emptied
    first, so a changed ``eval.checkpoint_n_per_class`` redoes that point alone.  Returns the folder."""
    folder = point.folder(cell_folder)
    if point.main:
        return folder
    path = folder / "point.json"
    if path.exists() and json.loads(path.read_text()) != point.record():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        write_text_atomic(path, json.dumps(point.record(), sort_keys=True))
    return folder


def missing_weights(point: Point, cell_folder: Path, method: str) -> TrainingError:
    """The error of a budget point whose EMA weights the cell's training did not keep, naming the fix."""
    return TrainingError(
        f"the budget point at step {point.step} needs the EMA weights kept at that step "
        f"({point.weights(cell_folder)}), but this cell finished training without keeping them (a model trains "
        f"keeping those of eval.checkpoints and train.keep_ema_fractions as set when it trained). Fix: drop that "
        f"fraction from eval.checkpoints, or retrain the cell keeping it (rerun with --force --methods {method} "
        f"and the fraction in eval.checkpoints)"
    )


def forget_points(cell_folder: Path, *, samples: bool) -> None:
    """After a changed sampling (``samples=True``) or evaluation key: every other point is redone
    (its folder goes), or re-evaluated from its stored samples (its rows go)."""
    root = Path(cell_folder) / POINTS
    if not root.is_dir():
        return
    if samples:
        shutil.rmtree(root)
        return
    for folder in root.iterdir():
        for name in ("metrics.csv", "done.json"):
            (folder / name).unlink(missing_ok=True)
