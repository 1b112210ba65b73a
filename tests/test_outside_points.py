"""An outside model scored at several points under one name and seed: each (--train-steps, --guidance) adds
rows, the largest step is the main point, the same point again keeps its rows (--force replaces that point
alone), two sets that leave the point unknown are refused, and the report draws the model's curves."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from digits_samples import digits_samples

from benchmark.cli import main
from benchmark.harness.outside_points import OutsidePoint, Plan, plan_point, settle
from benchmark.harness.results import RESULT_COLUMNS, points_of_cell, put_point, read_results, repair_results
from benchmark.report import curves
from benchmark.report.robustness import budget_lines, main_points, scale_lines, tuned_ranking

EVAL = ["evaluate", "--preset", "smoke", "--no-progress", "--set", "eval.downstream=false", "--set", "eval.diversity=false",
        "--set", "eval.real_floor=false", "--set", "eval.classifier_epochs=1", "--name", "mine"]  # fmt: skip


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    """Two sets of digits test images (12 per class each, no image in both)."""
    folder = tmp_path_factory.mktemp("samples")
    return [digits_samples(folder / f"set{i}.npz", skip=12 * i) for i in range(2)]


def _points(out):
    """{(train_steps, guidance): point value} of 'mine' (NaN as None), each point's rows one value."""
    mine = read_results(out)
    mine = mine[mine.method == "mine"]
    found = {}
    for (s, g), rows in mine.groupby(["train_steps", "guidance"], dropna=False):
        assert rows.point.nunique() == 1, rows.point.unique()
        found[(None if math.isnan(s) else int(s), None if math.isnan(g) else float(g))] = rows.point.iloc[0]
    return found


def _rows_at(out, step, scale):
    table = read_results(out)
    return table[(table.method == "mine") & (table.train_steps == step) & (table.guidance == scale)].reset_index(drop=True)


def test_one_name_at_two_steps_and_two_scales(two_sets, tmp_path, capsys, monkeypatch):
    a, b = two_sets
    out = tmp_path / "o"
    folder = out / "runs" / "digits" / "exp-0.1" / "mine" / "seed0"

    def score(samples, *extra):
        assert main([*EVAL, "--samples", str(samples), "--out", str(out), *extra]) == 0
        return capsys.readouterr().out

    score(a, "--train-steps", "10", "--guidance", "1")
    assert _points(out) == {(10, 1.0): "main"}
    said = score(b, "--train-steps", "20", "--guidance", "1")  # a larger step: the main point moves to it
    assert "is now step 20, guidance 1 (the largest step scored); step 10, guidance 1 is an extra point" in said
    assert _points(out) == {(10, 1.0): "extra", (20, 1.0): "main"}
    assert json.loads((folder / "config.json").read_text())["external_samples"] == str(b)
    moved = folder / "points" / "step10_g1"
    assert json.loads((moved / "config.json").read_text())["external_samples"] == str(a)
    assert set(pd.read_csv(moved / "metrics.csv").point) == {"extra"}  # the files say what the table says
    assert set(pd.read_csv(folder / "metrics.csv").point) == {"main"}
    said = score(a, "--train-steps", "20", "--guidance", "2")  # the same step: the first scored stays main
    assert "step 20, guidance 2 is an extra point of 'mine' (seed 0); the main point" in said
    assert _points(out) == {(10, 1.0): "extra", (20, 1.0): "main", (20, 2.0): "extra"}
    assert (folder / "points" / "step20_g2" / "metrics.csv").exists()
    assert sorted(p.name for p in (folder / "points").iterdir()) == ["step10_g1", "step20_g2"]  # no staging left

    before = read_results(out)
    said = score(b, "--train-steps", "10", "--guidance", "1")  # a point scored before: its rows stay
    assert f"rows for 'mine' (seed 0, step 10, guidance 1) were already in {out / 'results.csv'}" in said
    assert f"scored from {a}); kept the existing ones" in said
    pd.testing.assert_frame_equal(read_results(out), before)
    old = _rows_at(out, 20, 2.0)
    said = score(b, "--train-steps", "20", "--guidance", "2", "--force")  # replaces that point alone
    assert f"replaced the {len(old)} earlier rows of 'mine' (seed 0, step 20, guidance 2), scored from {a}" in said
    after = read_results(out)
    others = [(before.method != "mine") | (before.guidance != 2.0), (after.method != "mine") | (after.guidance != 2.0)]
    pd.testing.assert_frame_equal(before[others[0]].reset_index(drop=True), after[others[1]].reset_index(drop=True))
    new = _rows_at(out, 20, 2.0)
    assert len(new) == len(old) and set(new.point) == {"extra"} and not new.value.equals(old.value)
    assert json.loads((folder / "points" / "step20_g2" / "config.json").read_text())["external_samples"] == str(b)

    # the report drew the model's budget curve (two steps at its main scale) and its front (two scales at step 20)
    assert list((out / "plots").glob("budget_*.png")) and list((out / "plots").glob("front_*.png"))
    drawn = []
    monkeypatch.setattr(curves, "_save", lambda fig, stem: drawn.append((stem.name, fig)) or [])
    curves.write_curves(read_results(out), out)
    labels = {stem.split("_")[0]: fig.axes[0].get_legend_handles_labels()[1] for stem, fig in drawn}
    assert "mine" in labels["budget"] and "mine" in labels["front"]
    # its scale is chosen on half a of its images and read on half b, as a grid method's is
    assert {"fid_half_a", "fid_half_b"} <= set(read_results(out).metric)
    tuned = tuned_ranking(read_results(out))
    assert tuned is not None and set(tuned) == {"mine"} and tuned["mine"][0] in (1.0, 2.0)
    ranked = main_points(read_results(out))  # what the leaderboards rank
    assert set(zip(ranked.train_steps, ranked.guidance)) == {(20, 1.0)} and "mine" in (out / "leaderboard.md").read_text()


def test_two_sets_at_an_unknown_point_are_refused_unless_forced(two_sets, tmp_path, capsys):
    a, b = two_sets
    out = tmp_path / "o"
    argv = [*EVAL, "--out", str(out)]
    assert main([*argv, "--samples", str(a)]) == 0
    capsys.readouterr()
    n = len(read_results(out))
    assert main([*argv, "--samples", str(b)]) == 2
    err = capsys.readouterr().err
    assert f"--name 'mine' (seed 0) was scored from {a}, and {b} cannot be told apart from it" in err
    assert "pass --train-steps and --guidance to score them as a point of their own" in err and "--force" in err
    assert "Traceback" not in err and len(read_results(out)) == n
    assert main([*argv, "--samples", str(a)]) == 0  # the same samples again: kept, as before points
    assert "kept the existing ones" in capsys.readouterr().out
    assert main([*argv, "--samples", str(b), "--force"]) == 0
    assert f"replaced the {n} earlier rows of 'mine' (seed 0), scored from {a}, with these from {b}" in capsys.readouterr().out
    assert _points(out) == {(None, None): "main"} and len(read_results(out)) == n


# the table alone: which point is main, and what put_point replaces


def _block(step, scale, point, value, method="mine"):
    return pd.DataFrame([dict(dataset="digits", profile="exp", imbalance=0.1, split_fingerprint="abc", method=method,
                              seed=0, train_steps=step, protocol="p", sampler="external", sampler_steps=0,
                              guidance=scale, train_precision="external", sample_precision="external",
                              reference="test", feature_space="classifier", metric="fid", group=g,
                              **{"class": np.nan}, n_gen=10, n_ref=20, value=value, note="", point=point)
                         for g in ("all", "many", "few")])[RESULT_COLUMNS]  # fmt: skip


KEY = dict(dataset="digits", profile="exp", imbalance=0.1, split_fingerprint="abc", method="mine", seed=0, protocol="p")


def test_the_main_point_is_the_largest_step_then_the_first_scored(tmp_path):
    path = tmp_path / "results.csv"
    folder = tmp_path / "mine"
    assert plan_point(path, KEY, OutsidePoint(None, None), folder).main  # nothing yet: the first is main
    put_point(path, _block(np.nan, np.nan, "main", 30.0), main=True)
    plan = plan_point(path, KEY, OutsidePoint(5, None), folder)  # a given step is above one not given
    assert plan.main and plan.takes_over and plan.main_before == OutsidePoint(None, None)
    put_point(path, _block(5, np.nan, "main", 20.0), main=True)
    assert points_of_cell(path, KEY).point.tolist() == ["extra", "main"]
    assert not plan_point(path, KEY, OutsidePoint(5, 2.0), folder).main  # equal steps: the first stays
    assert not plan_point(path, KEY, OutsidePoint(3, 1.0), folder).main
    again = plan_point(path, KEY, OutsidePoint(None, None), folder)
    assert again.present == 3 and not again.main and not again.takes_over  # a point keeps its role
    assert put_point(path, _block(np.nan, np.nan, "extra", 31.0), main=False) == 3  # NaN matches NaN only
    table = read_results(path)
    assert len(table) == 6 and sorted(table.value.unique()) == [20.0, 31.0]
    put_point(path, _block(5, np.nan, "main", 21.0, method="other"), main=True)  # another name: untouched
    assert points_of_cell(path, KEY).point.tolist() == ["main", "extra"]  # order of first appearance


def test_a_main_point_taking_over_moves_the_earlier_files(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    old, new = OutsidePoint(None, None), OutsidePoint(20, 1.5)
    (folder / "config.json").write_text(json.dumps({"external_samples": "a.npz", "config": {}}))  # before points
    _block(np.nan, np.nan, "main", 30.0).to_csv(folder / "metrics.csv", index=False)
    (folder / "neighbours.npz").write_bytes(b"old")
    plan = Plan(new, main=True, present=0, earlier=None, main_before=old)
    made = plan.staging(folder)
    assert made == folder / "points" / "step20_g1.5"
    made.mkdir(parents=True)
    (made / "neighbours.npz").write_bytes(b"new")
    record = {"external_samples": "b.npz", "train_steps": 20, "guidance": 1.5}
    settle(plan, folder, _block(20, 1.5, "main", 10.0), record)
    moved = folder / "points" / "stepunknown_gunknown"
    assert json.loads((moved / "config.json").read_text()) == {"external_samples": "a.npz", "config": {},
                                                               "train_steps": None, "guidance": None}
    assert (moved / "neighbours.npz").read_bytes() == b"old" and set(pd.read_csv(moved / "metrics.csv").point) == {"extra"}
    assert json.loads((folder / "config.json").read_text()) == record
    assert (folder / "neighbours.npz").read_bytes() == b"new" and not made.exists()
    made.mkdir()  # a rerun that died before its rows entered the table scores the point again
    settle(plan, folder, _block(20, 1.5, "main", 10.0), record)
    assert (moved / "neighbours.npz").read_bytes() == b"old"  # the record names the new point: nothing moved again
    assert (folder / "neighbours.npz").read_bytes() == b"new" and set(pd.read_csv(moved / "metrics.csv").point) == {"extra"}


# the report: an outside model's curve beside a grid's


def _grid_and_outside():
    grid = [_block(s, 1.0, "main" if s == 40 else "extra", v, method=m).assign(sampler="ddim")
            for m, base in (("ddpm", 30.0), ("cbdm", 29.0)) for s, v in ((10, base), (20, base - 5), (40, base - 8))]
    outside = [_block(s, np.nan, "main" if s == 2000 else "extra", v) for s, v in ((1000, 25.0), (2000, 19.0))]
    return pd.concat(grid + outside, ignore_index=True)


def test_an_outside_curve_at_its_own_steps_leaves_the_grid_line_and_is_drawn(tmp_path, monkeypatch):
    table = _grid_and_outside()
    (line,) = budget_lines(table)
    assert line.startswith("Budgets (overall FID at each method's main scale, steps 10, 20, 40): cbdm best at 3 of 3")
    assert line.endswith("; not compared: mine (scored at other steps).")
    at_grid_steps = pd.concat([table, _block(20, np.nan, "extra", 20.0), _block(40, np.nan, "extra", 18.0)])
    (line,) = budget_lines(at_grid_steps)
    assert "steps 20, 40" in line and "mine best at 2 of 2 budgets" in line and "not compared" not in line
    assert scale_lines(table) == []
    drawn = []
    monkeypatch.setattr(curves, "_save", lambda fig, stem: drawn.append(fig) or [])
    curves.write_curves(table, tmp_path)  # the outside model gave no --guidance: its curve is at its unknown scale
    (fig,) = drawn
    assert sorted(fig.axes[0].get_legend_handles_labels()[1]) == ["cbdm", "ddpm", "mine"]


def test_repair_puts_back_every_point_of_a_cell(tmp_path):
    """``report --repair`` rebuilds the table from the folders: a cell's points come back together (each
    point's metrics.csv alone would replace the rows of the one put back before it)."""
    folder = tmp_path / "runs" / "digits" / "exp-0.1" / "mine" / "seed0"
    (folder / "points" / "step10_g1").mkdir(parents=True)
    _block(20, 1.0, "main", 19.0).to_csv(folder / "metrics.csv", index=False)
    _block(10, 1.0, "extra", 25.0).to_csv(folder / "points" / "step10_g1" / "metrics.csv", index=False)
    assert repair_results(tmp_path)[-1] == "put back the rows of 1 cell(s) from their metrics.csv"
    table = read_results(tmp_path)
    assert sorted(zip(table.train_steps, table.point)) == [(10, "extra")] * 3 + [(20, "main")] * 3
