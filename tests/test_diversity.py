"""Vendi score and the memorisation rate against known truths on synthetic features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from vendi_score import vendi

from benchmark.core.errors import MetricError
from benchmark.eval.diversity import vendi_rows, vendi_score
from benchmark.eval.memorization import class_ratios, memorization_rows, nearest, pixels


def test_vendi_copies_orthogonal_and_order():
    rng = np.random.default_rng(0)
    one = rng.normal(size=16)
    assert vendi_score(np.tile(one, (40, 1))) == pytest.approx(1.0, abs=1e-6)
    assert vendi_score(3.0 * np.eye(12)) == pytest.approx(12.0, rel=1e-9)  # n orthogonal, any scale
    assert vendi_score(np.eye(30)[:7]) == pytest.approx(7.0, rel=1e-9)  # n < d
    x = rng.normal(size=(200, 16))  # n > d: the dual (d x d) form
    assert vendi_score(x[rng.permutation(200)]) == pytest.approx(vendi_score(x), rel=1e-9)
    # k distinct equal-sized modes, mutually orthogonal: exactly k
    assert vendi_score(np.repeat(np.eye(5), 8, axis=0)) == pytest.approx(5.0, rel=1e-9)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the package imports a deprecated scipy name
def test_vendi_agrees_with_the_package_in_both_forms():
    rng = np.random.default_rng(1)
    for n, d in ((50, 64), (300, 20)):
        x = rng.normal(size=(n, d))
        assert vendi_score(x) == pytest.approx(vendi.score_X(x), rel=1e-6)
        assert vendi_score(x) == pytest.approx(vendi.score_dual(x), rel=1e-6)


def test_vendi_zero_vector_is_an_error():
    x = np.eye(4)
    x[2] = 0
    with pytest.raises(MetricError, match="zero"):
        vendi_score(x)


def _class_features(rng, n, d, c):
    centre = np.zeros(d)
    centre[c] = 6.0
    return centre + rng.normal(size=(n, d))


def test_mode_collapse_scores_far_below_real_at_the_same_n():
    rng = np.random.default_rng(2)
    d, classes, n = 32, 3, 60
    ref = np.concatenate([_class_features(rng, 200, d, c) for c in range(classes)])
    ref_y = np.repeat(np.arange(classes), 200)
    fresh = np.concatenate([_class_features(rng, n, d, c) for c in range(classes)])
    collapsed = np.concatenate([np.repeat(_class_features(rng, 3, d, c), n // 3, axis=0)
                                + 0.01 * rng.normal(size=(n, d)) for c in range(classes)])
    gen_y = np.repeat(np.arange(classes), n)
    groups = ["many", "medium", "few"]
    good = {(r["metric"], r["group"], r["class"]): r for r in vendi_rows(fresh, gen_y, ref, ref_y, groups=groups)}
    bad = {(r["metric"], r["group"], r["class"]): r for r in vendi_rows(collapsed, gen_y, ref, ref_y, groups=groups)}
    for c in range(classes):
        key = ("vendi_ratio", "class", c)
        assert good[key]["value"] == pytest.approx(1.0, abs=0.15)
        assert bad[key]["value"] < 0.35  # the real classes here have about 8.5 effective modes
        assert bad[("vendi", "class", c)]["value"] < 3.2  # three distinct images
        assert good[key]["n_gen"] == good[key]["n_ref"] == n  # real scored at the same n
    assert good[("vendi_ratio", "all", None)]["n_gen"] == classes * n
    assert "pooled" in good[("vendi_ratio", "few", None)]["note"]


def test_vendi_real_uses_the_smaller_side_and_nan_for_an_empty_class():
    rng = np.random.default_rng(3)
    gen, gen_y = rng.normal(size=(40, 8)), np.repeat([0, 1], 20)
    ref, ref_y = rng.normal(size=(15, 8)), np.array([0] * 5 + [1] * 10)
    rows = {(r["metric"], r["group"], r["class"]): r for r in vendi_rows(gen, gen_y, ref, ref_y, groups=["many", "few", "few"])}
    assert rows[("vendi", "class", 0)]["n_gen"] == 5 and rows[("vendi_real", "class", 1)]["n_ref"] == 10
    empty = rows[("vendi_ratio", "class", 2)]
    assert math.isnan(empty["value"]) and empty["note"].startswith("skipped:")
    assert rows[("vendi", "few", None)]["n_gen"] == 10  # class 2 adds nothing


def test_nearest_is_exact():
    rng = np.random.default_rng(4)
    q, t = rng.normal(size=(30, 5)), rng.normal(size=(50, 5))
    d, idx = nearest(q, t, 3)
    full = np.linalg.norm(q[:, None] - t[None], axis=2)
    np.testing.assert_allclose(d, np.sort(full, axis=1)[:, :3], rtol=1e-9)
    np.testing.assert_array_equal(idx, np.argsort(full, axis=1)[:, :3])


def _train_and_fresh(rng, classes, n_train, n_gen, d):
    train = np.concatenate([_class_features(rng, n_train, d, c) for c in range(classes)])
    train_y = np.repeat(np.arange(classes), n_train)
    fresh = np.concatenate([_class_features(rng, n_gen, d, c) for c in range(classes)])
    return train, train_y, fresh, np.repeat(np.arange(classes), n_gen)


def _rate(rows, group="all", cls=None):
    return next(r["value"] for r in rows if r["group"] == group and r["class"] == cls)


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_planted_copies_raise_the_rate_by_the_planted_fraction(fraction):
    rng = np.random.default_rng(5)
    classes, n_train, n_gen, d = 3, 80, 100, 24
    train, train_y, gen, gen_y = _train_and_fresh(rng, classes, n_train, n_gen, d)
    groups = ["many", "medium", "few"]
    counts = np.bincount(train_y)
    floor = _rate(memorization_rows(class_ratios(gen, gen_y, train, train_y, num_classes=classes)[0], gen_y, counts,
                                    groups=groups, metric="memorization", space="test"))
    assert floor < 0.02  # fresh draws of the same distribution are not copies
    planted = gen.copy()
    k = int(fraction * n_gen)
    for c in range(classes):
        rows = np.flatnonzero(gen_y == c)[:k]
        originals = np.flatnonzero(train_y == c)[rng.integers(0, n_train, k)]
        planted[rows] = train[originals]
        planted[rows[: k // 2]] += 0.02 * rng.normal(size=(k // 2, d))  # half exact, half near copies
    ratios, neighbours = class_ratios(planted, gen_y, train, train_y, num_classes=classes)
    rows = memorization_rows(ratios, gen_y, counts, groups=groups, metric="memorization", space="test")
    assert _rate(rows) == pytest.approx(floor + fraction, abs=0.02)
    for c in range(classes):
        assert _rate(rows, "class", c) == pytest.approx(fraction, abs=0.03)
    copied = np.flatnonzero(gen_y == 0)[:k]
    assert (train_y[neighbours[copied, 0]] == 0).all()  # neighbours are global indices of the same class


def test_memorization_short_classes_and_pixel_space():
    train = torch.zeros((5, 1, 2, 2), dtype=torch.uint8)
    train[1:] = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1) * 60 + 10
    train_y = np.array([0, 1, 1, 1, 1])
    gen = train[[0, 2]].clone()
    gen_y = np.array([0, 1])
    assert pixels(gen).dtype == np.uint8 and pixels(gen).shape == (2, 4)
    ratios, _ = class_ratios(pixels(gen), gen_y, pixels(train), train_y, num_classes=2)
    assert math.isnan(ratios[0]) and ratios[1] < 1e-6  # class 0 has one training image; gen[1] is a copy
    rows = memorization_rows(ratios, gen_y, np.bincount(train_y), groups=["many", "few"], metric="memorization_pixel",
                             space="pixel")
    assert math.isnan(_rate(rows, "class", 0)) and "fewer than 2" in rows[-2]["note"]
    assert _rate(rows) == 1.0 and "excluded classes" in rows[0]["note"]
    assert rows[0]["n_ref"] == 4


def test_a_library_failure_in_one_slice_is_a_nan_row_and_the_others_are_kept(monkeypatch):
    from benchmark.eval import diversity

    rng = np.random.default_rng(4)
    gen, gen_y = rng.normal(size=(40, 8)), np.repeat([0, 1], 20)
    ref, ref_y = rng.normal(size=(40, 8)), np.repeat([0, 1], 20)
    real = diversity.vendi_score

    def fails_on_class_1(x):
        if len(x) == 20 and np.allclose(x, gen[20:]):
            raise np.linalg.LinAlgError("Eigenvalues did not converge")
        return real(x)

    monkeypatch.setattr(diversity, "vendi_score", fails_on_class_1)
    rows = {(r["metric"], r["group"], r["class"]): r for r in vendi_rows(gen, gen_y, ref, ref_y, groups=["many", "few"])}
    bad = rows[("vendi", "class", 1)]
    assert math.isnan(bad["value"]) and bad["note"].startswith("skipped: failed with LinAlgError: Eigenvalues")
    assert np.isfinite(rows[("vendi", "class", 0)]["value"]) and np.isfinite(rows[("vendi", "all", None)]["value"])
