"""The main leaderboard: at most 12 columns, settings once in the title, empty columns dropped, a
legend of at most 5 lines; every column stays in leaderboard_full.md and leaderboard.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.harness.results import RESULT_COLUMNS, append_cell
from benchmark.report.build import make_report
from benchmark.report.leaderboard import LEADERBOARD_COLUMNS
from benchmark.report.main_table import MAIN_COLUMNS, MAX_COLUMNS

# every column the main table may show, with the group it reads
METRICS = [("fid", "all"), ("fid", "many"), ("fid", "medium"), ("fid", "few"), ("kid", "all"), ("fid_at_floor_n", "all"),
           ("fid_at_floor_n", "few"), ("precision", "all"), ("recall", "all"), ("recall", "few"), ("coverage", "few"),
           ("vendi_inlier_ratio", "few"), ("memorization", "few"), ("memorization_pixel", "few"), ("label_acc", "all"),
           ("cas_acc", "all"), ("cas_acc", "few"), ("aug_acc", "all"), ("aug_acc", "few")]  # fmt: skip


def cell(method, seed, level, *, steps=10):
    base = dict(dataset="digits", profile="exp", imbalance=0.1, split_fingerprint="abc", method=method, seed=seed,
                train_steps=steps, point="main", protocol="p", sampler="ddim", sampler_steps=10, guidance=1.0,
                train_precision="fp32", sample_precision="fp32", reference="test", feature_space="classifier",
                n_gen=10, n_ref=20, note="")  # fmt: skip
    rows = [{**base, "metric": m, "group": g, "class": np.nan, "value": level + 0.01 * i + 0.1 * seed}
            for i, (m, g) in enumerate(METRICS)]  # no IS rows: the classifier space has none
    rows += [{**base, "metric": "train_count", "group": "class", "class": k, "value": float(n)}
             for k, n in enumerate((100, 30, 10))]
    return pd.DataFrame(rows)[RESULT_COLUMNS]


def header(md: str) -> list[str]:
    line = next(line for line in md.splitlines() if line.startswith("| method"))
    return [c.strip() for c in line.strip("|").split("|")]


def legend(md: str) -> list[str]:
    return md.split("\n\n")[1].splitlines()


def write(tmp_path, cells):
    for frame in cells:
        append_cell(tmp_path / "results.csv", frame)
    make_report(tmp_path, plots=False, say=lambda _: None)
    return (tmp_path / "leaderboard.md").read_text(), (tmp_path / "leaderboard_full.md").read_text()


def test_main_table_is_narrow_and_says_its_settings_once(tmp_path):
    md, full = write(tmp_path, [cell(m, s, lvl) for s in (0, 1) for m, lvl in (("ddpm", 5.0), ("cbdm", 4.0))])
    cols = header(md)
    assert len(cols) <= MAX_COLUMNS == 12
    assert cols == ["method", *MAIN_COLUMNS], cols  # same seeds everywhere: no seeds column
    assert "IS" not in cols and "settings" not in cols and "precision" not in cols
    assert len(legend(md)) <= 5 and "docs/outputs.md" in legend(md)[-1]
    title = next(line for line in md.splitlines() if line.startswith("## "))
    assert "seeds 2" in title and "DDIM-10; guidance 1; 10 steps; 10 images" in title
    # the full table keeps every column but the ones no row can fill are still written (as '-')
    full_cols = header(full)
    assert {c.label for c in LEADERBOARD_COLUMNS} | {"seeds", "settings", "precision"} <= set(full_cols)
    assert "Rec few" in full_cols and "Rec few" not in cols
    flat = pd.read_csv(tmp_path / "leaderboard.csv")
    assert {"Rec few", "Aug", "settings"} <= set(flat.columns)


def test_different_settings_go_under_the_table_and_unequal_seeds_get_a_column(tmp_path):
    md, _ = write(tmp_path, [cell("ddpm", 0, 5.0), cell("ddpm", 1, 5.0), cell("cbdm", 0, 4.0, steps=20)])
    cols = header(md)
    assert cols[:2] == ["method", "seeds"] and len(cols) <= MAX_COLUMNS
    assert "Settings: cbdm: DDIM-10; guidance 1; 20 steps" in md and "ddpm: DDIM-10; guidance 1; 10 steps" in md


def test_empty_columns_are_dropped(tmp_path):
    frames = [cell(m, 0, lvl) for m, lvl in (("ddpm", 5.0), ("cbdm", 4.0))]
    frames = [f[f.metric != "cas_acc"] for f in frames]  # downstream accuracy off
    md, full = write(tmp_path, frames)
    assert "CAS" not in header(md) and "CAS" in header(full)
