"""Seed-level claims (benchmark/report/seeds.py) checked against a known truth on synthetic seeds,
and the leaderboard marks and ``leaderboard_paired.csv`` built from them."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmark.harness.results import RESULT_COLUMNS
from benchmark.report.build import make_report
from benchmark.report.leaderboard import leaderboards, write_leaderboards
from benchmark.report.seeds import ALPHA, compare, compare_best

REPEATS = 200
SEEDS = 3  # what a benchmark grid usually runs


def simulate(rng, effect, *, n=SEEDS, shared=1.0, own=0.1):
    """Per-seed FIDs of two methods: a large per-seed term both share (same noise, same reference),
    method b worse by ``effect``, and a small independent term per method and seed."""
    base = rng.normal(0.0, shared, n)
    a = 10.0 + base + rng.normal(0.0, own, n)
    b = 10.0 + effect + base + rng.normal(0.0, own, n)
    return {"a": dict(enumerate(a)), "b": dict(enumerate(b))}


def unpaired_rule(per_seed):
    """The rule the leaderboard used before: a's lead over b beats the larger of their seed stds."""
    a, b = (np.array(list(per_seed[m].values())) for m in ("a", "b"))
    return a.mean() < b.mean() and b.mean() - a.mean() > max(a.std(ddof=1), b.std(ddof=1))


def test_paired_t_agrees_with_scipy_ttest_rel():
    rng = np.random.default_rng(3)
    a, b = rng.normal(5.0, 1.0, 6), rng.normal(5.5, 1.0, 6)
    test = compare(dict(enumerate(a)), dict(enumerate(b)), lower_is_better=True)
    ref = stats.ttest_rel(b, a)
    low, high = ref.confidence_interval(0.95)
    assert test.n_seeds == 6 and test.note == ""
    assert test.mean_diff == pytest.approx(np.mean(b - a))
    assert test.p == pytest.approx(ref.pvalue) and (test.ci_low, test.ci_high) == pytest.approx((low, high))


def test_direction_follows_the_column():
    low = {0: 1.0, 1: 2.0, 2: 3.0}
    high = {0: 1.5, 1: 2.4, 2: 3.6}
    # lower is better: `low` wins by 0.5 on average; higher is better: `high` wins by the same
    [c] = compare_best({"low": low, "high": high}, lower_is_better=True)
    assert (c.best, c.other) == ("low", "high") and c.test.mean_diff == pytest.approx(0.5)
    [c] = compare_best({"low": low, "high": high}, lower_is_better=False)
    assert (c.best, c.other) == ("high", "low") and c.test.mean_diff == pytest.approx(0.5)
    # a target column compares |v - target|: 0.9 and 1.2 are 0.1 and 0.2 from 1, 1.1 vs 0.7 is 0.1 vs 0.3
    near, far = {0: 0.9, 1: 1.1}, {0: 1.2, 1: 0.7}
    [c] = compare_best({"far": far, "near": near}, lower_is_better=False, target=1.0)
    assert c.best == "near" and c.test.mean_diff == pytest.approx(0.15) and c.test.n_seeds == 2
    assert c.lead == pytest.approx(0.15)


def test_fewer_than_two_paired_seeds_are_not_tested():
    one = compare({0: 1.0, 1: 2.0}, {0: 3.0}, lower_is_better=True)
    assert one.n_seeds == 1 and one.mean_diff == pytest.approx(2.0)
    assert np.isnan(one.p) and np.isnan(one.ci_low) and np.isnan(one.ci_high) and not one.separated
    assert "not tested: 1 paired seed" in one.note and "1 seed not shared" in one.note
    none = compare({0: 1.0}, {1: 3.0}, lower_is_better=True)
    assert none.n_seeds == 0 and np.isnan(none.mean_diff) and np.isnan(none.p) and "0 paired seeds" in none.note
    assert compare_best({"a": {0: 1.0}}, lower_is_better=True) == []  # nothing to compare with


def test_a_difference_without_spread_is_degenerate_and_says_so():
    same = compare({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}, lower_is_better=True)
    assert (same.p, same.mean_diff) == (1.0, 0.0) and "identical" in same.note
    steady = compare({0: 0.1 * 3, 1: 0.2 * 3}, {0: 0.3 * 3 + 0.2, 1: 0.4 * 3 + 0.2}, lower_is_better=True)
    assert steady.p == 0.0 and steady.mean_diff == pytest.approx(0.8) and "same difference" in steady.note


def test_planted_difference_paired_test_has_power_the_unpaired_rule_lacks():
    rng = np.random.default_rng(0)
    paired_hits = unpaired_hits = 0
    for _ in range(REPEATS):
        per_seed = simulate(rng, effect=0.5)
        [c] = compare_best(per_seed, lower_is_better=True)
        paired_hits += c.best == "a" and c.separated
        unpaired_hits += unpaired_rule(per_seed)
    power, unpaired = paired_hits / REPEATS, unpaired_hits / REPEATS
    print(f"power at 5%, {SEEDS} seeds: paired {power:.3f}, unpaired std rule {unpaired:.3f}")
    # expected power about 0.85 (the per-seed differences have std 0.14, t_2 = 4.30 needs a lead of 0.35)
    assert power > 0.7
    assert unpaired < 0.4 and power - unpaired > 0.4  # the shared seed term hides the lead from the std rule


def test_no_difference_false_positive_rate_is_near_alpha():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(REPEATS):
        [c] = compare_best(simulate(rng, effect=0.0), lower_is_better=True)
        hits += c.separated
    fpr = hits / REPEATS
    print(f"false positive rate at 5%, {SEEDS} seeds: {fpr:.3f}")
    # Picking the better of two means does not change a two-sided paired p (it is symmetric in the two),
    # so the count is Binomial(200, 0.05): mean 10, std 3.1.  Bounds 2 and 20 hits sit 2.6 and 3.2 std
    # away; a correct test falls outside them with probability below 0.3%.
    assert 0.01 <= fpr < 0.10


def test_interval_covers_the_true_mean_difference():
    rng = np.random.default_rng(2)
    repeats, covered = 400, 0
    for _ in range(repeats):
        per_seed = simulate(rng, effect=0.5)
        test = compare(per_seed["a"], per_seed["b"], lower_is_better=True)  # roles fixed: the truth is +0.5
        covered += test.ci_low <= 0.5 <= test.ci_high
    coverage = covered / repeats
    print(f"coverage of the 95% interval, {SEEDS} seeds: {coverage:.3f}")
    # Binomial(400, 0.95): std 0.011; the bounds are 3.2 std either side
    assert 0.915 < coverage < 0.985


def rows(method, seed, fid, recall):
    """One cell's leaderboard rows (FID and recall over all classes) in the results table's format."""
    precision = "none" if method == "real" else "bf16"
    base = dict(dataset="digits", profile="exp", imbalance=0.1, split_fingerprint="abc", method=method, seed=seed,
                train_steps=10, protocol="p", sampler="ddim", sampler_steps=10, guidance=1.0,
                train_precision=precision, sample_precision=precision, reference="test", feature_space="classifier",
                n_gen=10, n_ref=20, note="", group="all", **{"class": np.nan}, point="main")  # fmt: skip
    return pd.DataFrame([{**base, "metric": "fid", "value": fid}, {**base, "metric": "recall", "value": recall}])[
        RESULT_COLUMNS
    ]


SHARED = (0.0, 3.0, -2.0)  # the seed's own luck, common to all methods of that seed


def three_seed_table():
    """cbdm is 2 FID better than ddpm on every seed (+-0.1), but the seed term spreads both by ~2.5;
    on recall neither leads (seed-to-seed differences -0.01, +0.02, -0.005); oc trails on both."""
    parts = []
    for s, base in enumerate(SHARED):
        parts += [rows("cbdm", s, 8.0 + base + (0.1, -0.1, 0.05)[s], 0.50 + (0.0, 0.02, 0.0)[s]),
                  rows("ddpm", s, 10.0 + base, 0.50 + (0.01, 0.0, 0.005)[s]),
                  rows("oc", s, 15.0 + base, 0.40),
                  rows("real", s, 1.0, 0.9)]  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def test_three_seeds_bold_a_planted_winner_and_italicise_a_null(tmp_path):
    table = three_seed_table()
    [(_, display, marks)] = leaderboards(table)
    cbdm, ddpm = np.array([8.1, 10.9, 6.05]), 10.0 + np.array(SHARED)
    assert ddpm.mean() - cbdm.mean() < max(cbdm.std(ddof=1), ddpm.std(ddof=1))  # the old std rule: a tie
    assert marks.loc["cbdm", "FID"] == "best"
    assert marks.loc["cbdm", "Rec"] == "tie" and marks.loc["ddpm", "Rec"] == ""
    assert not display.attrs["one_seed"]
    table.to_csv(tmp_path / "results.csv", index=False)
    lines = []
    make_report(tmp_path, plots=False, say=lines.append)
    md = (tmp_path / "leaderboard.md").read_text()
    full = (tmp_path / "leaderboard_full.md").read_text()  # every column; the main table has no recall
    assert f"**{display.loc['cbdm', 'FID']}**" in md and f"*{display.loc['cbdm', 'Rec']}~*" in full
    assert "No ranking is claimed" not in md.split("## ")[1] and not lines


def test_one_seed_claims_no_ranking(tmp_path):
    table = pd.concat([rows("cbdm", 0, 8.0, 0.5), rows("ddpm", 0, 10.0, 0.5), rows("real", 0, 1.0, 0.9)])
    [(_, display, marks)] = leaderboards(table)
    assert display.attrs["one_seed"]
    assert marks.loc["cbdm", "FID"] == "best"  # the best mean, untested
    assert marks.loc["cbdm", "Rec"] == "tie"  # equal means are never bold
    table.to_csv(tmp_path / "results.csv", index=False)
    lines = []
    make_report(tmp_path, plots=False, say=lines.append)
    title, statement = (tmp_path / "leaderboard.md").read_text().split("## ")[1].split("\n\n")[:2]
    assert title.startswith("digits exp") and statement.startswith("> No ranking is claimed: one seed")
    assert len(lines) == 1 and lines[0].startswith("NOTE: leaderboard digits") and "No ranking is claimed" in lines[0]
    assert "No ranking is claimed: one seed" in (tmp_path / "leaderboard.tex").read_text()
    flat = pd.read_csv(tmp_path / "leaderboard.csv")
    assert set(flat.ranking) == {"none: one seed"}
    paired = pd.read_csv(tmp_path / "leaderboard_paired.csv")
    assert set(paired.n_seeds) == {1} and paired.p.isna().all()
    assert paired.note.str.startswith("one seed: no ranking claimed; not tested").all()


def test_paired_csv_holds_every_comparison(tmp_path):
    paths = write_leaderboards(three_seed_table(), tmp_path)
    assert tmp_path / "leaderboard_paired.csv" in paths
    paired = pd.read_csv(tmp_path / "leaderboard_paired.csv")
    assert list(paired.columns) == ["dataset", "profile", "imbalance", "protocol", "feature_space", "reference",
                                    "column", "metric", "group", "best", "other", "runner_up", "mean_diff", "ci_low",
                                    "ci_high", "p", "n_seeds", "note"]  # fmt: skip
    assert set(paired.column) == {"FID", "Rec"}  # the only columns with values; the floor never competes
    fid = paired[paired.column == "FID"].set_index("other")
    assert list(fid.index) == ["ddpm", "oc"] and set(fid.best) == {"cbdm"}
    assert list(fid.runner_up) == [True, False] and set(fid.n_seeds) == {3}
    d = 10.0 - np.array([8.1, 7.9, 8.05])  # cbdm's advantage over ddpm per seed (the shared term cancels)
    ref = stats.ttest_1samp(d, 0.0)
    assert fid.loc["ddpm", "mean_diff"] == pytest.approx(d.mean()) and fid.loc["ddpm", "p"] == pytest.approx(ref.pvalue)
    assert fid.loc["ddpm", "p"] < ALPHA and (fid.loc["ddpm", ["ci_low", "ci_high"]] > 0).all()
    assert fid.loc["oc", "mean_diff"] == pytest.approx(15.0 - 8.0 - np.mean([0.1, -0.1, 0.05]))
    rec = paired[(paired.column == "Rec") & paired.runner_up].iloc[0]
    assert rec.p > ALPHA and rec.ci_low < 0 < rec.ci_high and rec.n_seeds == 3
