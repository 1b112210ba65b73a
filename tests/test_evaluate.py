"""evaluate_set / real_floor_rows / load_samples on tiny data with the classifier feature space."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from fake_eval_data import fake_dataset, make_images
from PIL import Image

from benchmark.core.config import EvalConfig
from benchmark.core.errors import DataError
from benchmark.data.imagefolder import IMAGE_EXTENSIONS, image_files, read_image
from benchmark.eval.evaluate import (
    EVAL_COLUMNS,
    evaluate_set,
    floor_split,
    load_samples,
    real_floor_rows,
)

CPU = torch.device("cpu")
CFG = EvalConfig(feature_space="classifier", classifier_epochs=6, kid_subsets=5, batch_size=64)


@pytest.fixture(scope="module")
def ds():
    return fake_dataset(num_classes=4)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def gen_set(ds, per_class=15, seed=9):
    labels = np.repeat(np.arange(ds.num_classes), per_class)
    return make_images(labels, resolution=ds.resolution, channels=ds.channels, seed=seed), torch.from_numpy(labels)


def test_evaluate_set_rows(ds, cache):
    images, labels = gen_set(ds)
    frame = evaluate_set(images, labels, dataset=ds, cfg=CFG, cache_dir=cache, device=CPU, downstream=False,
                         progress=False)
    assert list(frame.columns) == EVAL_COLUMNS
    metrics = {"fid", "kid", "precision", "recall", "density", "coverage", "label_acc", "evaluator_acc",
               "evaluator_balanced_acc"}
    diversity = {"vendi", "vendi_real", "vendi_ratio", "vendi_inlier", "vendi_inlier_real", "vendi_inlier_ratio",
                 "memorization", "memorization_pixel"}
    classmean = {m + "_classmean" for m in metrics - {"evaluator_acc", "evaluator_balanced_acc"}}
    assert set(frame.metric) == metrics | classmean | diversity
    gate = frame[frame.metric == "evaluator_balanced_acc"].iloc[0]
    assert gate.value > 0.9 and "trusted=yes" in gate.note and not frame.note.str.contains("untrusted").any()
    acc = frame[frame.metric == "evaluator_acc"]
    assert set(acc.group) == {"all", "many", "medium", "few", "class"} and acc[acc.group == "all"].n_ref.item() == 120
    fid = frame[frame.metric == "fid"]
    assert set(fid.group) == {"all", "many", "medium", "few", "class"}
    assert fid[fid.group == "all"].n_gen.item() == 60 and fid[fid.group == "all"].n_ref.item() == 120
    assert all("reference=test" in n for n in fid.note)
    assert frame.feature_space.iloc[0].startswith("classifier:")
    assert frame[(frame.metric == "label_acc") & (frame.group == "all")].value.item() > 0.5
    again = evaluate_set(images, labels, dataset=ds, cfg=CFG, cache_dir=cache, device=CPU, downstream=False,
                         progress=False)
    assert again.equals(frame)  # features and evaluator come from the cache
    assert len(list((cache / "features").glob("*.npz"))) == 3  # generated, reference, training images
    for metric in ("vendi_ratio", "vendi_inlier_ratio", "memorization", "memorization_pixel"):
        assert set(frame[frame.metric == metric].group) == {"all", "many", "medium", "few", "class"}
    assert (frame[frame.metric == "memorization_pixel"].feature_space == "pixel").all()
    mem = frame[(frame.metric == "memorization") & (frame.group == "class")]
    assert mem.n_ref.tolist() == ds.counts.tolist()  # n_ref: the class's training images
    ratio = frame[(frame.metric == "vendi_ratio") & (frame.group == "class")]
    assert (ratio.n_gen == 15).all() and (ratio.n_ref == 15).all()
    inlier = frame[(frame.metric == "vendi_inlier_ratio") & (frame.group == "class")]
    assert (inlier.n_gen == inlier.n_ref).all() and (inlier.n_gen == 15).all()  # min(15 generated, half of 30)
    assert inlier.value.notna().all() and inlier.note.str.contains("k=3").all()


def test_planted_copies_show_in_memorization_and_neighbour_sheet(ds, cache, tmp_path):
    images, labels = gen_set(ds, per_class=10, seed=11)
    few = ds.group_classes("few")[0]
    train_idx = np.flatnonzero(ds.train_labels.numpy() == few)
    rows = np.flatnonzero(labels.numpy() == few)[:5]  # half of the few-shot class: exact training copies
    images[rows] = ds.train_images[train_idx[np.arange(5) % len(train_idx)]]
    frame = evaluate_set(images, labels, dataset=ds, cfg=CFG, cache_dir=cache, device=CPU, downstream=False,
                         progress=False, neighbours_path=tmp_path / "neighbours.npz")
    for metric in ("memorization", "memorization_pixel"):
        sel = frame[frame.metric == metric]
        assert sel[(sel.group == "class") & (sel["class"] == few)].value.item() >= 0.5
        assert sel[(sel.group == "class") & (sel["class"] != few)].value.max() < 0.2
    floor = real_floor_rows(ds, CFG, 10, cache_dir=cache, device=CPU, progress=False)
    assert floor[(floor.metric == "memorization_pixel") & (floor.group == "all")].value.item() < 0.1
    with np.load(tmp_path / "neighbours.npz") as z:
        assert z["classes"].tolist() == ds.group_classes("few")
        assert z["ratio"][0, 0] < 1e-6 and np.array_equal(z["gen"][0, 0], z["train"][0, 0, 0])  # copy first
        assert z["found"][0].sum() == 6 and np.all(np.diff(z["ratio"][0]) >= 0)


def test_diversity_off_keeps_the_old_rows(ds, cache):
    images, labels = gen_set(ds)
    frame = evaluate_set(images, labels, dataset=ds, cfg=replace(CFG, diversity=False), cache_dir=cache, device=CPU,
                         downstream=False, progress=False)
    assert not {"vendi", "memorization"} & set(frame.metric)


def test_evaluate_set_with_downstream_and_bad_input(ds, cache):
    images, labels = gen_set(ds, per_class=8)
    frame = evaluate_set(images, labels, dataset=ds, cfg=CFG, cache_dir=cache, device=CPU, downstream=True,
                         progress=False)
    assert {"cas_acc", "aug_acc"} <= set(frame.metric)
    assert "real_acc" not in set(frame.metric)  # the real-LT baseline lives in the grid's own real cell
    assert (frame[frame.metric == "cas_acc"].feature_space == "none").all()
    with pytest.raises(DataError, match="uint8"):
        evaluate_set(images.float(), labels, dataset=ds, cfg=CFG, cache_dir=cache, device=CPU, progress=False)
    with pytest.raises(DataError, match="labels must lie"):
        evaluate_set(images, labels + 4, dataset=ds, cfg=CFG, cache_dir=cache, device=CPU, progress=False)


def test_tiny_class_never_scores_zero(ds, cache):
    labels = np.array([0] * 10 + [1] * 10 + [2] * 10 + [3])  # one image for the last class
    images = make_images(labels, resolution=ds.resolution, seed=3)
    frame = evaluate_set(images, torch.from_numpy(labels), dataset=ds, cfg=CFG, cache_dir=cache, device=CPU,
                         downstream=False, progress=False)
    last = frame[(frame.group == "class") & (frame["class"] == 3)]
    for metric in ("fid", "kid", "precision", "recall"):
        row = last[last.metric == metric].iloc[0]
        assert math.isnan(row.value) and row.note.startswith("skipped:") and row.n_gen == 1


def test_real_floor_is_cached_and_held_out(ds, cache):
    held, rest, capped = floor_split(ds.source.test.labels.numpy(), 10, seed=0)
    assert len(set(held) & set(rest)) == 0 and len(held) == 40 and capped == 0
    frame = real_floor_rows(ds, CFG, 10, cache_dir=cache, device=CPU, progress=False)
    assert list(frame.columns) == EVAL_COLUMNS
    row = frame[(frame.metric == "fid") & (frame.group == "all")].iloc[0]
    assert row.n_gen == 40 and row.n_ref == 80 and "real_floor" in row.note
    again = real_floor_rows(ds, CFG, 10, cache_dir=cache, device=CPU, progress=False)
    assert np.allclose(again.value.to_numpy(float), frame.value.to_numpy(float), equal_nan=True)
    assert again["class"].tolist() == frame["class"].tolist()


def test_load_samples_npz_and_folders(tmp_path):
    labels = np.array([0, 1, 1])
    nchw = np.random.default_rng(0).integers(0, 256, (3, 3, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "a.npz", images=nchw, labels=labels)
    np.savez(tmp_path / "b.npz", images=nchw.transpose(0, 2, 3, 1), labels=labels)
    for name in ("a.npz", "b.npz"):
        images, lab = load_samples(tmp_path / name)
        assert torch.equal(images, torch.from_numpy(nchw)) and lab.tolist() == [0, 1, 1]
    for c in (0, 1):
        (tmp_path / "dir" / str(c)).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 10 * c, np.uint8)).save(tmp_path / "dir" / str(c) / "x.png")
    images, lab = load_samples(tmp_path / "dir")
    assert images.shape == (2, 1, 8, 8) and lab.tolist() == [0, 1] and images[1].max() == 10
    np.savez(tmp_path / "f.npz", images=nchw.astype(np.float32), labels=labels)
    with pytest.raises(DataError, match="uint8"):
        load_samples(tmp_path / "f.npz")
    np.savez(tmp_path / "n.npz", x=nchw)
    with pytest.raises(DataError, match="labels"):
        load_samples(tmp_path / "n.npz")
    with pytest.raises(DataError, match="does not exist"):
        load_samples(tmp_path / "missing")
    (tmp_path / "dir" / "cat").mkdir()
    with pytest.raises(DataError, match="class index"):
        load_samples(tmp_path / "dir")


def test_sample_folders_are_read_like_dataset_folders(tmp_path):
    """One reader for both: every extension the dataset reader takes, hidden files skipped, and a colour
    set keeps its exactly-grey images in colour."""
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    for c, ext in ((0, ".tif"), (1, ".gif")):
        (tmp_path / str(c)).mkdir()
        Image.fromarray(colour if c == 0 else np.full((8, 8, 3), 7, np.uint8)).save(tmp_path / str(c) / f"x{ext}")
        Image.fromarray(colour).save(tmp_path / str(c) / ".hidden.png")
    assert {".tif", ".gif"} <= set(IMAGE_EXTENSIONS)
    images, labels = load_samples(tmp_path)
    assert images.shape == (2, 3, 8, 8) and labels.tolist() == [0, 1]
    assert torch.equal(images[0], torch.from_numpy(read_image(image_files(tmp_path / "0")[0])).permute(2, 0, 1))
    assert images[1].unique().tolist() == [7]  # grey, expanded to the set's 3 channels
