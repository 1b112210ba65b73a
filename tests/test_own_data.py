"""The own-data scenario of the README: 6 Fashion-MNIST classes of 300..10 images in a folder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from fashion_folder import available, make_fashion_folder

from benchmark.core.config import DataConfig, EvalConfig
from benchmark.core.errors import ConfigError
from benchmark.data import build_dataset
from benchmark.eval import features
from benchmark.eval.features import get_feature_space
from benchmark.eval.outlook import evaluator_outlook, gate_bar

pytestmark = pytest.mark.skipif(not available(), reason="needs the Fashion-MNIST IDX files")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_fashion_folder(tmp_path_factory.mktemp("own") / "my_data")


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("LTGEN_INCEPTION_WEIGHTS", raising=False)


def test_auto_falls_back_to_the_classifier_offline_and_says_so_before_training(folder, no_hub):
    ds = build_dataset(DataConfig(dataset=f"imagefolder:{folder}", profile="none", resolution=16))
    cfg = EvalConfig(feature_space="auto")
    assert features.resolve_feature_space_name("auto", ds, cfg) == "classifier"
    note, outlook = evaluator_outlook(ds, cfg)
    assert "Inception weights are absent" in note and "falls back to the classifier" in note
    assert "--inception-weights" in note
    assert "trains on 432 images (7..216 per class" in outlook and "tested on 120 held-out images" in outlook
    assert "Expected reliability: low" in outlook and ">= 0.333 (2 x chance)" in outlook
    with pytest.raises(ConfigError, match="weights-inception.*With the classifier here: classifier evaluator"):
        evaluator_outlook(ds, dataclasses.replace(cfg, feature_space="inception"))
    size, significance = gate_bar(np.bincount(ds.source.test.labels.numpy()))
    assert size == pytest.approx(1 / 3) and 1 / 6 < significance < size


def test_the_folder_gets_a_trusted_evaluator_and_enough_reference_images(folder, tmp_path):
    """The issue's folder: either an evaluator clearly above chance, or no ranking; here it is the first."""
    ds = build_dataset(DataConfig(dataset=f"imagefolder:{folder}", profile="none", resolution=16))
    space = get_feature_space("classifier", dataset=ds, cfg=EvalConfig(classifier_epochs=8), cache_dir=tmp_path,
                              device=CPU)
    trust = space.info["trust"]
    assert trust["n_test"] == 120 and trust["trusted"], trust
    assert trust["balanced_acc"] > 0.5 and trust["p_value"] < 0.01
    assert space.info["epochs"] <= 8 and space.info["n_train"] == 432


def test_a_chance_level_run_finishes_and_ranks_nothing(tmp_path, capsys):
    """Noise images: no evaluator can tell the classes apart.  The grid still finishes and writes its rows;
    every classifier row is flagged, the leaderboard bolds nothing and says why, the console says what helps."""
    from test_data_imagefolder import make_folder

    from benchmark.cli import main
    from benchmark.harness.results import read_results

    root = make_folder(tmp_path / "noise", {"a": 60, "b": 40, "c": 25, "d": 10}, size=(8, 8))
    out = tmp_path / "out"
    args = ["run", "--preset", "imagefolder", "--dataset", f"imagefolder:{root}", "--methods", "ddpm,cbdm",
            "--out", str(out), "--no-progress", "--device", "cpu"]
    for pair in ("data.resolution=8", "model.ch=16", "model.ch_mult=1,2", "model.attn_resolutions=4",
                 "train.steps=2", "train.batch_size=16", "train.warmup=1", "train.ckpt_every=2", "train.log_every=1",
                 "sample.steps=2", "sample.n_per_class=8", "eval.classifier_epochs=2", "eval.downstream=false",
                 "eval.kid_subsets=5", "eval.feature_space=classifier"):
        args += ["--set", pair]
    assert main(args) == 0
    console = capsys.readouterr()
    assert "failed the trust gate" in console.err and "WARNING: leaderboard" in console.out
    table = read_results(out)
    assert set(table.method) == {"ddpm", "cbdm", "real"}
    assert (table.reference == "test:holdout-0.2-min20").all()  # the reference protocol, in every row
    scored = table[table.feature_space.str.startswith("classifier:") & (table.metric != "train_count")]
    assert len(scored) and scored.note.str.contains("untrusted-evaluator").all()
    md = (out / "leaderboard.md").read_text()
    body = md.split("## ", 1)[1]
    assert "No ranking" in body and "**" not in body and "~*" not in body
