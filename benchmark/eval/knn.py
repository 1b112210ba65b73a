"""Precision, recall, density and coverage from one chunked set of k-NN passes.

Improved precision / recall (Kynkaanniemi et al. 2019) and density / coverage (Naeem et al.
2020) all compare generated-to-reference distances with k-NN radii.  Computed one by one
(torch-fidelity's precision/recall, then density/coverage) they cost six n x n distance passes
and hold n x n matrices; computed together they need three, each in blocks of rows:

1. reference x reference: one top-(max(k, dc_k) + 1) per row gives both reference radii;
2. generated x generated: the k-NN radius of every generated sample (recall's balls);
   both are distances of a set to itself, so each pair is formed once and serves both its rows
   (``_radii``): half the multiply-adds of a pass over every ordered pair;
3. generated x reference: each block yields all four metrics at once:
   precision (a generated row inside any reference ball, ``<=``), recall (a reference column
   inside any generated ball, ``<=``), density (how many reference balls hold a generated row,
   ``<``) and coverage (a reference column whose nearest generated sample lies inside its ball,
   ``<``).  The comparisons are exactly those of torch-fidelity and of Naeem et al.

A radius is the (k+1)-th smallest distance of a row, the point itself included, which is
torch-fidelity's ``kthvalue(k + 1)``.  Distances are fp32 ``sqrt(max(|x|^2 + |y|^2 - 2 x.y, 0))``,
the arithmetic ``torch.cdist`` uses at these sizes, with TF32 off on CUDA.  A block holds at
most ``block_elems`` distances (rows x all columns), so memory is bounded and no n x n matrix
exists.  Cost: d (n_ref^2 + n_gen^2) + 2 d n_gen n_ref FLOP (``knn_flops``; a multiply-add is 2),
the lower bound of any exact method that forms every distance once: a pair of one set is one
distance.  (Counting every ordered pair, as the pass did before its self passes were made
symmetric, gives ``knn_flops(..., ordered=True)``, 1.5x that at n_gen = n_ref.)

``knn_slices`` serves many slices (overall, groups, classes) from the same three passes: with the
rows ordered so that each slice is contiguous, a slice's distances are a sub-block of every block,
so a slice adds its top-k and comparisons, never a GEMM (``knn_metrics`` is its one-slice case).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from benchmark.core.errors import MetricError

BLOCK_ELEMS = 1 << 25  # distances per block (128 MiB of fp32): the memory bound of a pass


@dataclass(frozen=True)
class KnnMetrics:
    """The four values of one pass; a pair that cannot be computed is NaN with its reason."""

    precision: float = float("nan")
    recall: float = float("nan")
    density: float = float("nan")
    coverage: float = float("nan")
    pr_skip: str = ""  # why precision / recall could not be computed
    dc_skip: str = ""  # why density / coverage could not be computed

    def get(self, name: str) -> float:
        """The value, or MetricError naming why it could not be computed."""
        skip = self.pr_skip if name in ("precision", "recall") else self.dc_skip
        if skip:
            raise MetricError(skip)
        return getattr(self, name)


def knn_flops(n_gen: int, n_ref: int, dim: int, *, ordered: bool = False) -> float:
    """FLOP of the three passes' distance products: each pair of a set with itself once (the symmetric
    self passes), each generated-reference pair once; ``ordered``: every ordered pair (the bound of a
    pass that forms both halves of a symmetric matrix)."""
    self_pairs = 2.0 if ordered else 1.0
    return dim * (self_pairs * (n_ref * n_ref + n_gen * n_gen) + 2.0 * n_gen * n_ref)


def _need(n: int, least: int, what: str, side: str) -> str:
    return f"{what} needs at least {least} {side} samples, got {n}" if n < least else ""


@contextlib.contextmanager
def _exact_fp32(device: torch.device):
    """TF32 would move distances by ~1e-3 relative: off for the pass, restored after."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


class Rows:
    """The rows ``x[order]`` of a feature array (numpy or torch), made fp32 on a device when asked:
    all of them, or a block at a time, so a pass that reads them in blocks never holds a whole fp32
    copy (390 MiB at 50k x 2048).  A block equals the same rows of the whole copy, bit for bit."""

    def __init__(self, x, order: np.ndarray | None = None, chunk: int = 4096) -> None:
        self.x, self.order, self.chunk = x, order, chunk

    def __len__(self) -> int:
        return len(self.x) if self.order is None else len(self.order)

    def block(self, start: int, stop: int, device: torch.device) -> torch.Tensor:
        if self.order is None:
            return _as_fp32(self.x[start:stop], device)
        idx = self.order[start:stop]
        return _as_fp32(self.x[torch.from_numpy(idx)] if torch.is_tensor(self.x) else self.x[idx], device)

    def whole(self, device: torch.device) -> torch.Tensor:
        if self.order is None:
            return _as_fp32(self.x, device)
        out = torch.empty((len(self), *self.x.shape[1:]), dtype=torch.float32, device=device)
        for s in range(0, len(self), self.chunk):  # filled in chunks: no float64 copy of the whole array
            out[s : s + self.chunk] = self.block(s, s + self.chunk, device)
        return out


def _blocks(x, y: torch.Tensor, block_elems: int):
    """(start, distances of rows start.. of x to every row of y), in blocks of bounded size; ``x`` is a
    tensor, or ``Rows`` made fp32 one block at a time.

    Every block is written into one buffer, so a block is valid until the next one is asked for (the
    callers reduce it at once): one block's memory instead of two, and no fresh pages per block."""
    yn = y.pow(2).sum(1)
    rows = max(1, block_elems // max(1, len(y)))
    buf = torch.empty((min(rows, len(x)), len(y)), dtype=y.dtype, device=y.device)
    for s in range(0, len(x), rows):
        xb = x.block(s, s + rows, y.device) if isinstance(x, Rows) else x[s : s + rows]
        d = torch.addmm(yn.unsqueeze(0), xb, y.T, alpha=-2, out=buf[: len(xb)])  # |y|^2 - 2 x.y, then + |x|^2
        d.add_(xb.pow(2).sum(1, keepdim=True)).clamp_min_(0).sqrt_()
        yield s, d


Range = tuple[int, int]  # rows [start, stop) of one slice, in the order of the feature array


def _rows_in(block: Range, rows: Range) -> Range | None:
    lo, hi = max(block[0], rows[0]), min(block[1], rows[1])
    return (lo, hi) if lo < hi else None


def _radii(x: torch.Tensor, slices: list[tuple[Range, tuple[int, ...]]], block_elems: int) -> list[dict]:
    """Per slice (its rows of x, its ks): k -> the (k+1)-th smallest distance of each of its rows to its
    own rows (itself included).

    The distances of a set to itself are symmetric, so each pair is formed once, which halves the
    multiply-adds of the pass: row block I is multiplied with the rows from its own start on (its
    diagonal block and every later one).  Its rows take their top-k along the block's rows (their
    distances to every column from the block's start on); the later columns take theirs down the block's
    columns (their distances to the block's rows, which lie before them).  So every row meets every
    column of its slice exactly once, and its candidates (the k+1 smallest so far) are merged block by
    block.  Both rows of a pair read the same number: the matrix is exactly symmetric.  Clamping at 0
    and the root are applied to the k values at the end (both monotone, so they commute with the
    order statistic, bit for bit)."""
    out = [{k: torch.empty(b - a, dtype=x.dtype, device=x.device) for k in ks} for (a, b), ks in slices]
    active = [(i, a, b, max(ks) + 1) for i, ((a, b), ks) in enumerate(slices) if ks]
    if not active:
        return out  # no slice needs a radius on this side: no pass
    n = len(x)
    xn = x.pow(2).sum(1)
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    best = {i: inf.expand(b - a, kk).clone() for i, a, b, kk in active}
    rows = max(1, block_elems // max(1, n))
    flat = torch.empty(min(rows, n) * n, dtype=x.dtype, device=x.device)  # one buffer for every block
    for s in range(0, n, rows):
        e = min(s + rows, n)
        d = flat[: (e - s) * (n - s)].view(e - s, n - s)
        torch.addmm(xn[s:].unsqueeze(0), x[s:e], x[s:].T, alpha=-2, out=d)  # |y|^2 - 2 x.y ...
        d.add_(xn[s:e].unsqueeze(1))  # ... + |x|^2: every column's order needs the row term
        for i, a, b, kk in active:
            lo, hi = max(s, a), min(e, b)  # the slice's rows in this block
            if lo >= hi:
                continue
            along = d[lo - s : hi - s, lo - s : b - s]  # to the slice's columns from the block's rows on
            _merge(best[i], lo - a, hi - a, along.topk(min(kk, along.shape[1]), dim=1, largest=False).values, kk)
            c0 = max(e, a)  # the slice's columns after the block, from the block's rows of the slice
            if c0 < b:
                down = d[lo - s : hi - s, c0 - s : b - s]
                top = down.topk(min(kk, down.shape[0]), dim=0, largest=False).values.T
                _merge(best[i], c0 - a, b - a, top, kk)
    for i, *_ in active:
        vals = best[i].clamp_min_(0).sqrt_()
        for k in slices[i][1]:
            out[i][k] = vals[:, k]
    return out


def _merge(best: torch.Tensor, lo: int, hi: int, new: torch.Tensor, kk: int) -> None:
    """Rows lo..hi of ``best`` (each row's kk smallest so far, ascending) merged with ``new``."""
    both = torch.cat([best[lo:hi], new], dim=1)
    best[lo:hi] = both.topk(kk, dim=1, largest=False, sorted=True).values


def knn_metrics(gen, ref, *, k: int, dc_k: int, device: torch.device | str | None = None,
                block_elems: int = BLOCK_ELEMS) -> KnnMetrics:
    """Precision / recall (k-NN radius ``k``) and density / coverage (``dc_k``) in three passes.

    ``gen`` and ``ref`` are [n, d] feature arrays (numpy or torch); the pass runs in fp32 on
    ``device`` (default: where ``gen`` lies, the CPU for numpy).  Precision / recall need more
    than k samples on both sides, density / coverage more than dc_k reference samples and one
    generated sample; a pair that cannot be computed carries its reason instead.
    """
    return knn_slices(gen, ref, [((0, len(gen)), (0, len(ref)))], k=k, dc_k=dc_k, device=device,
                      block_elems=block_elems)[0]


def knn_slices(gen, ref, slices: list[tuple[Range, Range]], *, k: int, dc_k: int,
               device: torch.device | str | None = None, block_elems: int = BLOCK_ELEMS) -> list[KnnMetrics]:
    """``knn_metrics`` of many slices from one set of three passes.

    A slice is (its generated rows, its reference rows) as ranges [start, stop), so the rows must be
    ordered with every slice contiguous (overall, then groups, then classes nest when sorted by group
    and class).  A slice's distances are the sub-block of the distance block rows x all columns that
    the pass forms anyway, so every slice costs a top-k and the comparisons on its sub-block, not
    another GEMM: overall + 3 groups + C classes cost about one overall pass.  The values are those of
    ``knn_metrics`` on the slice alone (same distances, same comparisons), except that a distance
    within fp32 rounding of a radius may fall the other way where the GEMM rounds a dot product
    differently for a differently shaped operand.
    """
    dev = torch.device(device) if device is not None else (gen.device if torch.is_tensor(gen) else torch.device("cpu"))
    plans = []
    for (ga, gb), (ra, rb) in slices:
        n_gen, n_ref = gb - ga, rb - ra
        pr_skip = (_need(n_gen, k + 1, f"precision/recall (k={k})", "generated")
                   or _need(n_ref, k + 1, f"precision/recall (k={k})", "reference"))
        dc_skip = (_need(n_ref, dc_k + 1, f"density/coverage (k={dc_k})", "reference")
                   or _need(n_gen, 1, "density/coverage", "generated"))
        plans.append((pr_skip, dc_skip))
    if all(pr and dc for pr, dc in plans):
        return [KnnMetrics(pr_skip=pr, dc_skip=dc) for pr, dc in plans]
    gen, ref = (a if isinstance(a, Rows) else Rows(a) for a in (gen, ref))
    with _exact_fp32(dev), torch.no_grad():
        # one fp32 copy at a time: the generated radii from the whole generated set, which then goes;
        # the reference radii, and the cross pass over the generated rows a block at a time
        gen_slices = [(gr, () if pr else (k,)) for (gr, _), (pr, _) in zip(slices, plans)]
        gen_radius = _radii(gen.whole(dev), gen_slices, block_elems) if any(ks for _, ks in gen_slices) else \
            [{} for _ in slices]  # fmt: skip
        r = ref.whole(dev)
        ref_ks = [tuple(kk for kk, skip in ((k, pr), (dc_k, dc)) if not skip) for pr, dc in plans]
        ref_radii = _radii(r, [(rr, ks) for (_, rr), ks in zip(slices, ref_ks)], block_elems)
        zero = torch.zeros((), dtype=torch.int64, device=dev)
        in_ref_ball = [zero.clone() for _ in slices]  # generated rows inside a ref ball (k)
        inside = [zero.clone() for _ in slices]  # density: (gen, ref ball) pairs, dc_k
        covered = [torch.zeros(rb - ra, dtype=torch.bool, device=dev) for _, (ra, rb) in slices]  # recall
        near = [torch.zeros(rb - ra, dtype=torch.bool, device=dev) for _, (ra, rb) in slices]  # coverage
        scratch = None  # d - radius, one buffer for every block and slice
        for s, d in _blocks(gen, r, block_elems):
            if scratch is None:
                scratch = torch.empty_like(d)
            for i, (((ga, gb), (ra, rb)), (pr, dc)) in enumerate(zip(slices, plans)):
                rows = _rows_in((s, s + len(d)), (ga, gb)) if not (pr and dc) else None
                if rows is None:
                    continue
                sub = d[rows[0] - s : rows[1] - s, ra:rb]
                diff = scratch[: sub.shape[0], : sub.shape[1]]
                if not pr:
                    # "some d <= r" is "min (d - r) <= 0": a difference of two finite floats is 0 only when
                    # they are equal and has the sign of the true difference, so the test is exact; a
                    # subtraction and a min reduce faster than a comparison and an any
                    torch.sub(sub, ref_radii[i][k], out=diff)
                    in_ref_ball[i] += (diff.amin(1) <= 0).sum()
                    torch.sub(sub, gen_radius[i][k][rows[0] - ga : rows[1] - ga].unsqueeze(1), out=diff)
                    covered[i] |= diff.amin(0) <= 0
                if not dc:
                    ball = sub < ref_radii[i][dc_k]
                    inside[i] += torch.count_nonzero(ball)  # a count of a bool block: 8x faster than its sum
                    near[i] |= ball.any(0)
        out = []
        for i, (((ga, gb), (ra, rb)), (pr, dc)) in enumerate(zip(slices, plans)):
            n_gen, n_ref = gb - ga, rb - ra
            values = {}
            if not pr:
                values.update(precision=in_ref_ball[i].item() / n_gen, recall=covered[i].sum().item() / n_ref)
            if not dc:
                values.update(density=inside[i].item() / (dc_k * n_gen), coverage=near[i].sum().item() / n_ref)
            out.append(KnnMetrics(**values, pr_skip=pr, dc_skip=dc))
    return out


def _as_fp32(a, device: torch.device) -> torch.Tensor:
    if torch.is_tensor(a):
        return a.to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)


def inside_balls(x, ref, *, k: int, device: torch.device | str | None = None,
                 block_elems: int = BLOCK_ELEMS) -> np.ndarray:
    """Per row of ``x``: does it lie inside the k-NN ball of at least one row of ``ref``?

    Improved precision's per-sample test (distance ``<=`` the (k+1)-th smallest distance of a reference
    row to the reference, itself included), by the same passes as ``knn_slices``: its mean is that
    function's precision.  ``ref`` needs more than k rows."""
    if len(ref) < k + 1:
        raise MetricError(f"the k-NN manifold (k={k}) needs at least {k + 1} reference samples, got {len(ref)}")
    dev = torch.device(device) if device is not None else (x.device if torch.is_tensor(x) else torch.device("cpu"))
    g, r = (_as_fp32(a, dev) for a in (x, ref))
    with _exact_fp32(dev), torch.no_grad():
        radius = _radii(r, [((0, len(r)), (k,))], block_elems)[0][k]
        hit = torch.zeros(len(g), dtype=torch.bool, device=dev)
        scratch = None
        for s, d in _blocks(g, r, block_elems):
            scratch = torch.empty_like(d) if scratch is None else scratch
            hit[s : s + len(d)] = torch.sub(d, radius, out=scratch[: len(d)]).amin(1) <= 0  # "some d <= r", exact
    return hit.cpu().numpy()
