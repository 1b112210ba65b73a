"""Metrics are pure functions of features: agreement with torch-fidelity / clean-fid, slicing, small n."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import (
    fid_features_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import calculate_precision_recall_full

from benchmark.core.errors import MetricError
from benchmark.eval import fidkid
from benchmark.eval import metrics as M


def cloud(n, d=16, shift=0.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def tf_fid(a, b):
    s1 = fid_features_to_statistics(torch.from_numpy(a))
    s2 = fid_features_to_statistics(torch.from_numpy(b))
    return fid_statistics_to_metric(s1, s2, False)["frechet_inception_distance"]


@pytest.mark.parametrize("n1,n2,d", [(30, 40, 64), (200, 300, 16)])
def test_fid_matches_torch_fidelity_and_clean_fid(n1, n2, d):
    a, b = cloud(n1, d, seed=1), cloud(n2, d, 0.3, seed=2)
    ours = M.fid(a, b)  # (30, 40, 64) goes through the low-rank path, (200, 300, 16) through the Cholesky one
    assert ours == pytest.approx(tf_fid(a, b), rel=1e-6)
    assert M.fid(a, b, backend="clean-fid") == pytest.approx(ours, rel=1e-5)


def test_fid_of_a_set_with_itself_is_zero():
    for a in (cloud(50, 64), cloud(400, 16)):
        assert abs(M.fid(a, a)) < 1e-8


def test_kid_matches_torch_fidelity_same_draws_and_clean_fid_at_full_subsets():
    a, b = cloud(60, 32, seed=3), cloud(70, 32, 0.2, seed=4)
    mean, std, m = M.kid(a, b, subsets=15, subset_size=40, seed=7)
    ref = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=15, kid_subset_size=40,
                                 rng_seed=7, verbose=False)
    assert m == 40
    for whole in (False, True):  # both routes (per-subset kernels for big sets, whole-set sums) agree
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fidkid, "whole_set_is_cheaper", lambda *args, whole=whole: whole)
            assert M.kid(a, b, subsets=15, subset_size=40, seed=7)[0] == pytest.approx(mean, rel=1e-10)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-10)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-10)
    # with subset size == n every subset is the whole set, so both backends give the same unbiased MMD
    c = cloud(60, 32, 0.2, seed=5)
    assert M.kid(a, c, subsets=3, subset_size=60, seed=0)[0] == pytest.approx(
        M.kid(a, c, subsets=3, subset_size=60, seed=0, backend="clean-fid")[0], rel=1e-9)


def test_kid_subset_shrinks_to_small_n():
    assert M.kid(cloud(5), cloud(9), subsets=4, subset_size=1000, seed=0)[2] == 5


def test_precision_recall_matches_torch_fidelity():
    a, b = cloud(80, 8, seed=5), cloud(90, 8, 0.5, seed=6)
    p, r = calculate_precision_recall_full(torch.from_numpy(a).float(), torch.from_numpy(b).float(), 3, 10000)
    assert M.precision_recall(a, b, k=3) == pytest.approx((p, r))


def test_pr_dc_on_clouds_with_known_overlap():
    a = cloud(400, 8, seed=1)
    assert M.precision_recall(a, a, k=3) == (1.0, 1.0)
    assert M.density_coverage(a, a, k=5) == pytest.approx((1.0, 1.0), abs=0.01)
    b = cloud(400, 8, seed=2)  # same distribution, fresh sample
    p, r = M.precision_recall(b, a, k=3)
    d, c = M.density_coverage(b, a, k=5)
    assert p > 0.85 and r > 0.85 and 0.8 < d < 1.2 and c > 0.9
    far = cloud(400, 8, 50.0, seed=3)
    assert M.precision_recall(far, a, k=3) == (0.0, 0.0)
    assert M.density_coverage(far, a, k=5) == (0.0, 0.0)
    half = np.concatenate([b[:200], far[:200]])  # half the generated mass off the data
    p, _ = M.precision_recall(half, a, k=3)
    assert 0.4 < p < 0.55


def make_labelled(per_class, d=16, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(per_class)), per_class)
    return rng.normal(size=(len(labels), d)) + labels[:, None] * 0.5, labels


OPTS = dict(k=3, dc_k=5, kid_subsets=10, kid_subset_size=50, seed=0)


def test_per_class_rows_equal_each_class_computed_alone():
    g, gl = make_labelled([40, 30, 20], seed=1)
    r, rl = make_labelled([50, 50, 50], seed=2)
    probs = np.eye(3)[gl]
    rows = M.compute_rows(g, gl, r, rl, groups=["many", "medium", "few"], gen_probs=probs, **OPTS)
    for c in range(3):
        alone = M.compute_rows(g[gl == c], gl[gl == c], r[rl == c], rl[rl == c], groups=["many"],
                               gen_probs=probs[gl == c], per_class=False, **OPTS)
        sliced = {x["metric"]: x["value"] for x in rows if x["class"] == c}
        assert sliced == pytest.approx({x["metric"]: x["value"] for x in alone if x["group"] == "all"})
    by = {(x["metric"], x["group"]): x for x in rows if x["class"] is None}
    assert by[("fid", "few")]["n_gen"] == 20 and by[("fid", "few")]["n_ref"] == 50
    assert by[("label_acc", "all")]["value"] == 1.0
    assert "kid_subset=20" in by[("kid", "few")]["note"]


def test_empty_group_gives_no_rows_and_tiny_n_is_never_zero():
    g, gl = make_labelled([10, 1, 3], seed=3)
    r, rl = make_labelled([10, 10, 1], seed=4)
    rows = M.compute_rows(g, gl, r, rl, groups=["many", "many", "few"], **OPTS)
    assert not [x for x in rows if x["group"] == "medium"]
    for x in rows:
        assert x["value"] != 0.0 or x["metric"] in ("precision", "recall", "density", "coverage")
        if math.isnan(x["value"]):
            assert x["note"].startswith("skipped:")
    one = {x["metric"]: x for x in rows if x["class"] == 1}
    assert math.isnan(one["fid"]["value"]) and "at least 2" in one["fid"]["note"]
    assert "small-n" in {x["metric"]: x for x in rows if x["class"] == 0}["fid"]["note"]
    with pytest.raises(MetricError):
        M.fid(g[:1], r)
    with pytest.raises(MetricError):
        M.precision_recall(g[:3], r, k=3)


def test_interval_rows_bracket_their_estimate_in_every_slice_and_tiny_slices_say_why():
    g, gl = make_labelled([60, 40, 3], seed=5)
    r, rl = make_labelled([60, 60, 60], seed=6)
    rows = M.compute_rows(g, gl, r, rl, groups=["many", "few", "few"], bootstrap=20, **OPTS)
    by = {(x["metric"], x["group"], x["class"]): x for x in rows}
    checked = 0
    for (metric, group, cls), row in by.items():
        if metric not in ("fid", "kid"):
            continue
        low, high = by[(f"{metric}_ci_low", group, cls)], by[(f"{metric}_ci_high", group, cls)]
        if cls == 2:  # 3 generated images: no half-sample of 2 or more per side
            assert np.isnan(low["value"]) and "too few" in low["note"]
            continue
        assert low["value"] <= row["value"] <= high["value"] and low["value"] < high["value"]
        assert "half-sampling" in low["note"]
        checked += 1
    assert checked == 2 * 5  # fid and kid in all, many, few, class 0, class 1


def test_a_library_failure_is_a_nan_row_with_the_reason_and_the_other_rows_stay(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("math domain error in sqrtm")

    monkeypatch.setattr(M, "fid", broken)
    g, gl = make_labelled([30, 30], seed=1)
    r, rl = make_labelled([30, 30], seed=2)
    rows = M.compute_rows(g, gl, r, rl, groups=["many", "few"], **OPTS)
    fids = [x for x in rows if x["metric"] == "fid"]
    assert fids and all(np.isnan(x["value"]) and "ValueError: math domain error" in x["note"] for x in fids)
    assert all(np.isfinite(x["value"]) for x in rows if x["metric"] in ("kid", "precision", "recall"))


def test_small_n_flag_at_n_equal_to_the_dimension():
    d = 16
    for n, flagged in ((d - 1, True), (d, True), (d + 1, False)):
        rows = M.compute_rows(cloud(n, d, seed=1), np.zeros(n, int), cloud(200, d, seed=2), np.zeros(200, int),
                              groups=["many"], per_class=False, **OPTS)
        fid_row = next(x for x in rows if x["metric"] == "fid" and x["group"] == "all")
        assert ("small-n" in fid_row["note"]) == flagged


def test_kid_with_both_sets_at_the_subset_size_claims_no_std():
    a, b = cloud(40, 8, seed=1), cloud(40, 8, 0.3, seed=2)
    mean, std, m = M.kid(a, b, subsets=50, subset_size=1000, seed=0)
    assert m == 40 and np.isnan(std)
    assert mean == pytest.approx(M.kid(a, b, subsets=1, subset_size=40, seed=3)[0], rel=1e-12)
    assert np.isfinite(M.kid(a, cloud(60, 8, seed=3), subsets=50, subset_size=1000, seed=0)[1])  # ref varies
    rows = M.compute_rows(a, np.zeros(40, int), b, np.zeros(40, int), groups=["many"], per_class=False, **OPTS)
    note = next(x for x in rows if x["metric"] == "kid" and x["group"] == "all")["note"]
    assert "degenerate subsets" in note and "std=" not in note


def test_is_below_ten_images_is_skipped_and_splits_keep_two_images_each():
    logits = np.random.default_rng(0).normal(size=(9, 10)) * 5
    with pytest.raises(MetricError, match="at least 10"):
        M.inception_score(logits)
    value, splits = M.inception_score(np.random.default_rng(0).normal(size=(12, 10)) * 5)
    assert splits == 6 and value > 1.0
    assert M.inception_score(np.zeros((500, 10)))[1] == 10


def test_group_rows_say_pooled_and_class_means_are_their_own_rows():
    g, gl = make_labelled([40, 30, 20, 1], seed=1)
    r, rl = make_labelled([50, 50, 50, 50], seed=2)
    groups = ["many", "many", "few", "few"]
    rows = M.compute_rows(g, gl, r, rl, groups=groups, **OPTS)
    assert all("pooled" in x["note"] for x in rows if x["group"] in ("many", "medium", "few")
               and not x["metric"].endswith("_classmean"))
    assert not any("pooled" in x["note"] for x in rows if x["group"] in ("all", "class"))
    cls = {(x["metric"], x["class"]): x["value"] for x in rows if x["group"] == "class"}
    mean = {(x["metric"], x["group"]): x for x in rows if x["metric"].endswith("_classmean")}
    assert mean[("fid_classmean", "many")]["value"] == pytest.approx((cls[("fid", 0)] + cls[("fid", 1)]) / 2)
    assert mean[("kid_classmean", "all")]["n_gen"] == 91
    pooled = next(x["value"] for x in rows if x["metric"] == "fid" and x["group"] == "many")
    assert pooled != pytest.approx(mean[("fid_classmean", "many")]["value"])
    few = mean[("fid_classmean", "few")]  # class 3 has 1 image: no FID, so no honest mean
    assert np.isnan(few["value"]) and "class(es) 3" in few["note"]


def test_is_from_logits_matches_uniform_and_peaked():
    peaked = np.eye(10)[np.arange(100) % 10] * 50
    assert M.inception_score(peaked, splits=1)[0] == pytest.approx(10, rel=1e-3)
    assert M.inception_score(np.zeros((100, 10)))[0] == pytest.approx(1.0)


# ---------------------------------------------------------------- end to end against torch-fidelity


class _Images(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def test_agrees_with_torch_fidelity_calculate_metrics_end_to_end():
    """A fixed random projection registered as a torch-fidelity feature extractor: its own
    calculate_metrics and our rows must agree on the same images."""
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    class Projection(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.register_buffer("w", torch.randn(3 * 8 * 8, 12, generator=torch.Generator().manual_seed(0)))

        @staticmethod
        def get_provided_features_list():
            return ("proj",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "proj"

        @staticmethod
        def can_be_compiled():
            return False

        def forward(self, x):
            return ((x.float().flatten(1) / 255) @ self.w,)

    if "ltgen-test-proj" not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor("ltgen-test-proj", Projection)
    gen = torch.randint(0, 256, (90, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    ref = (torch.randint(0, 200, (110, 3, 8, 8), generator=torch.Generator().manual_seed(2)) + 30).to(torch.uint8)
    theirs = torch_fidelity.calculate_metrics(
        input1=_Images(gen), input2=_Images(ref), cuda=False, fid=True, kid=True, prc=True, verbose=False,
        feature_extractor="ltgen-test-proj", kid_subsets=10, kid_subset_size=50, rng_seed=0, cache=False,
        save_cpu_ram=True, batch_size=32)
    net = Projection("p", ["proj"])
    with torch.no_grad():
        fg, fr = net(gen)[0].numpy(), net(ref)[0].numpy()
    rows = M.compute_rows(fg, np.zeros(90, int), fr, np.zeros(110, int), groups=["many"], k=3, dc_k=5,
                          kid_subsets=10, kid_subset_size=50, seed=0, per_class=False)
    ours = {x["metric"]: x["value"] for x in rows if x["group"] == "all"}
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    assert ours["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-3)
    assert ours["precision"] == pytest.approx(theirs["precision"])
    assert ours["recall"] == pytest.approx(theirs["recall"])
