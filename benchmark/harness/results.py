"""The tidy results table: one row per measured number, appended once per finished cell.

Leaderboards and plots read this table alone.  A cell's rows are appended under a file
lock, and only when no row of that cell (same data, split, method, seed and protocol) is
present yet, so reruns and concurrent workers never duplicate rows.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from benchmark.core.errors import BenchmarkError
from benchmark.core.files import write_csv_atomic

RESULT_COLUMNS = [  # the columns of results.csv, in order
    "dataset", "profile", "imbalance", "split_fingerprint",
    "method", "seed", "train_steps",
    "protocol", "sampler", "sampler_steps", "guidance",
    "train_precision", "sample_precision",
    "reference", "feature_space",
    "metric", "group", "class",
    "n_gen", "n_ref", "value", "note",
]  # fmt: skip

# columns added after the first tables were written: older tables and metrics.csv files get this
# value on reading, and a table is rewritten with the full header when a new cell joins it
LATER_COLUMNS = {"train_precision": "unrecorded", "sample_precision": "unrecorded"}

# the columns that identify one cell's block of rows
CELL_KEY = ["dataset", "profile", "imbalance", "split_fingerprint", "method", "seed", "protocol"]


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
    table = with_later_columns(pd.read_csv(path, dtype={"split_fingerprint": str, "note": str, "method": str}))
    missing = [c for c in RESULT_COLUMNS if c not in table.columns]
    if missing:
        raise BenchmarkError(f"{path} is not an LTGen-Bench results table (missing columns: {', '.join(missing)})")
    table["note"] = table["note"].fillna("")
    return table


def with_later_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of an older table with the columns added since, holding LATER_COLUMNS' values."""
    missing = {c: v for c, v in LATER_COLUMNS.items() if c not in rows.columns}
    return rows.assign(**missing) if missing else rows


def _same_cell(table: pd.DataFrame, key: dict) -> pd.Series:
    mask = pd.Series(True, index=table.index)
    for col in CELL_KEY:
        left = table[col]
        value = key[col]
        if isinstance(value, float):
            mask &= (left.astype(float) - value).abs() < 1e-12
        else:
            mask &= left.astype(str) == str(value)
    return mask


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
                rows.to_csv(path, mode="a", header=False, index=False)
        else:
            write_csv_atomic(path, rows)
    return True

