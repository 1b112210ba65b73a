"""The memorisation floor's queries lie outside the training set, and duplicated training images
cannot hide a copy (exact copies in float features; near copies of an image present twice)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from fake_eval_data import fake_dataset

from benchmark.core.config import EvalConfig
from benchmark.eval.evaluate import real_floor_rows, reference_with_membership
from benchmark.eval.memorization import class_ratios, distinct, memorization_rows, nearest

CPU = torch.device("cpu")
CFG = EvalConfig(feature_space="classifier", classifier_epochs=1, kid_subsets=5, batch_size=64, downstream=False)


def _class_rates(frame, metric):
    sel = frame[(frame.metric == metric) & (frame.group == "class")]
    return dict(zip(sel["class"].astype(int), sel.value))


@pytest.mark.parametrize("reference", ["train-balanced", "test"])
def test_floor_scores_about_zero_when_the_reference_holds_the_training_images(reference, tmp_path):
    # the balanced pool contains the training subset: before the fix the floor's "held-out" images were
    # training images, and its per-class pixel memorisation was 1.0 / 0.67 / 0.27 / 0.27 here
    ds = fake_dataset(num_classes=4, counts=[40, 20, 10, 4])
    if reference == "test":  # a holdout protocol whose class 3 is a fallback class (reference: all its images)
        ds = dataclasses.replace(ds, source=dataclasses.replace(
            ds.source, reference_protocol="holdout-0.2-min40", fallback_classes=(3,), source_id="fake-fallback"))
    cfg = dataclasses.replace(CFG, reference=reference)
    _, labels, member = reference_with_membership(ds, reference)
    assert member.sum() == (ds.counts.sum() if reference == "train-balanced" else ds.counts[3])
    floor = real_floor_rows(ds, cfg, 10, cache_dir=tmp_path, device=CPU, progress=False)
    for metric in ("memorization", "memorization_pixel"):
        rates = _class_rates(floor, metric)
        assert max(rates.values()) <= 0.1, rates
        overall = floor[(floor.metric == metric) & (floor.group == "all")]
        assert overall.value.item() <= 0.05 and overall.n_gen.item() == 40


def test_floor_class_with_only_training_images_is_nan_with_the_reason(tmp_path):
    ds = fake_dataset(num_classes=4, counts=[60, 20, 10, 4])  # class 0: every pool image is a training image
    cfg = dataclasses.replace(CFG, reference="train-balanced")
    floor = real_floor_rows(ds, cfg, 10, cache_dir=tmp_path, device=CPU, progress=False)
    mem = floor[(floor.metric == "memorization_pixel")]
    head = mem[(mem.group == "class") & (mem["class"] == 0)]
    assert math.isnan(head.value.item()) and "outside the training subset" in head.note.item()
    overall = mem[mem.group == "all"]
    assert np.isfinite(overall.value.item()) and "without query images left out: [0]" in overall.note.item()
    assert np.isfinite(floor[(floor.metric == "fid") & (floor.group == "all")].value.item())  # FID floor unchanged


def _features(rng, n, d=2048):
    return (rng.gamma(1.0, 0.5, size=(n, d))).astype(np.float32)  # non-negative, like Inception pool3


def test_exact_copy_of_a_twice_present_training_image_counts_in_float_features():
    rng = np.random.default_rng(0)
    train = _features(rng, 40)
    train[1] = train[0]  # the same image twice in the class
    query = train[[0] * 5].copy()
    labels_q, labels_t = np.zeros(5, dtype=int), np.zeros(40, dtype=int)
    d, _ = nearest(query, train, 2)
    assert (d == 0).all()  # computed directly: not the ~1e-7 the expansion leaves
    kept = class_ratios(query, labels_q, train, labels_t, num_classes=1, keep=np.arange(40))[0]
    deduped = class_ratios(query, labels_q, train, labels_t, num_classes=1)[0]
    assert (kept < 1 / 3).all() and (deduped == 0).all()


def test_near_copy_of_a_twice_present_training_image_counts_after_deduplication():
    rng = np.random.default_rng(1)
    train = _features(rng, 60)
    train[1] = train[0] + rng.normal(scale=1e-3, size=train.shape[1])  # a near-exact twin (a re-encoding)
    train[2] = train[0]  # and an exact one
    spread = np.median(nearest(train[3:], train[3:], 2)[0][:, 1])
    query = train[0] + rng.normal(scale=0.05 * spread / np.sqrt(train.shape[1]), size=(40, train.shape[1]))
    labels_q, labels_t = np.zeros(40, dtype=int), np.zeros(60, dtype=int)
    ratios_dup = class_ratios(query, labels_q, train, labels_t, num_classes=1, keep=np.arange(60))[0]
    assert (ratios_dup > 1 / 3).all()  # with the twins kept the rule cannot see a single copy
    keep = distinct(train)
    assert keep.tolist() == [0] + list(range(3, 60))  # the group keeps its first image
    ratios = class_ratios(query, labels_q, train, labels_t, num_classes=1)[0]
    rows = memorization_rows(ratios, labels_q, [len(keep)], groups=["few"], metric="memorization", space="features")
    assert rows[0]["value"] == 1.0 and rows[0]["n_ref"] == 58 and "distinct training images" in rows[0]["note"]


def test_distinct_keeps_distinct_images_and_whole_duplicate_groups_merge():
    rng = np.random.default_rng(2)
    x = _features(rng, 30, d=64)
    assert distinct(x).tolist() == list(range(30))
    same = np.repeat(x[:1], 20, axis=0)  # more twins than the neighbour search keeps
    assert distinct(np.concatenate([x[1:], same])).tolist() == list(range(30))
    assert distinct(same).tolist() == [0]
    pix = np.zeros((3, 4), dtype=np.uint8)  # a class of one image three times: < 2 distinct, NaN ratios
    ratios = class_ratios(pix, np.zeros(3, dtype=int), pix, np.zeros(3, dtype=int), num_classes=1)[0]
    assert np.isnan(ratios).all()
