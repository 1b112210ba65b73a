"""Vendi score and the memorisation rate against known truths on synthetic features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from vendi_score import vendi

from benchmark.core.errors import MetricError
from benchmark.eval.diversity import vendi_inlier_rows, vendi_rows, vendi_score
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
    real = diversity._eigenvalues
    unit = gen[20:] / np.linalg.norm(gen[20:], axis=1, keepdims=True)
    class_1 = unit.T @ unit / 20  # what the eigensolver sees for generated class 1 (n 20 > d 8)

    def fails_on_class_1(matrix):
        if matrix.shape == class_1.shape and np.allclose(matrix, class_1):
            raise np.linalg.LinAlgError("Eigenvalues did not converge")
        return real(matrix)

    monkeypatch.setattr(diversity, "_eigenvalues", fails_on_class_1)
    rows = {(r["metric"], r["group"], r["class"]): r for r in vendi_rows(gen, gen_y, ref, ref_y, groups=["many", "few"])}
    bad = rows[("vendi", "class", 1)]
    assert math.isnan(bad["value"]) and bad["note"].startswith("skipped: failed with LinAlgError: Eigenvalues")
    assert np.isfinite(rows[("vendi", "class", 0)]["value"]) and np.isfinite(rows[("vendi", "all", None)]["value"])


@pytest.mark.parametrize("chunk", [3, 8192])
def test_pooled_slices_equal_the_score_of_their_concatenated_rows(monkeypatch, chunk):
    from benchmark.eval import diversity

    monkeypatch.setattr(diversity, "_CHUNK_ROWS", chunk)  # chunk boundaries inside and across classes
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(120, 6)) + rng.normal(size=6)
    rows = {0: np.arange(0, 50), 1: np.arange(50, 54), 2: np.arange(60, 120, 2), 3: np.array([], dtype=int)}
    lists = [[0, 1, 2, 3], [0], [1], [2], [3], [1, 2], [0, 2], [1, 3]]  # n > d, n <= d, empty, unions
    got = diversity.pooled_vendi(feats, rows, lists)
    for classes, value in zip(lists, got):
        idx = np.concatenate([rows[c] for c in classes])
        if len(idx) == 0:
            assert isinstance(value, MetricError)
        else:
            assert value == pytest.approx(vendi_score(feats[idx]), rel=1e-10)
    # a slice met after its disjoint pieces (overall after [1, 2] and [0]) sums their matrices: same value
    assert got[0] == pytest.approx(vendi.score_dual(feats[np.concatenate([rows[c] for c in (0, 1, 2)])]), rel=1e-6)
    inside = rng.random(30) < 0.6
    kept = diversity.pooled_vendi(feats, {2: rows[2][inside]}, [[2]])[0]
    assert kept * inside.sum() / len(inside) == pytest.approx(diversity.inlier_vendi(feats[rows[2]], inside), rel=1e-10)


def test_pooled_zero_vectors_fail_their_slices_only():
    from benchmark.eval import diversity

    rng = np.random.default_rng(8)
    feats = rng.normal(size=(40, 4))
    feats[[3, 5]] = 0.0
    rows = {0: np.arange(0, 20), 1: np.arange(20, 40)}
    whole, first, second = diversity.pooled_vendi(feats, rows, [[0, 1], [0], [1]])
    for err in (whole, first):
        assert isinstance(err, MetricError) and "2 of" in str(err) and "zero" in str(err)
    assert second == pytest.approx(vendi_score(feats[20:]), rel=1e-10)


# ---------------------------------------------------------------- in-manifold Vendi (noise is not diversity)

GROUPS3 = ["many", "medium", "few"]


def _inlier(rows, metric="vendi_inlier_ratio"):
    return {(r["group"], r["class"]): r for r in rows if r["metric"] == metric}


def _world(rng, d=32, classes=3, n_ref=300):
    ref = np.concatenate([_class_features(rng, n_ref, d, c) for c in range(classes)])
    return ref, np.repeat(np.arange(classes), n_ref)


def test_inlier_gate_is_precisions_per_sample_test():
    from benchmark.eval.knn import inside_balls, knn_metrics

    rng = np.random.default_rng(5)
    gen, ref = rng.normal(size=(250, 12)), 0.7 * rng.normal(size=(180, 12))
    for k in (1, 3, 5):
        inside = inside_balls(gen, ref, k=k, block_elems=999)  # several blocks
        assert inside.dtype == bool and inside.shape == (250,)
        assert inside.mean() == knn_metrics(gen, ref, k=k, dc_k=5).precision
    assert inside_balls(ref[:7], ref, k=3).all()  # a reference point lies in its own ball
    with pytest.raises(MetricError, match="at least 4 reference"):
        inside_balls(gen, ref[:3], k=3)


def test_a_generator_of_real_images_scores_one_on_average():
    """Ground truth: generated images drawn from the real distribution have ratio 1 (mean over draws)."""
    ratios = []
    for rep in range(20):
        rng = np.random.default_rng([6, rep])
        ref, ref_y = _world(rng)
        gen = np.concatenate([_class_features(rng, 80, 32, c) for c in range(3)])
        rows = vendi_inlier_rows(gen, np.repeat(np.arange(3), 80), ref, ref_y, groups=GROUPS3, seed=rep)
        ratios.append([_inlier(rows)[key]["value"] for key in (("all", None), ("class", 0), ("class", 2))])
    ratios = np.asarray(ratios)
    mean, se = ratios.mean(0), ratios.std(0, ddof=1) / np.sqrt(len(ratios))
    assert np.all(np.abs(mean - 1.0) < np.maximum(3 * se, 0.02)), (mean, se)


def test_noisy_samples_raise_plain_vendi_but_lower_the_inlier_ratio():
    """The failure the plain ratio has (noise looks diverse) and the fix: the inlier ratio falls as the
    fraction of off-manifold samples grows, roughly in proportion, and never rises."""
    rng = np.random.default_rng(7)
    ref, ref_y = _world(rng)
    clean = np.concatenate([_class_features(rng, 100, 32, c) for c in range(3)])
    gen_y = np.repeat(np.arange(3), 100)
    noise = 5.0 * rng.normal(size=clean.shape)  # isotropic, far from every class
    plain, inlier = [], []
    for fraction in (0.0, 0.25, 0.5, 0.75):
        gen = clean.copy()
        swap = rng.random(len(gen)) < fraction
        gen[swap] = noise[swap]
        plain.append(_inlier(vendi_rows(gen, gen_y, ref, ref_y, groups=GROUPS3), "vendi_ratio")[("class", 2)]["value"])
        inlier.append(_inlier(vendi_inlier_rows(gen, gen_y, ref, ref_y, groups=GROUPS3))[("class", 2)]["value"])
    assert plain[-1] > 1.5 * plain[0]  # plain Vendi calls noise diversity
    assert all(b < a for a, b in zip(inlier, inlier[1:]))
    assert inlier[-1] < 0.35 and inlier[0] == pytest.approx(1.0, abs=0.15)


def test_collapse_and_wrong_class_score_far_below_real():
    rng = np.random.default_rng(8)
    ref, ref_y = _world(rng)
    n = 90
    gen_y = np.repeat(np.arange(3), n)
    collapsed = np.concatenate([np.repeat(_class_features(rng, 3, 32, c), n // 3, axis=0)
                                + 0.01 * rng.normal(size=(n, 32)) for c in range(3)])
    wrong = np.concatenate([_class_features(rng, n, 32, (c + 1) % 3) for c in range(3)])  # real images, wrong label
    for gen, ceiling in ((collapsed, 0.45), (wrong, 0.05)):
        rows = _inlier(vendi_inlier_rows(gen, gen_y, ref, ref_y, groups=GROUPS3))
        assert all(rows[("class", c)]["value"] < ceiling for c in range(3))


def test_inlier_rows_sizes_skips_and_zero():
    rng = np.random.default_rng(9)
    ref = np.concatenate([_class_features(rng, m, 16, c) for c, m in enumerate((40, 40, 6))])
    ref_y = np.repeat(np.arange(3), (40, 40, 6))
    gen = np.concatenate([_class_features(rng, 30, 16, c) for c in range(3)])
    gen[:30] = 50.0 * rng.normal(size=(30, 16))  # class 0: nothing inside the manifold
    rows = vendi_inlier_rows(gen, np.repeat(np.arange(3), 30), ref, ref_y, groups=GROUPS3)
    ratio, gen_rows = _inlier(rows), _inlier(rows, "vendi_inlier")
    assert ratio[("class", 1)]["n_gen"] == ratio[("class", 1)]["n_ref"] == 20  # half of 40 held out
    assert gen_rows[("class", 0)]["value"] == 0.0 and ratio[("class", 0)]["value"] == 0.0  # computed, not NaN
    assert "inliers=0.000" in ratio[("class", 0)]["note"]
    tiny = ratio[("class", 2)]  # 6 images: 3 held out leave 3 < k + 1 = 4
    assert math.isnan(tiny["value"]) and tiny["note"].startswith("skipped:") and "k + 1 = 4" in tiny["note"]
    assert "left_out_classes=2" in ratio[("few", None)]["note"] and math.isnan(ratio[("few", None)]["value"])
    assert "left_out_classes=2" in ratio[("all", None)]["note"] and ratio[("all", None)]["n_gen"] == 40
    again = vendi_inlier_rows(gen, np.repeat(np.arange(3), 30), ref, ref_y, groups=GROUPS3)
    assert [r["value"] for r in again] == pytest.approx([r["value"] for r in rows], nan_ok=True)  # seeded


def test_a_failing_manifold_test_is_a_nan_class_and_its_group_leaves_it_out(monkeypatch):
    from benchmark.eval import diversity

    rng = np.random.default_rng(10)
    ref, ref_y = _world(rng, d=16, n_ref=40)
    gen = np.concatenate([_class_features(rng, 20, 16, c) for c in range(3)])
    real = diversity.inside_balls

    def fails_on_class_1(x, base, **kw):
        if np.allclose(base.mean(0)[1], 6.0, atol=1.5):  # class 1's manifold is centred on axis 1
            raise RuntimeError("out of memory")
        return real(x, base, **kw)

    monkeypatch.setattr(diversity, "inside_balls", fails_on_class_1)
    rows = _inlier(vendi_inlier_rows(gen, np.repeat(np.arange(3), 20), ref, ref_y, groups=GROUPS3))
    bad = rows[("class", 1)]
    assert math.isnan(bad["value"]) and bad["note"].startswith("skipped: failed with RuntimeError: out of memory")
    assert np.isfinite(rows[("class", 0)]["value"]) and np.isfinite(rows[("all", None)]["value"])
    assert "left_out_classes=1" in rows[("all", None)]["note"] and math.isnan(rows[("medium", None)]["value"])


def test_a_failing_neighbour_search_is_nan_memorisation_rows(monkeypatch):
    from types import SimpleNamespace

    from benchmark.eval import evaluate

    rng = np.random.default_rng(11)
    gen, gen_y = rng.normal(size=(30, 8)), np.repeat(np.arange(3), 10)
    ref, ref_y = rng.normal(size=(60, 8)), np.repeat(np.arange(3), 20)
    train, train_y = rng.normal(size=(30, 8)), np.repeat(np.arange(3), 10)
    pix = rng.integers(0, 255, size=(30, 12), dtype=np.uint8)
    real = evaluate.class_ratios

    def pixel_search_fails(query, *a, **kw):
        if query.dtype == np.uint8:
            raise MemoryError("cannot allocate")
        return real(query, *a, **kw)

    monkeypatch.setattr(evaluate, "class_ratios", pixel_search_fails)
    ds = SimpleNamespace(groups=GROUPS3, num_classes=3)
    frame, ratios, near = evaluate._diversity_rows({"features": gen}, gen_y, pix, {"features": ref}, ref_y,
                                                   {"features": train}, train_y, pix, dataset=ds, k=3, seed=0,
                                                   space_id="s", extra_note="")
    px = frame[frame.metric == "memorization_pixel"]
    assert len(px) == 7 and px.value.isna().all() and px.note.str.startswith("skipped: failed with MemoryError").all()
    assert frame[frame.metric == "memorization"].value.notna().all() and ratios is None and near is None
