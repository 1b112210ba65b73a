"""Robustness lines and curves on planted trajectories (known orderings across budgets and scales)."""

import numpy as np
import pandas as pd
import pytest

from benchmark.harness.results import RESULT_COLUMNS
from benchmark.report.build import make_report
from benchmark.report.curves import write_curves
from benchmark.report.robustness import budget_lines, kendall_tau, robustness_lines, scale_lines, tuned_ranking

KEY = dict(dataset="digits", profile="exp", imbalance=0.1, protocol="p", feature_space="classifier", reference="test")


def _row(method, seed, step, w, metric, group, value, point):
    return dict(KEY, split_fingerprint="abc", method=method, seed=seed, train_steps=step, sampler="ddim",
                sampler_steps=10, guidance=w, train_precision="fp32", sample_precision="fp32", metric=metric,
                group=group, **{"class": np.nan}, n_gen=10, n_ref=20, value=value, note="", point=point)  # fmt: skip


def planted(fid, halves=None, seeds=(0, 1), main_scale=1.0):
    """``fid[method][(step, w)]``: the overall FID planted at each point (the same for many / few,
    seeds spread by +-0.01); ``halves[method][w] = (a, b)`` at the final step."""
    rows = []
    for method, points in fid.items():
        final = max(s for s, _ in points)
        for (step, w), value in points.items():
            point = "main" if step == final and w == main_scale else "extra"
            for seed in seeds:
                v = value + 0.01 * (seed - 0.5)
                for group in ("all", "many", "few"):
                    rows.append(_row(method, seed, step, w, "fid", group, v, point))
                rows.append(_row(method, seed, step, w, "coverage", "all", 1 / value, point))
                rows.append(_row(method, seed, step, w, "recall", "few", 1 / value, point))
                if halves and step == final:
                    a, b = halves[method][w]
                    rows.append(_row(method, seed, step, w, "fid_half_a", "all", a, point))
                    rows.append(_row(method, seed, step, w, "fid_half_b", "all", b, point))
    rows.append(_row("real", 0, 0, np.nan, "fid", "all", 1.0, "main"))
    rows.append(_row("real", 0, 0, np.nan, "coverage", "all", 0.9, "main"))
    return pd.DataFrame(rows)[RESULT_COLUMNS]


# cbdm wins at the two larger budgets, ddpm at the first: the orderings at the last two agree
BUDGETS = {
    "ddpm": {(10, 1.0): 30.0, (20, 1.0): 22.0, (40, 1.0): 21.0},
    "cbdm": {(10, 1.0): 32.0, (20, 1.0): 20.0, (40, 1.0): 18.0},
    "t2h": {(10, 1.0): 31.0, (20, 1.0): 25.0, (40, 1.0): 24.0},
}


def test_kendall_tau():
    assert kendall_tau(["a", "b", "c"], ["a", "b", "c"]) == 1
    assert kendall_tau(["a", "b", "c"], ["c", "b", "a"]) == -1
    assert kendall_tau(["a", "b", "c"], ["b", "a", "c"]) == pytest.approx(1 / 3)
    assert np.isnan(kendall_tau(["a"], ["a"]))


def test_budget_line_counts_the_best_and_compares_the_last_two_budgets():
    (line,) = budget_lines(planted(BUDGETS))
    assert "steps 10, 20, 40" in line
    assert "cbdm best at 2 of 3 budgets" in line and "ddpm best at 1 of 3 budgets" in line
    assert "(20, 40) agree, Kendall tau 1.00" in line


def test_budget_line_reads_only_each_methods_main_scale():
    fid = {m: dict(p) for m, p in BUDGETS.items()}
    fid["t2h"][(20, 2.0)] = 1.0  # a better number at another scale is not a budget point of the curve
    fid["t2h"][(40, 2.0)] = 1.0
    (line,) = budget_lines(planted(fid))
    assert "t2h best" not in line


def test_one_budget_and_one_scale_say_nothing():
    table = planted({m: {(40, 1.0): v[(40, 1.0)]} for m, v in BUDGETS.items()})
    assert robustness_lines(table, KEY) == []


# at scale 1 (the common, main scale) ddpm < cbdm; cbdm's own best scale (2) beats ddpm's own best (1)
SCALES = {
    "ddpm": {(40, 0.0): 25.0, (40, 1.0): 18.0, (40, 2.0): 19.0},
    "cbdm": {(40, 0.0): 26.0, (40, 1.0): 20.0, (40, 2.0): 17.0},
}


def test_scale_lines_common_scale_and_own_scale_chosen_on_the_other_half():
    # half a picks cbdm's w=2 (a planted lucky half b at w=0 must not be chosen); ddpm's half a picks w=1
    halves = {"cbdm": {0.0: (30.0, 5.0), 1.0: (21.0, 20.5), 2.0: (17.5, 17.2)},
              "ddpm": {0.0: (26.0, 25.0), 1.0: (18.2, 18.4), 2.0: (19.1, 19.3)}}
    lines = scale_lines(planted(SCALES, halves))
    assert lines[0].startswith("Scales") and "ddpm best at 2 of 3 scales" in lines[0]
    assert "cbdm best at 1 of 3 scales" in lines[0]
    assert lines[1] == "At the common scale 1: ddpm < cbdm."
    assert "cbdm (w=2, 17.20) < ddpm (w=1, 18.40)" in lines[2] and "Kendall tau against the common scale -1.00" in lines[2]
    assert "half a" in lines[2]  # the rule is stated
    assert tuned_ranking(planted(SCALES, halves)) == {"cbdm": (2.0, 17.2), "ddpm": (1.0, 18.4)}


def test_scale_lines_without_half_rows_say_why():
    lines = scale_lines(planted(SCALES))
    assert "fid_half_a" in lines[-1] and "--rescore" in lines[-1]


def test_report_writes_lines_under_the_table_curves_and_ranks_main_points(tmp_path):
    t2h = {**BUDGETS["t2h"], (40, 0.0): 27.0, (40, 2.0): 26.0}
    table = planted({**{m: {**BUDGETS[m], **SCALES[m]} for m in SCALES}, "t2h": t2h})
    table.to_csv(tmp_path / "results.csv", index=False)
    paths = make_report(tmp_path, say=lambda *a: None)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "Budgets (overall FID" in md and "Scales (overall FID" in md
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    ddpm = board[board.method == "ddpm"].iloc[0]
    assert ddpm["FID"].startswith("18.00")  # the main point (step 40, scale 1), not a mean over the points
    names = {p.name for p in paths}
    assert {"budget_digits_exp-0.1_p_classifier.png", "front_digits_exp-0.1_p_classifier.png"} <= names


def test_curves_skip_a_table_of_one_point(tmp_path):
    table = planted({m: {(40, 1.0): v[(40, 1.0)]} for m, v in BUDGETS.items()})
    assert write_curves(table, tmp_path) == []


def test_under_a_paper_protocol_published_rows_compare_with_its_own_scale_only():
    table = planted(SCALES, main_scale=0.0).assign(protocol="ddim")
    (line,) = robustness_lines(table, {**KEY, "protocol": "ddim"})[-1:]
    assert "guidance 1.5" in line and "not cbdm, ddpm" in line
    assert all("Published" not in x for x in robustness_lines(planted(SCALES), KEY))


def test_an_outside_model_scored_once_leaves_the_lines_of_the_others():
    table = planted({m: {**BUDGETS[m], **SCALES.get(m, {})} for m in BUDGETS})
    outside = table[(table.method == "t2h") & (table.train_steps == 40)].assign(method="mine", train_steps=np.nan,
                                                                                 guidance=np.nan)
    lines = robustness_lines(pd.concat([table, outside], ignore_index=True), KEY)
    assert lines[0].startswith("Budgets") and "mine" not in lines[0]
    assert any(x.startswith("Scales") for x in lines)
