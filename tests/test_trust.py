"""The evaluator's trust gate: planted chance-level and good evaluators, flagged rows, no ranking."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from fake_eval_data import fake_dataset, make_images

from benchmark.core.config import EvalConfig
from benchmark.eval.evaluate import evaluate_set
from benchmark.eval.features import get_feature_space
from benchmark.eval.trust import UNTRUSTED_NOTE, evaluator_trust
from benchmark.harness.results import RESULT_COLUMNS, append_cell, read_results
from benchmark.report.build import make_report
from benchmark.report.leaderboard import leaderboards

CPU = torch.device("cpu")
CFG = EvalConfig(feature_space="classifier", classifier_epochs=2, kid_subsets=5, batch_size=64, downstream=False)


def test_gate_rule_on_planted_predictions():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), [60, 30, 16, 8, 4, 2])  # the folder, a fifth held out
    guess = evaluator_trust(y, rng.integers(0, 6, len(y)), num_classes=6)
    assert not guess.trusted and "not significantly above chance" in guess.reason
    head = evaluator_trust(y, np.zeros(len(y), dtype=int), num_classes=6)  # plain accuracy 0.5, balanced 1/6
    assert not head.trusted and head.balanced_acc == pytest.approx(1 / 6) and head.p_value == 1.0
    good = evaluator_trust(y, np.where(rng.random(len(y)) < 0.7, y, rng.integers(0, 6, len(y))), num_classes=6)
    assert good.trusted and good.balanced_acc > 0.5 and good.p_value < 0.01 and good.reason == "passed"
    # significant at a large n but only a little better than guessing: the size rule refuses it
    big = np.repeat(np.arange(6), 1000)
    weak = evaluator_trust(big, np.where(rng.random(len(big)) < 0.08, big, rng.integers(0, 6, len(big))), num_classes=6)
    assert weak.p_value < 0.01 and not weak.trusted and "below 0.333" in weak.reason
    two = evaluator_trust(np.repeat([0, 1], 50), np.repeat([0, 1], 50), num_classes=2)
    assert two.threshold == 0.75 and two.trusted  # min(2 x chance, (1 + chance) / 2) stays below 1
    # under the null (predictions independent of the labels) the p-value is uniform: about 5% below 0.05
    ps = [evaluator_trust(np.repeat(np.arange(3), 10), rng.integers(0, 3, 30), num_classes=3, permutations=200,
                          seed=s).p_value for s in range(200)]
    assert 0.01 <= np.mean(np.array(ps) < 0.05) <= 0.1


@pytest.fixture(scope="module")
def shuffled():
    """The fake dataset with its train labels shuffled: an evaluator trained on it learns nothing."""
    ds = fake_dataset(num_classes=4)
    labels = ds.source.train.labels[torch.from_numpy(np.random.RandomState(1).permutation(len(ds.source.train)))]
    train = dataclasses.replace(ds.source.train, labels=labels)
    return dataclasses.replace(ds, source=dataclasses.replace(ds.source, train=train, source_id="fake-shuffled"))


def test_chance_level_evaluator_fails_and_flags_every_row(shuffled, tmp_path, capsys):
    space = get_feature_space("classifier", dataset=shuffled, cfg=CFG, cache_dir=tmp_path, device=CPU)
    trust = space.info["trust"]
    assert not trust["trusted"] and trust["balanced_acc"] < 0.5 and space.info["epochs"] >= 1
    labels = np.repeat(np.arange(4), 10)
    frame = evaluate_set(make_images(labels, seed=4), torch.from_numpy(labels), dataset=shuffled, cfg=CFG,
                         cache_dir=tmp_path, device=CPU, downstream=False, progress=False)
    # pixel-space memorisation uses no evaluator, so its rows stay unflagged
    assert frame[frame.feature_space != "pixel"].note.str.contains(UNTRUSTED_NOTE).all()
    gate = frame[frame.metric == "evaluator_balanced_acc"].iloc[0]
    assert "trusted=no" in gate.note and gate.n_ref == 120
    err = capsys.readouterr().err
    assert "failed the trust gate" in err and "more images" in err and "leaderboard ranks nothing" in err


def test_good_evaluator_passes(tmp_path):
    ds = fake_dataset(num_classes=4)
    space = get_feature_space("classifier", dataset=ds, cfg=CFG, cache_dir=tmp_path, device=CPU)
    assert space.info["trust"]["trusted"] and space.info["trust"]["balanced_acc"] > 0.9
    assert space.info["n_train"] + space.info["n_val"] == 240  # every pool image, none capped away
    assert space.info["train_per_class"] == [54, 54, 54, 54] and space.info["stop"]


def _cell(method, seed, fid, *, untrusted, space="classifier:abc"):
    note = UNTRUSTED_NOTE if untrusted else ""
    base = dict(dataset="imagefolder-my_data", profile="none", imbalance=1.0, split_fingerprint="f", method=method,
                seed=seed, train_steps=10, protocol="p", sampler="ddim", sampler_steps=10, guidance=1.0,
                train_precision="fp32", sample_precision="fp32", point="main",
                reference="test:holdout-0.2-min20", feature_space=space, n_gen=50, n_ref=60)
    rows = [{**base, "metric": "fid", "group": g, "class": np.nan, "value": fid, "note": note}
            for g in ("all", "many", "few")]
    rows.append({**base, "metric": "evaluator_balanced_acc", "group": "all", "class": np.nan, "value": 0.17,
                 "n_gen": 0, "n_ref": 120,
                 "note": f"trusted={'no' if untrusted else 'yes'};chance=0.1667;threshold=0.3333;p=0.43" +
                         (f";{UNTRUSTED_NOTE}" if untrusted else "")})
    return pd.DataFrame(rows)[RESULT_COLUMNS]


def test_leaderboard_ranks_nothing_from_an_untrusted_evaluator_and_says_why(tmp_path, capsys):
    path = tmp_path / "results.csv"
    for method, fid in (("ddpm", 0.04), ("cbdm", 0.03)):
        append_cell(path, pd.concat([_cell(method, 0, fid, untrusted=True),
                                     _cell(method, 0, 10 * fid, untrusted=False, space="inception:xyz")]))
    boards = {key["feature_space"]: (display, marks) for key, display, marks in leaderboards(read_results(path))}
    display, marks = boards["classifier:abc"]
    assert marks.eq("").all().all() and "failed the trust gate" in display.attrs["no_ranking"]
    assert "0.170 on 120" in display.attrs["no_ranking"]
    good_display, good_marks = boards["inception:xyz"]
    assert good_marks.loc["cbdm", "FID"] == "best" and not good_display.attrs.get("no_ranking")
    make_report(tmp_path, plots=False)
    md = (tmp_path / "leaderboard.md").read_text()
    untrusted_part = md.split("features classifier:abc")[1].split("## ")[0]
    assert "No ranking" in untrusted_part and "**" not in untrusted_part
    assert "Inception or DINOv2" in untrusted_part and "reference folder" in untrusted_part
    assert "No ranking:" not in md.split("features inception:xyz")[1]
    assert "WARNING: leaderboard" in capsys.readouterr().out
    flat = pd.read_csv(tmp_path / "leaderboard.csv")
    assert set(flat[flat.feature_space == "classifier:abc"].ranking) == {"none: untrusted evaluator"}
