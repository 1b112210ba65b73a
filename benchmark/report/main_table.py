"""The main leaderboard a reviewer reads at one glance: at most 12 columns, the settings once.

``leaderboard.py`` builds each table with every column (the CSV and ``leaderboard_full.md`` keep
them all). The main view keeps the columns that answer "how does the tail fare": overall, many-
and few-shot FID, the same at the real-data floor's n, the few-shot group's coverage, in-manifold
diversity and memorisation, label accuracy and CAS. What every row shares (seeds, sampler, budget,
number of images) moves into the title; columns no row fills (IS in a classifier's feature space,
CAS when downstream accuracy was off) are dropped.
"""

from __future__ import annotations

import pandas as pd

MAIN_COLUMNS = ("FID", "FID many", "FID few", "FID @floor n", "FID few @floor n", "Cov few", "Vendi-in/real few",
                "Mem few", "LabelAcc", "CAS")  # fmt: skip
MAX_COLUMNS = 12  # the method column included
FLOOR = "real data (floor)"
PUBLISHED = "(published)"
DOCS_PAGE = "docs/outputs.md"

LEGEND_MAIN = (
    "- Mean ± std over seeds. **Bold**: best, separated from the runner-up by a paired t test over seeds (p < 0.05); "
    "*italic~*: best mean, not separable (with one seed: untested).",
    "- FID lower is better (overall, many- and few-shot group); Cov few: coverage of the few-shot classes (higher); "
    "Vendi-in/real few: in-manifold diversity relative to held-out real images (best near 1); "
    "Mem few: memorised fraction (lower).",
    "- LabelAcc: a classifier's accuracy on the generated images; CAS: a classifier trained on them, tested on real images.",
    "- 'real data (floor)' scores held-out real images like generated ones; '@floor n' columns score every method at "
    "the floor's n: compare with the floor there.",
    "- Every column, test and class: leaderboard_full.md, leaderboard.csv, leaderboard_paired.csv, "
    f"leaderboard_per_class.csv. How to read them: LTGen-Bench's {DOCS_PAGE} (Reading the leaderboard).",
)


def _ours(display: pd.DataFrame) -> list:
    return [i for i in display.index if i != FLOOR and not str(i).endswith(PUBLISHED)]


def main_view(display: pd.DataFrame, marks: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str, list[str]]:
    """(columns, marks, what the title adds, lines under the table) of one full leaderboard table."""
    ours = _ours(display)
    empty = {c for c in display.columns if display[c].astype(str).isin(["-", "", "nan"]).all()}
    cols = [c for c in MAIN_COLUMNS if c in display.columns and c not in empty]
    title, below = [], []
    seeds = sorted({str(display.loc[m, "seeds"]) for m in ours}) if "seeds" in display.columns else []
    if len(seeds) == 1:
        title.append(f"seeds {seeds[0]}")
    elif seeds:
        cols.insert(0, "seeds")
    if "settings" in display.columns:
        settings = {m: str(display.loc[m, "settings"]) for m in ours if str(display.loc[m, "settings"])}
        if len(set(settings.values())) == 1:
            title.append(next(iter(settings.values())))
        elif settings:
            below.append("Settings: " + " | ".join(f"{m}: {s}" for m, s in settings.items()) + ".")
        for label in display.index:
            if str(label).endswith(PUBLISHED):
                below.append(f"{label}: {display.loc[label, 'settings']}.")
    view, view_marks = display[cols].copy(), marks[cols].copy()
    view.attrs = dict(display.attrs)
    assert len(cols) + 1 <= MAX_COLUMNS, cols
    return view, view_marks, " | ".join(title), below
