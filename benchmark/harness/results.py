"""The tidy results table: one row per measured number, one block per finished cell.

Leaderboards and plots read this table alone.  Rows are written under a file lock, and every change
rewrites the table whole into a new file that replaces the old one (benchmark.core.files), so a
reader, a killed writer or a full disk can never leave half a row.  A table damaged otherwise (an
older version's append, an edit) is named with its first bad line by :func:`read_results`, and
:func:`repair_results` (``report DIR --repair``) rebuilds it.  A cell
that ran writes its rows with :func:`put_cell`, replacing what an earlier run of the same cell
folder wrote in the same feature spaces (other feature spaces' blocks stay beside them); a
cell found finished re-appends its stored rows only when none of that cell are present
(:func:`append_cell`), so reruns and concurrent workers never duplicate rows.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from benchmark.core.errors import BenchmarkError
from benchmark.core.files import write_bytes_atomic, write_csv_atomic
from benchmark.core.names import NO_FEATURES

RESULT_COLUMNS = [  # the columns of results.csv, in order
    "dataset", "profile", "imbalance", "split_fingerprint",
    "method", "seed", "train_steps",
    "protocol", "sampler", "sampler_steps", "guidance",
    "train_precision", "sample_precision",
    "reference", "feature_space",
    "metric", "group", "class",
    "n_gen", "n_ref", "value", "note",
    "point",  # main: the cell's main point (final model, first scale); extra: a budget point or another scale
]  # fmt: skip

# the ``point`` column's values (harness/points.py's MAIN and EXTRA, not imported here: that module loads torch)
MAIN_POINT, EXTRA_POINT = "main", "extra"

# columns added after the first tables were written: older tables and metrics.csv files get this
# value on reading, and a table is rewritten with the full header when a new cell joins it
LATER_COLUMNS = {"train_precision": "unrecorded", "sample_precision": "unrecorded", "point": MAIN_POINT}

# columns that hold numbers (empty: NaN); anything else in them is damage
NUMERIC_COLUMNS = ["imbalance", "seed", "train_steps", "sampler_steps", "guidance", "n_gen", "n_ref", "value"]

# the columns that identify one cell's block of rows
CELL_KEY = ["dataset", "profile", "imbalance", "split_fingerprint", "method", "seed", "protocol"]
# the rows one cell folder wrote, whatever the protocol or split it held at the time
FOLDER_KEY = ["dataset", "profile", "imbalance", "method", "seed"]
# the columns that tell the points of one cell apart (a budget point's step, a guidance scale)
POINT_KEY = ["train_steps", "guidance"]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_results(path: Path) -> pd.DataFrame:
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    if not path.exists():
        raise BenchmarkError(
            f"no results table at {path}; run a benchmark into that folder first "
            "(python run_benchmark.py run --out DIR) or point `report` at a folder that has results.csv"
        )
    damage = first_damage(path)
    if damage:
        raise BenchmarkError(f"{path} is damaged: {damage}. Repair it with `ltgen-bench report {path.parent} --repair` "
                             "(keeps every sound row, puts back each cell's rows from its metrics.csv, and keeps "
                             "the damaged table beside it as results.csv.damaged)")  # fmt: skip
    table = with_later_columns(pd.read_csv(path, dtype={"split_fingerprint": str, "note": str, "method": str}))
    missing = [c for c in RESULT_COLUMNS if c not in table.columns]
    if missing:
        raise BenchmarkError(f"{path} is not an LTGen-Bench results table (missing columns: {', '.join(missing)})")
    table["note"] = table["note"].fillna("")
    return table


def _bad_number(text: str) -> bool:
    if text == "":
        return False
    try:
        float(text)
    except ValueError:
        return True
    return False


def _sound(header: list[str], fields: list[str]) -> str:
    """What is wrong with one line of the table ('' when nothing)."""
    if len(fields) != len(header):
        return f"{len(fields)} fields where the header has {len(header)} (a row cut short or run together)"
    for name, text in zip(header, fields):
        if name in NUMERIC_COLUMNS and _bad_number(text):
            return f"{name} holds {text!r}, not a number"
    return ""


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every record; a quoted field over several lines counts from its first."""
    with open(path, newline="", errors="replace") as fh:
        reader = csv.reader(fh)
        start = 1
        for fields in reader:
            yield start, fields
            start = reader.line_num + 1


def first_damage(path: Path) -> str:
    """'line N: what is wrong' of the first damaged line of a results table, or '' when it is sound."""
    records = _lines(path)
    first = next(records, None)
    if first is None:
        return "line 1: the file is empty (no header)"
    header = first[1]
    for number, fields in records:
        problem = _sound(header, fields)
        if problem:
            return f"line {number}: {problem}"
    return ""


def repair_results(out: Path) -> list[str]:
    """Rebuild ``out/results.csv``: keep its sound rows, then put back every cell's rows from the cell's
    own metrics.csv (:func:`put_cell`: they replace that cell's rows in those feature spaces).  The damaged
    table stays beside it as results.csv.damaged.  Returns what it did, one line each."""
    out = Path(out)
    path = out / "results.csv"
    said = []
    with locked(path):
        if path.exists():
            records = list(_lines(path))
            header = records[0][1] if records else RESULT_COLUMNS
            bad = [n for n, fields in records[1:] if _sound(header, fields)]
            if bad:
                shutil.copyfile(path, path.with_name("results.csv.damaged"))
                dropped = set(bad)
                keep = [records[0][1]] + [f for n, f in records[1:] if n not in dropped]
                write_bytes_atomic(path, _csv_bytes(keep))
                said.append(f"dropped {len(bad)} damaged line(s) ({', '.join(map(str, bad[:10]))}"
                            f"{', ...' if len(bad) > 10 else ''}); the damaged table is {path}.damaged")  # fmt: skip
    cells: dict[Path, list[pd.DataFrame]] = {}
    for metrics in sorted((out / "runs").glob("**/metrics.csv")):
        rows = with_later_columns(pd.read_csv(metrics, dtype={"split_fingerprint": str, "note": str, "method": str}))
        cells.setdefault(_cell_of(metrics), []).append(rows)
    for parts in cells.values():  # a cell's points together: put_cell replaces the folder's rows whole
        rows = pd.concat(parts, ignore_index=True)
        if not rows.empty:
            put_cell(path, rows)
    said.append(f"put back the rows of {len(cells)} cell(s) from their metrics.csv")
    return said


def _cell_of(metrics: Path) -> Path:
    """The cell folder a metrics.csv belongs to: its own, or for a point's (``<cell>/points/<point>/``) the
    cell's (harness/points.py; a cell folder is ``seed<K>``)."""
    point_root = metrics.parent.parent
    if point_root.name == "points" and point_root.parent.name.startswith("seed"):
        return point_root.parent
    return metrics.parent


def _csv_bytes(records: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(records)
    return buffer.getvalue().encode()


def _append_atomic(path: Path, rows: pd.DataFrame) -> None:
    """The table with ``rows`` added at its end, written whole and swapped in: the old rows byte for byte."""
    old = path.read_bytes()
    if old and not old.endswith(b"\n"):
        old += b"\n"
    write_bytes_atomic(path, old + rows.to_csv(header=False, index=False).encode())


def with_later_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of an older table with the columns added since, holding LATER_COLUMNS' values."""
    missing = {c: v for c, v in LATER_COLUMNS.items() if c not in rows.columns}
    return rows.assign(**missing) if missing else rows


def _same_cell(table: pd.DataFrame, key: dict, columns: list[str] = CELL_KEY) -> pd.Series:
    mask = pd.Series(True, index=table.index)
    for col in columns:
        left = table[col]
        value = key[col]
        if isinstance(value, float):
            mask &= (left.astype(float) - value).abs() < 1e-12
        else:
            mask &= left.astype(str) == str(value)
    return mask


def rows_of_cell(path: Path, key: dict) -> int:
    """How many rows of the cell ``key`` (its :data:`CELL_KEY` values) the table holds (0 without a table)."""
    path = Path(path)
    return int(_same_cell(read_results(path), key).sum()) if path.exists() else 0


def append_cell(path: Path, rows: pd.DataFrame, *, replace: bool = False) -> bool:
    """Append one finished cell's rows; returns False when the cell was already present."""
    if rows.empty:
        raise BenchmarkError("a finished cell produced no result rows; see the cell's log")
    rows = with_later_columns(rows)
    missing = [c for c in RESULT_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"result rows lack columns {missing}")
    rows = rows[RESULT_COLUMNS]
    key = {c: rows.iloc[0][c] for c in CELL_KEY}
    path = Path(path)
    with locked(path):
        if path.exists():
            table = read_results(path)
            present = _same_cell(table, key)
            if present.any():
                if not replace:
                    return False
                table = table[~present]
                write_csv_atomic(path, pd.concat([table, rows], ignore_index=True))
                return True
            if list(pd.read_csv(path, nrows=0).columns) != RESULT_COLUMNS:  # an older header: rewrite it whole
                write_csv_atomic(path, pd.concat([table[RESULT_COLUMNS], rows], ignore_index=True))
            else:
                _append_atomic(path, rows)
        else:
            write_csv_atomic(path, rows)
    return True


def _same_number(column: pd.Series, value) -> pd.Series:
    """Where ``column`` holds ``value``; an unknown value (NaN, e.g. outside samples' step) matches NaN only."""
    numbers = column.astype(float)
    if pd.isna(value):
        return numbers.isna()
    return (numbers - float(value)).abs() < 1e-12


def points_of_cell(path: Path, key: dict) -> pd.DataFrame:
    """The points the table holds of the cell ``key`` (its :data:`CELL_KEY` values): one row per
    (train_steps, guidance) with its ``point`` value and ``rows`` (how many), in the order they first
    appear; empty without a table."""
    path = Path(path)
    empty = pd.DataFrame(columns=[*POINT_KEY, "point", "rows"])
    if not path.exists():
        return empty
    table = read_results(path)
    mine = table[_same_cell(table, key)]
    if mine.empty:
        return empty
    mine = mine.assign(point=mine["point"].fillna(MAIN_POINT).astype(str))
    grouped = mine.groupby(POINT_KEY, dropna=False, sort=False)
    return grouped.agg(point=("point", "first"), rows=("point", "size")).reset_index()


def _prepared(rows: pd.DataFrame, empty: str) -> pd.DataFrame:
    """New rows in the table's columns (later columns filled); ``empty``: the error when there are none."""
    if rows.empty:
        raise BenchmarkError(empty)
    return with_later_columns(rows)[RESULT_COLUMNS]


def _first_rows(path: Path, rows: pd.DataFrame) -> bool:
    """Write ``rows`` as the whole table when there is none yet (under the caller's lock); True if it did."""
    if path.exists():
        return False
    write_csv_atomic(path, rows)
    return True


def put_point(path: Path, rows: pd.DataFrame, *, main: bool) -> int:
    """Write one point of a cell (rows sharing train_steps and guidance; outside samples, one evaluation
    at a time).  They replace the rows the table holds of the same cell (:data:`CELL_KEY`) at the same
    point, a step or scale not given (NaN) matching only one not given; the cell's other points stay.
    With ``main`` (these rows are the cell's main point) every other point's main rows become extra, in
    the same rewrite: a reader sees one main point before and one after.  Returns the rows replaced."""
    rows = _prepared(rows, "a finished evaluation produced no result rows")
    first = rows.iloc[0]
    key = {c: first[c] for c in CELL_KEY}
    path = Path(path)
    with locked(path):
        if _first_rows(path, rows):
            return 0
        table = read_results(path)
        cell = _same_cell(table, key)
        here = cell & _same_number(table["train_steps"], first["train_steps"]) & _same_number(
            table["guidance"], first["guidance"])
        demote = cell & ~here & (table["point"].fillna(MAIN_POINT).astype(str) == MAIN_POINT)
        if main and demote.any():
            table.loc[demote, "point"] = EXTRA_POINT
        elif not here.any() and list(pd.read_csv(path, nrows=0).columns) == RESULT_COLUMNS:
            _append_atomic(path, rows)  # nothing else changes: the old rows stay byte for byte
            return 0
        write_csv_atomic(path, pd.concat([table[~here][RESULT_COLUMNS], rows], ignore_index=True))
        return int(here.sum())


def _renamed_space(old: str, spaces: set[str]) -> bool:
    """A classifier space named by its recipe alone (``classifier:<fingerprint>``, tables from before
    the weights digest) is the space the new rows name ``classifier:<fingerprint>:w<digest>``."""
    return old.startswith("classifier:") and ":w" not in old and any(s.startswith(old + ":w") for s in spaces)


def put_cell(path: Path, rows: pd.DataFrame) -> int:
    """Write the rows of a cell that just ran (anew, or again after a changed setting).

    They replace every row the same cell folder wrote before in the same feature spaces, and every
    row without a feature space (the downstream accuracies); blocks of other feature spaces (an
    earlier evaluation of the same samples, e.g. with the classifier before Inception) stay beside
    them, so the table holds one block per cell and feature space; a classifier space of an older
    table, named without its weights digest, counts as the same space.  Returns the rows replaced.
    """
    rows = _prepared(rows, "a finished cell produced no result rows; see the cell's log")
    key = {c: rows.iloc[0][c] for c in FOLDER_KEY}
    spaces = {*rows["feature_space"].astype(str), NO_FEATURES}
    path = Path(path)
    with locked(path):
        if _first_rows(path, rows):
            return 0
        table = read_results(path)
        stale = _same_cell(table, key, FOLDER_KEY) & table["feature_space"].astype(str).map(
            lambda old: bool(old in spaces or _renamed_space(old, spaces))).astype(bool)
        if stale.any():
            write_csv_atomic(path, pd.concat([table[~stale], rows], ignore_index=True))
        else:
            _append_atomic(path, rows)
        return int(stale.sum())


def drop_cell(path: Path, key: dict) -> int:
    """Remove every row of one cell folder (``key``: the :data:`FOLDER_KEY` values); returns how many."""
    path = Path(path)
    with locked(path):
        if not path.exists():
            return 0
        table = read_results(path)
        mine = _same_cell(table, key, FOLDER_KEY)
        if mine.any():
            write_csv_atomic(path, table[~mine])
        return int(mine.sum())
