"""The real-data floor and the methods' rows at the floor's sample size (``<metric>_at_floor_n``).

The floor holds out min(n, half a class) real images per class; FID and KID depend on both
sample sizes, so a method is also scored at the floor's n.  Checked against ground truth on
synthetic Gaussian features: a generator that draws from the reference distribution itself
(a perfect one) scores, at the floor's n, what the floor scores; at its own larger n it
scores lower, which is why the floor must not be compared with the methods' own rows."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fake_eval_data import fake_dataset, make_images

from benchmark.core.config import EvalConfig
from benchmark.eval.evaluate import evaluate_set, floor_gen_subset, floor_n_rows, floor_split, real_floor_rows
from benchmark.eval.metrics import compute_rows

CPU = torch.device("cpu")
GROUPS = ["many", "medium", "few"]
CFG = EvalConfig(feature_space="classifier", classifier_epochs=6, kid_subsets=5, batch_size=64, bootstrap=0,
                 diversity=False)


def _data(rng, *, per_ref: int, per_gen: int, dim: int):
    means = rng.normal(0, 3, size=(len(GROUPS), dim))
    ref_labels = np.repeat(np.arange(len(GROUPS)), per_ref)
    gen_labels = np.repeat(np.arange(len(GROUPS)), per_gen)
    ref = means[ref_labels] + rng.normal(size=(len(ref_labels), dim))
    gen = means[gen_labels] + rng.normal(size=(len(gen_labels), dim))  # a perfect generator
    return gen, gen_labels, ref, ref_labels


def _fid(rows, metric="fid", group="all"):
    return next(r["value"] for r in rows if r["metric"] == metric and r["group"] == group)


def test_floor_gen_subset_takes_the_asked_count_per_class_without_replacement():
    labels = np.repeat(np.arange(3), [10, 6, 2])
    pick = floor_gen_subset(labels, np.array([4, 6, 5]), seed=3)
    assert np.bincount(labels[pick], minlength=3).tolist() == [4, 6, 2]  # class 2 has only 2: all of them
    assert len(set(pick.tolist())) == len(pick)
    assert np.array_equal(pick, floor_gen_subset(labels, np.array([4, 6, 5]), seed=3))
    assert not np.array_equal(pick, floor_gen_subset(labels, np.array([4, 6, 5]), seed=4))


def test_a_perfect_generator_at_the_floor_n_scores_the_floor_and_lower_at_its_own_n():
    """Over repeated draws: mean FID at the floor's n equals the floor's mean FID (within 3 standard
    errors of their paired difference); the method's own rows (n 30 vs 40, not 20 vs 20) are lower."""
    dataset = SimpleNamespace(groups=GROUPS, num_classes=len(GROUPS), source=SimpleNamespace())
    at_floor, floor, own = [], [], []
    for rep in range(30):
        rng = np.random.default_rng(rep)
        gen, gen_labels, ref, ref_labels = _data(rng, per_ref=40, per_gen=30, dim=8)
        held, rest, capped = floor_split(ref_labels, 30, seed=rep)
        assert capped == len(GROUPS)  # 30 asked, half of 40 allowed
        floor_rows = compute_rows(ref[held], ref_labels[held], ref[rest], ref_labels[rest], groups=GROUPS,
                                  kid_subsets=5, only=frozenset({"fid"}))
        mine = floor_n_rows({"features": gen}, gen_labels, {"features": ref}, ref_labels, dataset=dataset, cfg=CFG,
                            n_per_class=30, seed=rep, space_id="synthetic")
        row = mine[(mine.metric == "fid_at_floor_n") & (mine.group == "all")].iloc[0]
        assert (row.n_gen, row.n_ref) == (60, 60)  # the floor's n: 20 held out per class vs the other 20
        at_floor.append(row.value)
        floor.append(_fid(floor_rows))
        own.append(_fid(compute_rows(gen, gen_labels, ref, ref_labels, groups=GROUPS, kid_subsets=5,
                                     only=frozenset({"fid"}))))
    at_floor, floor, own = map(np.array, (at_floor, floor, own))
    diff = at_floor - floor
    assert abs(diff.mean()) < 3 * diff.std(ddof=1) / np.sqrt(len(diff)) + 1e-9
    assert own.mean() < 0.8 * floor.mean()  # why the floor's n matters: bias shrinks with n


@pytest.fixture(scope="module")
def ds():
    return fake_dataset(num_classes=4)


def test_method_rows_at_the_floor_n_match_the_floor_rows_slice_by_slice(ds, tmp_path):
    labels = np.repeat(np.arange(ds.num_classes), 20)  # the test split holds 30 per class: the floor takes 15
    images = make_images(labels, resolution=ds.resolution, channels=ds.channels, seed=5)
    cache = tmp_path / "cache"
    rows = evaluate_set(images, torch.from_numpy(labels), dataset=ds, cfg=CFG, cache_dir=cache, device=CPU,
                        downstream=False, progress=False, floor_n=20)
    floor = real_floor_rows(ds, CFG, 20, cache_dir=cache, device=CPU, progress=False)
    for metric in ("fid_at_floor_n", "kid_at_floor_n", "fid_classmean_at_floor_n"):
        mine = rows[rows.metric == metric].set_index(["group", "class"]).sort_index()
        theirs = floor[floor.metric == metric].set_index(["group", "class"]).sort_index()
        assert len(mine) and mine.index.equals(theirs.index)
        assert mine.n_gen.tolist() == theirs.n_gen.tolist() and mine.n_ref.tolist() == theirs.n_ref.tolist()
        assert all("real_floor n_per_class=20;capped_classes=4" in n for n in mine.note)
    own = rows[(rows.metric == "fid") & (rows.group == "all")].iloc[0]
    at = rows[(rows.metric == "fid_at_floor_n") & (rows.group == "all")].iloc[0]
    assert own.n_gen == 80 and at.n_gen < own.n_gen and at.n_ref < own.n_ref  # the floor holds out fewer
    # the floor's own fid rows are its at-floor-n rows
    f = floor[floor.group == "all"].set_index("metric").value
    assert f["fid"] == f["fid_at_floor_n"] and f["kid"] == f["kid_at_floor_n"]
    without = evaluate_set(images, torch.from_numpy(labels), dataset=ds, cfg=CFG, cache_dir=cache, device=CPU,
                           downstream=False, progress=False)
    assert not without.metric.str.endswith("_at_floor_n").any()
