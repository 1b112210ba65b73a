"""The points of an outside model: one ``--name`` and seed scored at several (train steps, guidance).

``evaluate --samples`` adds one point per (``--train-steps``, ``--guidance``) of a name and seed, and its
rows carry the ``point`` column as a grid cell's do, so the report draws the model's budget curve and
guidance front.  The *main point*, the one the leaderboards rank, is the point with the largest step (a
step not given counts below every given one), and at equal steps the first scored: a point with a larger
step takes it over and the earlier main's rows become extra, in one rewrite of the table.  A point scored
again keeps its role.  A step or scale not given is unknown (NaN): two sets of samples that leave the
same one unknown cannot be told apart, so the second is refused unless ``--force`` replaces the first.

Files: the name's folder keeps the main point's (config.json, metrics.csv, neighbours.npz), so a folder
made before points reads as it did and the report's copy sheets show the main point; every other point
keeps its own in ``points/step<S>_g<w>/`` as a grid cell's do (``unknown`` where a step or scale was not
given), its config.json recording the samples it was scored from.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark.core.errors import ConfigError
from benchmark.core.files import write_csv_atomic, write_text_atomic
from benchmark.harness.points import EXTRA, MAIN, POINTS
from benchmark.harness.results import points_of_cell, with_later_columns

NEIGHBOURS = "neighbours.npz"


@dataclass(frozen=True)
class OutsidePoint:
    train_steps: int | None  # None: not given (NaN in the rows)
    guidance: float | None  # None: not given (NaN in the rows)

    @classmethod
    def from_row(cls, train_steps, guidance) -> OutsidePoint:
        return cls(None if pd.isna(train_steps) else int(train_steps), None if pd.isna(guidance) else float(guidance))

    @property
    def name(self) -> str:
        """Its folder under ``points/``, named as a grid cell's points are (harness/points.py)."""
        step = "unknown" if self.train_steps is None else str(self.train_steps)
        scale = "unknown" if self.guidance is None else f"{self.guidance:g}"
        return f"step{step}_g{scale}"

    @property
    def known(self) -> bool:
        return self.train_steps is not None and self.guidance is not None

    @property
    def label(self) -> str:
        step = "unknown" if self.train_steps is None else self.train_steps
        scale = "unknown" if self.guidance is None else f"{self.guidance:g}"
        return f"step {step}, guidance {scale}"

    def says(self) -> str:
        """', step 20, guidance 1.5' to follow a seed in a message; '' when neither was given (one
        evaluation of a name reads as it did before points)."""
        return "" if self.train_steps is None and self.guidance is None else f", {self.label}"

    def above(self, other: OutsidePoint) -> bool:
        """A larger step than ``other``'s (a step not given is below every given one)."""
        if self.train_steps is None:
            return False
        return other.train_steps is None or self.train_steps > other.train_steps

    def folder(self, name_folder: Path, *, main: bool) -> Path:
        return Path(name_folder) if main else Path(name_folder) / POINTS / self.name


@dataclass(frozen=True)
class Plan:
    """What one ``evaluate`` does to the name's points, decided before the samples are read."""

    point: OutsidePoint
    main: bool  # the rows are the main point's
    present: int  # rows the table holds of this point already (0: a new point)
    earlier: str | None  # the samples that point was scored from (None: new, or not recorded)
    main_before: OutsidePoint | None  # the table's main point before this evaluation (None: none)

    @property
    def takes_over(self) -> bool:
        """The rows become the main point in place of another (whose files go to ``points/``)."""
        return self.main and self.main_before is not None and self.main_before != self.point

    def staging(self, name_folder: Path) -> Path:
        """Where the point's files are made: its own folder, or the name's folder when the main point stays
        there (a first evaluation, or the main point scored again).  A main point taking over is made in its
        own folder, so a failed evaluation leaves the earlier main's files where they were."""
        return self.point.folder(name_folder, main=self.main and not self.takes_over)


def plan_point(results: Path, key: dict, point: OutsidePoint, name_folder: Path) -> Plan:
    """The plan for scoring ``point`` of the cell ``key`` (the results table's CELL_KEY values)."""
    held = [(OutsidePoint.from_row(s, g), role, int(n)) for s, g, role, n in
            points_of_cell(results, key)[["train_steps", "guidance", "point", "rows"]].itertuples(index=False)]
    main = next((p for p, role, _ in held if role == MAIN), None)
    for p, role, n in held:
        if p == point:
            return Plan(point, main=role == MAIN, present=n, earlier=samples_of(point, name_folder, main=role == MAIN),
                        main_before=main)  # fmt: skip
    return Plan(point, main=main is None or point.above(main), present=0, earlier=None, main_before=main)


def samples_of(point: OutsidePoint, name_folder: Path, *, main: bool) -> str | None:
    """The samples a point's config.json records (None when it records none)."""
    record = point.folder(name_folder, main=main) / "config.json"
    try:
        found = json.loads(record.read_text()).get("external_samples") if record.is_file() else None
    except (OSError, ValueError):
        return None
    return None if found is None else str(found)


def same_samples(a: str, b: Path) -> bool:
    return str(a) == str(b) or Path(a).resolve() == Path(b).resolve()


def check_told_apart(plan: Plan, samples: Path, *, name: str, seed: int, force: bool) -> None:
    """Refuse other samples at a point whose step or scale is unknown: nothing tells the two apart, and
    keeping the first silently would drop a checkpoint the user meant to add."""
    if force or not plan.present or plan.point.known or plan.earlier is None or same_samples(plan.earlier, samples):
        return
    flags = [(f, e) for f, e, v in (("--train-steps", "--train-steps 20000", plan.point.train_steps),
                                    ("--guidance", "--guidance 1.5", plan.point.guidance)) if v is None]  # fmt: skip
    missing = " and ".join(f for f, _ in flags)
    raise ConfigError(
        f"--name {name!r} (seed {seed}{plan.point.says()}) was scored from {plan.earlier}, and {samples} cannot be "
        f"told apart from it ({missing} not given): pass {missing} to score them as a point of their own "
        f"(e.g. {' '.join(e for _, e in flags)}), or --force to replace that point's rows"
    )


def settle(plan: Plan, name_folder: Path, rows: pd.DataFrame, record: dict) -> None:
    """Put the scored point's files where they belong (before its rows enter the table, so a rerun after a
    crash finds the table without them and scores the point again): a main point taking over first moves
    the earlier main's files to its own folder under ``points/``, its metrics.csv marked extra."""
    name_folder = Path(name_folder)
    made = plan.staging(name_folder)
    final = plan.point.folder(name_folder, main=plan.main)
    if plan.takes_over:
        _move_out(plan.main_before, name_folder)
        if (made / NEIGHBOURS).is_file():
            os.replace(made / NEIGHBOURS, final / NEIGHBOURS)
    # the record first: once it names this point, a rerun knows the earlier main's files were moved
    write_text_atomic(final / "config.json", json.dumps(record, indent=2))
    write_csv_atomic(final / "metrics.csv", rows)
    if made != final:
        shutil.rmtree(made)


def _move_out(old: OutsidePoint, name_folder: Path) -> None:
    """The earlier main point's files into ``points/<its name>/``.  A record naming another point means
    they were moved already (a run that died before its rows entered the table): nothing to do."""
    config = name_folder / "config.json"
    record = json.loads(config.read_text()) if config.is_file() else {}
    if "train_steps" in record and OutsidePoint(record["train_steps"], record.get("guidance")) != old:
        return
    dest = old.folder(name_folder, main=False)
    dest.mkdir(parents=True, exist_ok=True)
    metrics = name_folder / "metrics.csv"
    if metrics.is_file():
        rows = with_later_columns(pd.read_csv(metrics, dtype={"split_fingerprint": str, "note": str, "method": str}))
        rows["note"] = rows["note"].fillna("")
        write_csv_atomic(dest / "metrics.csv", rows.assign(point=EXTRA))
    if (name_folder / NEIGHBOURS).is_file():
        os.replace(name_folder / NEIGHBOURS, dest / NEIGHBOURS)
    # a record from before points names no step or scale: it gets the old main's, from the table
    write_text_atomic(dest / "config.json", json.dumps({**record, "train_steps": old.train_steps,
                                                        "guidance": old.guidance}, indent=2))  # fmt: skip
