"""Downstream accuracy: CAS, augmentation and the real-LT baseline run end to end on tiny data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_eval_data import fake_dataset, make_images

from benchmark.eval import downstream
from benchmark.eval.classifier import ResNet32, SmallCNN, arch_for, balanced_pool

CPU = torch.device("cpu")


def generated(ds, per_class=20, seed=5):
    labels = np.repeat(np.arange(ds.num_classes), per_class)
    return make_images(labels, resolution=ds.resolution, channels=ds.channels, seed=seed), torch.from_numpy(labels)


def test_fill_to_head_takes_the_gap_per_class():
    labels = np.array([0, 1, 1, 2, 2, 2, 2])
    idx, need = downstream.fill_to_head(labels, np.array([4, 2, 1]))
    assert need.tolist() == [0, 2, 3]
    assert labels[idx].tolist() == [1, 1, 2, 2, 2]


def test_cas_aug_real_rows_end_to_end(tmp_path):
    ds = fake_dataset(num_classes=3)
    images, labels = generated(ds)
    frame = downstream.downstream_rows(images, labels, dataset=ds, epochs=2, seed=0, device=CPU, cache_dir=tmp_path)
    assert set(frame.metric) == {"cas_acc", "aug_acc", "real_acc"}
    for metric in ("cas_acc", "aug_acc", "real_acc"):
        rows = frame[frame.metric == metric]
        assert set(rows.group) == {"all", "many", "medium", "few", "class"}
        assert rows[rows.group == "class"]["class"].tolist() == [0, 1, 2]
        assert rows.value.between(0, 1).all() and (rows.n_ref > 0).all()
    cas_all = frame[(frame.metric == "cas_acc") & (frame.group == "all")].iloc[0]
    assert cas_all.n_gen == 60 and cas_all.n_ref == 90 and "recipe=smallcnn" in cas_all.note
    aug = frame[(frame.metric == "aug_acc") & (frame.group == "class")]
    need = ds.counts.max() - ds.counts
    assert aug.n_gen.tolist() == np.minimum(need, 20).tolist()
    assert "underfilled_classes" in frame[frame.metric == "aug_acc"].note.iloc[0]  # tail gap > 20 generated
    cached = downstream.real_rows(dataset=ds, epochs=2, seed=0, device=CPU, cache_dir=tmp_path)
    assert [r["value"] for r in cached] == frame[frame.metric == "real_acc"].value.tolist()


def test_training_is_seeded_and_learns():
    ds = fake_dataset(num_classes=4)
    images, labels = generated(ds, per_class=40)
    a = downstream.cas_rows(images, labels, dataset=ds, epochs=10, seed=1, device=CPU)
    b = downstream.cas_rows(images, labels, dataset=ds, epochs=10, seed=1, device=CPU)
    assert [r["value"] for r in a] == [r["value"] for r in b]
    assert a[0]["value"] > 0.6


def test_recipes_by_dataset_size():
    assert arch_for(channels=1, resolution=28) == "smallcnn"
    assert arch_for(channels=3, resolution=32) == "resnet32"
    net = ResNet32(channels=3, num_classes=10)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(0.47e6, rel=0.05)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert SmallCNN(channels=1, num_classes=10).features(torch.zeros(2, 1, 28, 28)).shape == (2, 128)


def test_balanced_pool_cuts_to_smallest_class():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 4)
    idx = balanced_pool(labels, seed=0)
    assert np.bincount(labels[idx]).tolist() == [3, 3, 3]
    assert len(balanced_pool(np.repeat(np.arange(3), 4), seed=0)) == 12


def test_a_failing_downstream_classifier_is_a_nan_row_and_the_others_are_kept(tmp_path, monkeypatch):
    ds = fake_dataset(num_classes=3)
    images, labels = generated(ds)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory while training")

    monkeypatch.setattr(downstream, "aug_rows", broken)
    frame = downstream.downstream_rows(images, labels, dataset=ds, epochs=1, seed=0, device=CPU, cache_dir=tmp_path)
    aug = frame[frame.metric == "aug_acc"]
    assert set(aug.group) == {"all", "many", "medium", "few", "class"} and aug.value.isna().all()
    assert (aug.note == "skipped: failed with RuntimeError: out of memory while training").all()
    assert frame[frame.metric == "cas_acc"].value.between(0, 1).all()  # the other accuracies are kept
    assert frame[frame.metric == "real_acc"].value.notna().all()
