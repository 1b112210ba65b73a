"""The reference of folders without a split: fallback classes, the per-slice minimum n, the recorded protocol."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from fake_eval_data import fake_dataset, make_images

from benchmark.core.config import EvalConfig
from benchmark.eval.evaluate import enforce_min_ref, evaluate_set, reference_label, reference_set

CPU = torch.device("cpu")
CFG = EvalConfig(feature_space="classifier", classifier_epochs=2, kid_subsets=5, batch_size=64, downstream=False)


@pytest.fixture(scope="module")
def held_out():
    """4 classes, 30 held out each; class 3 is a fallback class of a holdout protocol."""
    ds = fake_dataset(num_classes=4)
    source = dataclasses.replace(ds.source, reference_protocol="holdout-0.2-min40", fallback_classes=(3,),
                                 source_id="fake-holdout")
    return dataclasses.replace(ds, source=source)


def test_min_ref_makes_small_slices_nan_with_the_reason():
    rows = pd.DataFrame({"metric": ["fid", "kid", "precision", "fid"], "group": "class", "class": [0, 0, 0, 1],
                         "n_gen": 50, "n_ref": [5, 5, 5, 25], "value": [1.0, 2.0, 0.5, 3.0], "note": ""})
    out = enforce_min_ref(rows, min_ref=20)
    assert math.isnan(out.value[0]) and math.isnan(out.value[1])
    assert "needs at least 20 reference images" in out.note[0] and "n_ref=5" in out.note[0]
    assert out.value[2] == 0.5 and out.value[3] == 3.0 and out.note[3] == ""  # precision's own rule is k+1
    assert rows.value[0] == 1.0  # the input is not modified


def test_fallback_class_is_scored_against_all_its_images_and_flagged(held_out, tmp_path):
    images, labels = reference_set(held_out, "test")
    assert torch.bincount(labels).tolist() == [30, 30, 30, 90]  # class 3: 30 held out + its 60 pool images
    assert reference_set(held_out, "train-balanced")[1].shape[0] == 240  # other references are unchanged
    assert reference_label("test", held_out) == "test:holdout-0.2-min40"
    assert reference_label("test", fake_dataset(num_classes=4)) == "test"  # a dataset's own test split

    gen_labels = np.repeat(np.arange(4), 12)
    gen = make_images(gen_labels, resolution=12, seed=5)
    cfg = dataclasses.replace(CFG, min_ref_fid=40)
    frame = evaluate_set(gen, torch.from_numpy(gen_labels), dataset=held_out, cfg=cfg, cache_dir=tmp_path,
                         device=CPU, downstream=False, progress=False)
    cls = frame[frame.group == "class"]
    fid = cls[cls.metric == "fid"].set_index("class")
    assert [int(n) for n in fid.n_ref] == [30, 30, 30, 90]
    assert fid.value[:3].isna().all() and all("eval.min_ref_fid" in n for n in fid.note[:3])
    assert np.isfinite(fid.value[3]) and "reference=train-fallback" in fid.note[3]
    prec = cls[cls.metric == "precision"]
    assert np.isfinite(prec.value).all()  # 30 reference images are plenty for k + 1 = 4
    flagged = frame[frame.note.str.contains("train-fallback")]
    assert set(flagged.group) == {"all", "few", "class"} and set(flagged["class"].dropna()) == {3}
    assert not frame[(frame.group == "class") & (frame["class"] < 3)].note.str.contains("fallback").any()


def test_data_command_shows_the_evaluation_split(tmp_path, capsys):
    from test_data_imagefolder import make_folder

    from benchmark.cli import main

    root = make_folder(tmp_path / "lt", {"a": 150, "b": 60, "c": 20, "d": 6}, size=(2, 2))
    assert main(["data", "--dataset", f"imagefolder:{root}", "--profile", "none"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["class", "name", "count", "group", "reference", "ref_from", "eval_train", "eval_val",
                      "eval_test"]
    rows = [line.split() for line in out.splitlines()[1:5]]
    assert rows[0][2:] == ["120", "many", "30", "held-out", "108", "12", "30"]
    assert rows[3][2:] == ["5", "few", "6", "train-fallback", "4", "1", "1"]  # 1 held out + 5 in the pool
    assert "reference test:holdout-0.2-min20" in out
    assert "FID / KID: 3 of 4 classes (n_ref >= 20, eval.min_ref_fid); NaN for 3 d (6)" in out
    assert "precision / recall (k=3): 4 of 4 classes" in out and "density / coverage (k=5): 4 of 4" in out
    assert main(["data", "--dataset", f"imagefolder:{root}", "--profile", "none", "--reference-protocol",
                 "holdout-only", "--set", "eval.pr_k=5", "--format", "csv"]) == 0
    csv = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert csv.reference.tolist() == [30, 12, 4, 1] and set(csv.ref_from) == {"held-out"}
