"""The fused k-NN pass equals torch-fidelity's precision/recall and Naeem et al.'s density/coverage."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch_fidelity.metric_prc import calculate_precision_recall_full, calculate_precision_recall_part

from benchmark.core.errors import MetricError
from benchmark.eval.knn import KnnMetrics, knn_flops, knn_metrics, knn_slices


def cloud(n, d, shift=0.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32) + np.float32(shift)


def naeem_reference(gen, ref, k):
    """Density / coverage written straight from the paper, on full distance matrices (small n only)."""
    g, r = torch.from_numpy(gen), torch.from_numpy(ref)
    radii = torch.cdist(r, r).kthvalue(k + 1, dim=1).values
    d = torch.cdist(g, r)
    density = (d < radii).sum().item() / (k * len(g))
    coverage = (d.min(dim=0).values < radii).float().mean().item()
    return density, coverage


def counts(value, n):
    return round(value * n)


@pytest.mark.parametrize("n_gen,n_ref,d,shift,seed", [(80, 90, 8, 0.5, 0), (300, 200, 32, 0.2, 1),
                                                      (150, 400, 64, 0.1, 2), (60, 60, 2048, 0.0, 3)])
def test_small_n_exactly_equal_to_torch_fidelity_and_naeem(n_gen, n_ref, d, shift, seed):
    gen, ref = cloud(n_gen, d, shift, seed), cloud(n_ref, d, 0.0, seed + 10)
    p, r = calculate_precision_recall_full(torch.from_numpy(gen), torch.from_numpy(ref), 3, 10000)
    dens, cov = naeem_reference(gen, ref, 5)
    for block in (1 << 25, 997):  # one block, and many blocks of a few rows
        out = knn_metrics(gen, ref, k=3, dc_k=5, block_elems=block)
        # same counts; torch-fidelity reports the fp32 mean, we report the exact fraction
        assert counts(out.precision, n_gen) == counts(p, n_gen) and np.float32(out.precision) == np.float32(p)
        assert counts(out.recall, n_ref) == counts(r, n_ref) and np.float32(out.recall) == np.float32(r)
        assert out.density == dens and np.float32(out.coverage) == np.float32(cov)
    assert 0 < out.precision < 1 and 0 < out.recall < 1 and 0 < out.density


def test_large_n_matches_torch_fidelity_batched_path_within_float_tolerance():
    # above torch-fidelity's batch size its "part" variant computes the distances block by block
    gen, ref = cloud(5600, 6, 0.3, seed=4), cloud(5200, 6, 0.0, seed=5)
    p, r = calculate_precision_recall_part(torch.from_numpy(gen), torch.from_numpy(ref), 5, 5000)
    out = knn_metrics(gen, ref, k=5, dc_k=5, block_elems=1 << 22)
    assert abs(counts(out.precision, 5600) - counts(p, 5600)) <= 2  # a tie within an ulp may flip
    assert abs(counts(out.recall, 5200) - counts(r, 5200)) <= 2
    assert 0.5 < out.precision < 0.99 and 0.5 < out.recall < 0.99


def test_known_geometry_and_identical_sets():
    a = cloud(400, 8, seed=1)
    same = knn_metrics(a, a, k=3, dc_k=5)
    assert (same.precision, same.recall, same.coverage) == (1.0, 1.0, 1.0)
    far = knn_metrics(cloud(100, 8, 50.0, seed=2), a, k=3, dc_k=5)
    assert (far.precision, far.recall, far.density, far.coverage) == (0.0, 0.0, 0.0, 0.0)


def test_too_few_samples_skip_only_the_pair_that_needs_them():
    ref = cloud(50, 4, seed=6)
    out = knn_metrics(cloud(3, 4, seed=7), ref, k=3, dc_k=5)  # 3 generated: no k=3 radius, density still fine
    assert math.isnan(out.precision) and "at least 4 generated" in out.pr_skip and not out.dc_skip
    assert 0 <= out.get("density") and 0 <= out.get("coverage") <= 1
    with pytest.raises(MetricError, match="precision/recall"):
        out.get("recall")
    few_ref = knn_metrics(cloud(20, 4, seed=7), ref[:5], k=3, dc_k=5)  # 5 references: k=3 radii, no k=5
    assert isinstance(few_ref, KnnMetrics) and "at least 6 reference" in few_ref.dc_skip and not few_ref.pr_skip
    assert 0 <= few_ref.get("precision") <= 1 and math.isnan(few_ref.density)


def test_flop_count_of_the_three_passes():
    # each distance once: the self passes' pairs are symmetric (2.05e13 at 50k vs 50k, d 2048)
    assert knn_flops(50_000, 50_000, 2048) == pytest.approx(2.048e13, rel=1e-3)
    assert knn_flops(50_000, 50_000, 2048, ordered=True) == pytest.approx(3.07e13, rel=1e-3)  # every ordered pair
    assert knn_flops(10, 20, 4) == 4 * (100 + 400) + 2 * 4 * 200


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_pass_equals_cpu_pass():
    gen, ref = cloud(700, 64, 0.3, seed=8), cloud(600, 64, seed=9)
    torch.backends.cuda.matmul.allow_tf32 = True  # the harness's setting: the pass must turn it off
    cpu, gpu = knn_metrics(gen, ref, k=3, dc_k=5), knn_metrics(gen, ref, k=3, dc_k=5, device="cuda")
    assert torch.backends.cuda.matmul.allow_tf32
    for name in ("precision", "recall", "density", "coverage"):
        assert getattr(gpu, name) == pytest.approx(getattr(cpu, name), abs=3 / 600)


def _same(a: KnnMetrics, b: KnnMetrics) -> bool:
    return all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
               for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b)))


def test_many_slices_from_one_pass_equal_each_slice_alone():
    """Nested slices (overall, groups, classes; one too small, one empty on a side) from the shared
    passes give each slice's own knn_metrics, for one block and for blocks of a few rows."""
    gl, rl = np.repeat(np.arange(5), [40, 30, 3, 25, 0]), np.repeat(np.arange(5), [35, 45, 20, 5, 10])
    gen = cloud(len(gl), 16, seed=20) + gl[:, None].astype(np.float32) * 0.4
    ref = cloud(len(rl), 16, seed=21) + rl[:, None].astype(np.float32) * 0.4
    parts = [list(range(5)), [0, 1], [2, 3, 4], *([c] for c in range(5))]

    def span(labels, classes):
        at = np.flatnonzero(np.isin(labels, classes))
        return (int(at[0]), int(at[-1]) + 1) if len(at) else (0, 0)

    slices = [(span(gl, c), span(rl, c)) for c in parts]
    for block in (1 << 25, 301):
        shared = knn_slices(gen, ref, slices, k=3, dc_k=5, block_elems=block)
        for classes, got in zip(parts, shared):
            alone = knn_metrics(gen[np.isin(gl, classes)], ref[np.isin(rl, classes)], k=3, dc_k=5)
            assert _same(got, alone), classes
    assert shared[3 + 2].pr_skip and not shared[3 + 2].dc_skip  # class 2: 3 generated images
    assert "got 0" in shared[3 + 4].pr_skip  # class 4: no generated images
    assert 0 < shared[0].precision < 1 and 0 < shared[1].coverage <= 1


def test_rows_in_an_order_give_the_pass_of_the_ordered_array_bit_for_bit():
    """``Rows`` (float64 features and an order, made fp32 a block at a time) gives exactly what the pass
    gives on the ordered fp32 array, for one block and for blocks of a few rows, numpy and torch."""
    from benchmark.eval.knn import Rows

    rng = np.random.default_rng(30)
    gl, rl = rng.permutation(np.repeat(np.arange(3), [50, 40, 30])), rng.permutation(np.repeat(np.arange(3), 40))
    gen = rng.normal(size=(len(gl), 12)) + gl[:, None] * 0.5  # float64, shuffled labels
    ref = rng.normal(size=(len(rl), 12)) + rl[:, None] * 0.5
    go, ro = np.argsort(gl, kind="stable"), np.argsort(rl, kind="stable")
    rows = Rows(gen, go, chunk=7)
    whole = rows.whole(torch.device("cpu"))
    assert whole.dtype == torch.float32 and torch.equal(whole, torch.from_numpy(gen[go].astype(np.float32)))
    assert torch.equal(rows.block(5, 19, torch.device("cpu")), whole[5:19])
    assert torch.equal(Rows(torch.from_numpy(gen), go).whole(torch.device("cpu")), whole)

    def span(labels, c):
        at = np.flatnonzero(np.sort(labels) == c)
        return int(at[0]), int(at[-1]) + 1

    slices = [((0, len(gl)), (0, len(rl)))] + [(span(gl, c), span(rl, c)) for c in range(3)]
    for block in (1 << 25, 97):
        want = knn_slices(gen[go].astype(np.float32), ref[ro].astype(np.float32), slices, k=3, dc_k=5,
                          block_elems=block)
        got = knn_slices(Rows(gen, go), Rows(ref, ro), slices, k=3, dc_k=5, block_elems=block)
        assert got == want


def _plain_pass(gen, ref, k, dc_k):
    """The pass written plainly on whole matrices, with the arithmetic of one block: distances
    sqrt(max(|y|^2 - 2 x.y + |x|^2, 0)) in fp32, radii the (k+1)-th smallest, then the comparisons."""

    def dist(x, y):
        d = torch.addmm(y.pow(2).sum(1).unsqueeze(0), x, y.T, alpha=-2)
        return d.add_(x.pow(2).sum(1, keepdim=True)).clamp_min_(0).sqrt_()

    g, r = torch.from_numpy(gen), torch.from_numpy(ref)
    rr, gg, d = dist(r, r), dist(g, g), dist(g, r)
    r_k, r_dc = rr.kthvalue(k + 1, dim=1).values, rr.kthvalue(dc_k + 1, dim=1).values
    g_k = gg.kthvalue(k + 1, dim=1).values
    return dict(precision=(d <= r_k).any(1).sum().item() / len(g),
                recall=(d <= g_k.unsqueeze(1)).any(0).sum().item() / len(r),
                density=(d < r_dc).sum().item() / (dc_k * len(g)),
                coverage=(d < r_dc).any(0).sum().item() / len(r))  # fmt: skip


@pytest.mark.parametrize("block_elems", [1 << 12, 1 << 20])
def test_pass_equals_the_plain_formula_exactly_where_distances_tie(block_elems):
    # features on a small integer grid: many distances and radii are exactly equal, so a test that
    # rounded a comparison the other way (the unfinished radius blocks, min(d - r) <= 0 for "some d <= r",
    # a count for a sum) would move a count
    rng = np.random.default_rng(7)
    gen = rng.integers(0, 4, size=(300, 6)).astype(np.float32)
    ref = rng.integers(0, 3, size=(260, 6)).astype(np.float32)
    got = knn_metrics(gen, ref, k=3, dc_k=5, block_elems=block_elems)
    want = _plain_pass(gen, ref, 3, 5)
    assert all(0 < v < 1 for v in (want["precision"], want["recall"], want["coverage"]))
    # the per-sample test of the diversity rows' inlier gate, on the same ties
    from benchmark.eval.knn import inside_balls

    g, r = torch.from_numpy(gen), torch.from_numpy(ref)
    d = torch.addmm(r.pow(2).sum(1).unsqueeze(0), g, r.T, alpha=-2).add_(g.pow(2).sum(1, keepdim=True))
    rr = torch.addmm(r.pow(2).sum(1).unsqueeze(0), r, r.T, alpha=-2).add_(r.pow(2).sum(1, keepdim=True))
    radius = rr.clamp_min_(0).sqrt_().kthvalue(4, dim=1).values
    hit = (d.clamp_min_(0).sqrt_() <= radius).any(1).numpy()
    assert (inside_balls(gen, ref, k=3, block_elems=block_elems) == hit).all()
    for name, value in want.items():
        assert getattr(got, name) == value, name
    # and on continuous features, through the slices
    gen, ref = cloud(200, 16, 0.3, seed=4), cloud(180, 16, seed=5)
    got = knn_slices(gen, ref, [((0, 200), (0, 180))], k=3, dc_k=5, block_elems=block_elems)[0]
    want = _plain_pass(gen, ref, 3, 5)
    assert dataclasses.asdict(got) == {**want, "pr_skip": "", "dc_skip": ""}
