"""Rows of a results table that an earlier version computed differently, and how to recompute them.

A results folder outlives the code that wrote it.  When a statistic's definition changes, the
rows already written are neither rewritten silently nor mixed with new rows as if they were the
same number: ``stale_rows`` finds them from what every row records (metric, group, n, note,
feature space) and ``stale_lines`` says, per reason, how many rows of which cells and the command
that recomputes them from the stored samples without retraining (``run --rescore``; rows of
samples made outside the harness: ``evaluate --force``).  Each rule names the change it detects:

- ``interval-bootstrap``: FID/KID intervals from resampling the generated set with replacement,
  which excluded their own estimate (now half-sampling of both sets, benchmark/eval/intervals.py);
- ``group-not-pooled``: group rows written before they were labelled ``pooled`` (and before the
  ``<metric>_classmean`` rows beside them);
- ``is-small-n``: an Inception Score of fewer than 10 images, which is exactly 1 by construction;
- ``kid-degenerate``: a KID whose subsets were each the whole of both sets, reported with a std;
- ``no-floor-n``: a method scored before the rows at the real floor's sample size
  (``<metric>_at_floor_n``) existed, in a table that has a floor: its "@floor n" columns are empty;
- ``classifier-unweighed``: rows of a classifier feature space named by its recipe alone
  (``classifier:<fingerprint>``), from before the identity carried a digest of the evaluator's
  weights (``classifier:<fingerprint>:w<digest>``): a retrained evaluator could have met features
  of the old one.  Rescored, they come back under the new name, beside the old rows, which
  the rescore then drops;
- ``no-vendi-inlier``: Vendi rows of a cell scored before the in-manifold Vendi (``vendi_inlier``,
  which noisy samples cannot raise) existed: the diversity curve and its leaderboard column are empty;
- ``memorization-duplicates``: memorisation rows from before each class's training images were
  deduplicated and the k nearest distances recomputed directly (a copy of an image present twice
  was missed), and real floors whose queries could be training images (they found themselves).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.core.files import write_csv_atomic
from benchmark.core.names import (
    COVERAGE,
    DENSITY,
    FID,
    GROUPS,
    IS,
    KID,
    LABEL_ACC,
    MEMORIZATION,
    MEMORIZATION_PIXEL,
    PRECISION,
    REAL,
    RECALL,
    VENDI,
    VENDI_INLIER,
    at_floor_n,
    is_interval,
)

SLICE_METRICS = (FID, KID, PRECISION, RECALL, DENSITY, COVERAGE, IS, LABEL_ACC)
CELL = ["dataset", "profile", "imbalance", "method", "seed"]
STALE_FILE = "stale_rows.csv"


@dataclass(frozen=True)
class Rule:
    name: str
    reason: str
    find: Callable[[pd.DataFrame], pd.Series]


def _computed(table: pd.DataFrame) -> pd.Series:
    """Rows holding a number (a NaN row with its reason was not computed, so it cannot be stale)."""
    return np.isfinite(pd.to_numeric(table["value"], errors="coerce"))


def _bootstrap(table: pd.DataFrame) -> pd.Series:
    interval = table["metric"].astype(str).map(is_interval)
    return interval & _computed(table) & ~table["note"].str.contains("half-sampling", regex=False)


def _not_pooled(table: pd.DataFrame) -> pd.Series:
    group = table["group"].isin(GROUPS) & table["metric"].isin(SLICE_METRICS)
    return group & ~table["note"].str.contains("pooled", regex=False)


def _is_small_n(table: pd.DataFrame) -> pd.Series:
    return (table["metric"] == IS) & (table["n_gen"] < 10) & _computed(table)


def _kid_degenerate(table: pd.DataFrame) -> pd.Series:
    kid = (table["metric"] == KID) & (table["n_gen"] == table["n_ref"]) & _computed(table)
    whole = [f"kid_subset={int(n)};" in note and "degenerate" not in note
             for n, note in zip(table["n_gen"], table["note"])]
    return kid & pd.Series(whole, index=table.index, dtype=bool)


def _no_floor_n(table: pd.DataFrame) -> pd.Series:
    """FID / KID rows of method cells with no ``fid_at_floor_n`` row, in a table whose floor has them."""
    key = ["dataset", "profile", "imbalance", "protocol", "feature_space", "reference"]
    out = pd.Series(False, index=table.index)
    floors = table[(table["method"] == REAL) & (table["metric"] == at_floor_n(FID))]
    if floors.empty:
        return out
    with_floor = set(map(tuple, floors[key].astype(str).to_numpy()))
    cells = table[table["method"] != REAL]
    scored = set(map(tuple, cells.loc[cells["metric"] == at_floor_n(FID), CELL + key].astype(str).to_numpy()))
    for index, row in cells[cells["metric"].isin((FID, KID))].iterrows():
        ident = tuple(str(row[c]) for c in key)
        if ident in with_floor and tuple(str(row[c]) for c in CELL) + ident not in scored:
            out[index] = True
    return out


def _classifier_unweighed(table: pd.DataFrame) -> pd.Series:
    space = table["feature_space"].astype(str)
    return space.str.startswith("classifier:") & ~space.str.contains(":w", regex=False)


def _no_vendi_inlier(table: pd.DataFrame) -> pd.Series:
    """The ``vendi`` rows of cells (method or floor) that have no ``vendi_inlier`` row in that feature space."""
    key = CELL + ["protocol", "feature_space", "reference"]
    ident = table[key].astype(str).apply(tuple, axis=1)
    scored = set(ident[table["metric"] == VENDI_INLIER])
    return (table["metric"] == VENDI) & ~ident.isin(scored)


def _memorization_duplicates(table: pd.DataFrame) -> pd.Series:
    memo = table["metric"].isin((MEMORIZATION, MEMORIZATION_PIXEL)) & _computed(table)
    return memo & ~table["note"].str.contains("distinct training images", regex=False)


RULES = (
    Rule("interval-bootstrap", "FID/KID intervals from resampling the generated set with replacement (they could "
         "exclude their own estimate; now half-sampling of both sets)", _bootstrap),
    Rule("group-not-pooled", "group rows written before they were labelled 'pooled' (the <metric>_classmean rows "
         "beside them are missing)", _not_pooled),
    Rule("is-small-n", "Inception Score of fewer than 10 images (exactly 1 by construction; now skipped)", _is_small_n),
    Rule("kid-degenerate", "KID whose every subset was the whole of both sets, reported with a std that is not "
         "one (now computed once, noted 'degenerate subsets')", _kid_degenerate),
    Rule("no-floor-n", "methods scored before the rows at the real floor's sample size (fid/kid_at_floor_n) "
         "existed: their '@floor n' leaderboard columns are empty", _no_floor_n),
    Rule("classifier-unweighed", "classifier feature space named by its recipe alone, from before the identity "
         "carried a digest of the evaluator's weights", _classifier_unweighed),
    Rule("no-vendi-inlier", "Vendi rows from before the in-manifold Vendi (vendi_inlier, which noisy samples cannot "
         "raise): the diversity curve's headline and 'Vendi-in/real few' are empty", _no_vendi_inlier),
    Rule("memorization-duplicates", "memorisation rows from before duplicated training images were merged and "
         "the nearest distances recomputed directly (copies of an image present twice were missed; the real "
         "floor's queries could be training images)", _memorization_duplicates),
)


def stale_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The table's stale rows, each with the ``rule`` that flags it and its ``reason`` (one row per hit)."""
    parts = []
    for rule in RULES:
        hit = rule.find(table)
        if hit.any():
            parts.append(table[hit].assign(rule=rule.name, reason=rule.reason))
    if not parts:
        return pd.DataFrame(columns=[*table.columns, "rule", "reason"])
    return pd.concat(parts, ignore_index=True)


def _external(rows: pd.DataFrame) -> pd.Series:
    return rows["sampler"].astype(str) == "external"


def stale_lines(stale: pd.DataFrame, out: Path) -> list[str]:
    """One line per rule: how many rows of how many cells, and the command that recomputes them."""
    lines = []
    for name, block in stale.groupby("rule", sort=False):
        cells = block[CELL].astype(str).drop_duplicates()
        line = f"{len(block)} row(s) of {len(cells)} cell(s) are stale ({name}): {block['reason'].iloc[0]}."
        fixes = []
        if (~_external(block)).any():
            fixes.append(f"python run_benchmark.py run --out {out} --rescore (re-evaluates the finished cells from "
                         "their stored samples; nothing is retrained or resampled; add the preset and --methods / "
                         "--seeds of the run)")
        points = block[_external(block)][["method", "seed", "train_steps", "guidance"]].drop_duplicates()
        for _, row in points.iterrows():
            # the point's own step and scale: without them --force would score another point of the name
            steps, scale = row["train_steps"], row["guidance"]
            point = (f" --train-steps {int(steps)}" if pd.notna(steps) else "") + (
                f" --guidance {float(scale)!r}" if pd.notna(scale) else "")
            fixes.append(f"python run_benchmark.py evaluate --samples <the samples of {row['method']}> --name "
                         f"{row['method']} --seed {int(row['seed'])} --out {out} --force{point}")
        lines.append(line + " Recompute: " + "; ".join(fixes))
    return lines


def write_stale(table: pd.DataFrame, out: Path) -> tuple[list[Path], list[str]]:
    """``out/stale_rows.csv`` when any row is stale (removed when none is) and the console lines."""
    path = Path(out) / STALE_FILE
    stale = stale_rows(table)
    if stale.empty:
        path.unlink(missing_ok=True)
        return [], []
    write_csv_atomic(path, stale)
    return [path], stale_lines(stale, Path(out))
