"""Long-tail rules on plain label arrays: LDAM totals, index identity, groups, fingerprints."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.core.errors import DataError
from benchmark.data import (
    assign_groups,
    class_counts,
    read_counts_file,
    select_longtail,
    smallest_valid_imbalance,
    split_fingerprint,
)

CIFAR10_TOTALS = {10: 20431, 50: 13996, 100: 12406, 200: 11203}
CIFAR100_TOTALS = {10: 19573, 50: 12608, 100: 10847, 200: 9502}


# ---- a direct transcription of LDAM's IMBALANCECIFAR10 (Cao et al. 2019), global RNG and all


def ldam_counts(cls_num, img_max, imb_type, imb_factor):
    img_num_per_cls = []
    if imb_type == "exp":
        for cls_idx in range(cls_num):
            num = img_max * (imb_factor ** (cls_idx / (cls_num - 1.0)))
            img_num_per_cls.append(int(num))
    elif imb_type == "step":
        for _ in range(cls_num // 2):
            img_num_per_cls.append(int(img_max))
        for _ in range(cls_num // 2):
            img_num_per_cls.append(int(img_max * imb_factor))
    return img_num_per_cls


def ldam_select(targets, img_num_per_cls, rand_number):
    saved = np.random.get_state()
    try:
        np.random.seed(rand_number)
        targets_np = np.array(targets, dtype=np.int64)
        classes = np.unique(targets_np)
        chosen = []
        for the_class, the_img_num in zip(classes, img_num_per_cls):
            idx = np.where(targets_np == the_class)[0]
            np.random.shuffle(idx)
            chosen.append(idx[:the_img_num])
        return np.concatenate(chosen)
    finally:
        np.random.set_state(saved)


def cifar_layout(num_classes: int, per_class: int, shuffled: bool) -> np.ndarray:
    labels = np.repeat(np.arange(num_classes), per_class)
    if shuffled:  # a fixed permutation stands in for CIFAR's batch order
        labels = labels[np.random.RandomState(1234).permutation(len(labels))]
    return labels


@pytest.mark.parametrize("ratio", [10, 50, 100, 200])
def test_cifar_lt_totals(ratio):
    for num_classes, n_max, totals in ((10, 5000, CIFAR10_TOTALS), (100, 500, CIFAR100_TOTALS)):
        counts = class_counts("exp", n_max=n_max, num_classes=num_classes, imbalance=1 / ratio)
        assert counts.sum() == totals[ratio]
        labels = cifar_layout(num_classes, n_max, shuffled=True)
        idx = select_longtail(labels, counts, seed=0)
        assert len(idx) == totals[ratio]
        assert np.array_equal(np.bincount(labels[idx], minlength=num_classes), counts)


def test_cifar10_ir100_per_class():
    counts = class_counts("exp", n_max=5000, num_classes=10, imbalance=0.01)
    assert counts.tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert counts.dtype == np.int64


@pytest.mark.parametrize("profile", ["exp", "step"])
@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize("seed", [0, 7])
def test_index_identity_with_ldam(profile, shuffled, seed):
    for num_classes, n_max in ((10, 5000), (100, 500)):
        labels = cifar_layout(num_classes, n_max, shuffled)
        for rho in (0.01, 0.1):
            counts = class_counts(profile, n_max=n_max, num_classes=num_classes, imbalance=rho)
            assert counts.tolist() == ldam_counts(num_classes, n_max, profile, rho)
            ours = select_longtail(labels, counts, seed=seed)
            assert ours.dtype == np.int64
            assert np.array_equal(ours, ldam_select(labels, counts, seed))


def test_select_does_not_touch_global_rng():
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    select_longtail(cifar_layout(10, 50, True), [50] * 10, seed=0)
    assert np.array_equal(np.random.get_state()[1], before)


def test_step_profile():
    counts = class_counts("step", n_max=5000, num_classes=10, imbalance=0.01)
    assert counts.tolist() == [5000] * 5 + [50] * 5
    odd = class_counts("step", n_max=100, num_classes=5, imbalance=0.1)
    assert odd.tolist() == [100, 100, 10, 10, 10]  # every class gets a count (LDAM drops the odd one)


def test_imbalance_one_is_balanced():
    assert class_counts("exp", n_max=30, num_classes=4, imbalance=1.0).tolist() == [30] * 4


def test_groups_cifar100_lt_ir100():
    counts = class_counts("exp", n_max=500, num_classes=100, imbalance=0.01)
    groups = assign_groups(counts, rule="thresholds")
    assert groups == ["many"] * 35 + ["medium"] * 35 + ["few"] * 30


def test_groups_thirds_and_empty_groups():
    counts = class_counts("exp", n_max=5000, num_classes=10, imbalance=0.01)
    assert assign_groups(counts, rule="thirds") == ["many"] * 3 + ["medium"] * 3 + ["few"] * 4
    # thresholds on CIFAR-10-LT: no class below 20 -> 'few' is empty, and stays a valid answer
    groups = assign_groups(counts, rule="thresholds")
    assert "few" not in groups and groups.count("many") == 8
    # thirds rank by count, so an unordered folder still puts its biggest classes in 'many'
    assert assign_groups([5, 50, 500], rule="thirds") == ["few", "medium", "many"]
    with pytest.raises(DataError, match="valid rules"):
        assign_groups(counts, rule="quartiles")


def test_fingerprint_stable_and_sensitive():
    labels = cifar_layout(10, 5000, shuffled=False)
    counts = class_counts("exp", n_max=5000, num_classes=10, imbalance=0.01)
    idx = select_longtail(labels, counts, seed=0)
    fp = split_fingerprint("cifar10:abc:32px:none", idx)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fp == split_fingerprint("cifar10:abc:32px:none", select_longtail(labels, counts, seed=0))
    assert fp == split_fingerprint("cifar10:abc:32px:none", idx.astype(np.int32))  # dtype-independent
    assert fp == "9a035dae77d6c533"  # pinned: a change here silently splits old and new tables
    others = {
        split_fingerprint("cifar10:abd:32px:none", idx),
        split_fingerprint("cifar10:abc:32px:none", select_longtail(labels, counts, seed=1)),
        split_fingerprint("cifar10:abc:32px:none", idx[::-1]),
        split_fingerprint(
            "cifar10:abc:32px:none",
            select_longtail(labels, class_counts("exp", n_max=5000, num_classes=10, imbalance=0.02), seed=0),
        ),
    }
    assert fp not in others and len(others) == 4


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), "x"])
def test_imbalance_outside_range(bad):
    with pytest.raises(DataError, match=r"imbalance must be in \(0, 1\].*--imbalance 0.01"):
        class_counts("exp", n_max=100, num_classes=10, imbalance=bad)


def test_zero_count_names_class_and_smallest_imbalance():
    with pytest.raises(DataError) as err:
        class_counts("exp", n_max=50, num_classes=10, imbalance=0.01, class_names=list("abcdefghij"))
    message = str(err.value)
    assert "8 ('i'), 9 ('j') would get 0 images" in message and "smallest valid imbalance here is 0.02" in message
    for n_max in (50, 3000, 4999, 7):
        best = smallest_valid_imbalance("exp", n_max=n_max, num_classes=10)
        assert class_counts("exp", n_max=n_max, num_classes=10, imbalance=best).min() == 1
        assert best <= 1.01 / n_max and math.isfinite(best)


def test_select_errors():
    labels = cifar_layout(3, 10, shuffled=False)
    with pytest.raises(DataError, match="class 1 has only 10 images.*asks for 11"):
        select_longtail(labels, [10, 11, 1])
    with pytest.raises(DataError, match="one count per class"):
        select_longtail(labels, [5, 5])


def test_counts_file_forms(tmp_path):
    names = ["cat", "dog", "fox"]
    plain = tmp_path / "plain.txt"
    plain.write_text("30\n# a comment\n20\n\n10\n")
    assert read_counts_file(plain, class_names=names).tolist() == [30, 20, 10]
    csv = tmp_path / "counts.csv"
    csv.write_text("class,count\nfox,10\n0,30\ndog,20\n")
    assert read_counts_file(csv, class_names=names).tolist() == [30, 20, 10]


@pytest.mark.parametrize(
    "text,match",
    [
        ("30\n20\n", "has 2 counts but the dataset has 3 classes"),
        ("30\n20\n10\n5\n", "has 4 counts but the dataset has 3 classes"),
        ("cat,30\ndog,20\n", "lists 2 classes but the dataset has 3; missing: 2 \\('fox'\\)"),
        ("cat,30\ndog,20\nwolf,1\n", "unknown class 'wolf'"),
        ("cat,30\ncat,20\nfox,1\n", "listed twice"),
        ("30\ndog,20\n10\n", "mixes plain counts"),
        ("30\nmany\n10\n", "expected an integer count"),
        ("30\n0\n10\n", "class 1 \\('dog'\\) has count 0"),
    ],
)
def test_counts_file_errors(tmp_path, text, match):
    path = tmp_path / "counts.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        read_counts_file(path, class_names=["cat", "dog", "fox"])
    with pytest.raises(DataError, match="does not exist"):
        read_counts_file(tmp_path / "missing.txt", class_names=["a", "b"])
