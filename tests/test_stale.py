"""Stale rows: what an earlier version computed differently is found, named, and given its fix."""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.harness.results import RESULT_COLUMNS
from benchmark.report.build import make_report
from benchmark.report.stale import STALE_FILE, stale_lines, stale_rows


def _row(method="ddpm", metric="fid", group="all", cls=np.nan, value=1.0, note="", n_gen=10, n_ref=20, seed=0,
         sampler="ddim"):
    return dict(dataset="digits", profile="exp", imbalance=0.1, split_fingerprint="abc", method=method, seed=seed,
                train_steps=10, protocol="p", sampler=sampler, sampler_steps=10, guidance=1.0,
                train_precision="fp32", sample_precision="fp32", reference="test", feature_space="classifier:x:w0123456789ab",
                metric=metric, group=group, **{"class": cls}, n_gen=n_gen, n_ref=n_ref, value=value, note=note,
                point="main")


def current_rows(method="ddpm", seed=0, sampler="ddim"):
    """Rows the way today's code writes them."""
    half = "half-sampling: 50 replicates without replacement at 5/10 (gen/ref), se=0.1, estimate +- 1.96 se"
    return [
        _row(method, "fid", seed=seed, sampler=sampler, note="backend=torch-fidelity"),
        _row(method, "fid", "few", seed=seed, sampler=sampler, note="backend=torch-fidelity;pooled"),
        _row(method, "fid_classmean", "few", seed=seed, sampler=sampler, note="mean of 3 per-class values"),
        _row(method, "fid_ci_low", seed=seed, sampler=sampler, note=half),
        _row(method, "fid_ci_low", "class", 2, value=np.nan, seed=seed, sampler=sampler, note="skipped: too few"),
        _row(method, "is", "class", 2, value=np.nan, n_gen=5, seed=seed, sampler=sampler, note="skipped: IS needs 10"),
        _row(method, "kid", "class", 2, n_gen=8, n_ref=8, seed=seed, sampler=sampler,
             note="kid_subset=8;kid_subsets=1 (degenerate subsets: each is the whole set, no std)"),
        _row(method, "kid", seed=seed, sampler=sampler, note="kid_subset=10;kid_subsets=100;std=0.01"),
        _row(method, "fid_at_floor_n", seed=seed, sampler=sampler, note="at the real floor n_per_class=10"),
        _row(method, "vendi", seed=seed, sampler=sampler, note="kernel=cosine"),
        _row(method, "vendi_inlier", seed=seed, sampler=sampler, note="kernel=cosine;gate=k-NN manifold"),
        _row(method, "memorization", seed=seed, sampler=sampler, value=0.0,
             note="rule=d1/d2<0.333;space=pixel;within class;n_ref=distinct training images (duplicates ... merged)"),
    ]


def frame(rows):
    return pd.DataFrame(rows)[RESULT_COLUMNS].assign(note=lambda f: f["note"].fillna(""))


def test_todays_rows_are_not_stale():
    table = frame(current_rows() + current_rows("real") + current_rows("mine", sampler="external"))
    assert stale_rows(table).empty


def test_each_old_definition_is_found_and_named():
    old = [
        _row(metric="fid_ci_low", note="bootstrap B=50"),  # resampled with replacement
        _row(metric="fid", group="few", note="backend=torch-fidelity"),  # not labelled pooled
        _row(metric="is", group="class", cls=1, n_gen=5, value=1.0, note="is_splits=10"),
        _row(metric="kid", group="class", cls=1, n_gen=8, n_ref=8, note="kid_subset=8;kid_subsets=100;std=3e-16"),
    ]
    table = frame(current_rows("real") + old + [_row(metric="kid", note="kid_subset=10;kid_subsets=100;std=0.1")])
    stale = stale_rows(table)
    assert sorted(stale.rule) == sorted(["interval-bootstrap", "group-not-pooled", "is-small-n", "kid-degenerate",
                                         "no-floor-n", "no-floor-n", "no-floor-n"])  # no floor-n: its fid and kids
    assert set(stale[stale.rule == "no-floor-n"].metric) == {"fid", "kid"}
    lines = stale_lines(stale, out="OUT")
    assert len(lines) == 5 and all("--rescore" in line for line in lines)
    assert any(line.startswith("1 row(s) of 1 cell(s) are stale (is-small-n)") for line in lines)


def test_no_floor_n_only_where_the_table_has_a_floor():
    without_floor = frame([_row(metric="fid"), _row(metric="kid", note="kid_subset=10;std=0.1")])
    assert stale_rows(without_floor).empty


def test_outside_samples_get_the_evaluate_command():
    table = frame(current_rows("real") + [_row("mine", "fid_ci_low", note="bootstrap", seed=3, sampler="external")])
    (line,) = stale_lines(stale_rows(table), out="OUT")
    # the point's own step and scale: without them --force would score another point of the name
    assert "evaluate --samples <the samples of mine> --name mine --seed 3 --out OUT --force --train-steps 10 " \
           "--guidance 1.0" in line
    assert "--rescore" not in line


def test_report_writes_the_stale_file_and_says_why(tmp_path):
    table = frame(current_rows() + current_rows("real") + [_row(metric="fid_ci_low", note="bootstrap", seed=1)])
    table.to_csv(tmp_path / "results.csv", index=False)
    said = []
    paths = make_report(tmp_path, plots=False, say=said.append)
    assert tmp_path / STALE_FILE in paths
    assert pd.read_csv(tmp_path / STALE_FILE).rule.tolist() == ["interval-bootstrap"]
    assert any("stale (interval-bootstrap)" in s for s in said)
    frame(current_rows() + current_rows("real")).to_csv(tmp_path / "results.csv", index=False)
    make_report(tmp_path, plots=False, say=said.append)
    assert not (tmp_path / STALE_FILE).exists()  # recomputed: the list goes


def test_classifier_rows_without_the_weights_digest_are_stale():
    rows = [dict(r, feature_space="classifier:abc") for r in current_rows() + current_rows("real")]
    stale = stale_rows(frame(rows))
    assert set(stale.rule) == {"classifier-unweighed"} and len(stale) == len(rows)
    fresh = [dict(r, feature_space="classifier:abc:w0123456789ab") for r in current_rows() + current_rows("real")]
    assert stale_rows(frame(fresh)).empty


def test_vendi_without_the_inlier_rows_is_stale_per_cell():
    rows = current_rows() + current_rows("real")
    old = [r for r in current_rows("cbdm") if r["metric"] != "vendi_inlier"]  # scored before vendi_inlier
    stale = stale_rows(frame(rows + old))
    assert list(stale.rule) == ["no-vendi-inlier"] and list(stale.method) == ["cbdm"] and list(stale.metric) == ["vendi"]
    other_space = [dict(r, feature_space="inception") for r in old]  # rows of another space do not vouch for it
    assert "no-vendi-inlier" in set(stale_rows(frame(rows + current_rows("cbdm") + other_space)).rule)


def test_memorisation_rows_from_before_deduplication_are_stale():
    rows = current_rows() + current_rows("real")
    old = [_row("real", "memorization_pixel", "class", 0, value=1.0, note="rule=d1/d2<0.333;n_ref=training images"),
           _row("real", "memorization", "class", 1, value=np.nan, note="skipped: no images in this slice")]
    stale = stale_rows(frame(rows + old))
    assert list(stale.rule) == ["memorization-duplicates"] and list(stale.metric) == ["memorization_pixel"]
