"""Precision, recall, density and coverage from one chunked set of k-NN passes.

Improved precision / recall (Kynkaanniemi et al. 2019) and density / coverage (Naeem et al.
2020) all compare generated-to-reference distances with k-NN radii.  Computed one by one
(torch-fidelity's precision/recall, then density/coverage) they cost six n x n distance passes
and hold n x n matrices; computed together they need three, each in blocks of rows:

1. reference x reference: one top-(max(k, dc_k) + 1) per row gives both reference radii;
2. generated x generated: the k-NN radius of every generated sample (recall's balls);
3. generated x reference: each block yields all four metrics at once:
   precision (a generated row inside any reference ball, ``<=``), recall (a reference column
   inside any generated ball, ``<=``), density (how many reference balls hold a generated row,
   ``<``) and coverage (a reference column whose nearest generated sample lies inside its ball,
   ``<``).  The comparisons are exactly those of torch-fidelity and of Naeem et al.

A radius is the (k+1)-th smallest distance of a row, the point itself included, which is
torch-fidelity's ``kthvalue(k + 1)``.  Distances are fp32 ``sqrt(max(|x|^2 + |y|^2 - 2 x.y, 0))``,
the arithmetic ``torch.cdist`` uses at these sizes, with TF32 off on CUDA.  A block holds at
most ``block_elems`` distances (rows x all columns), so memory is bounded and no n x n matrix
exists.  Cost: 2 d (n_ref^2 + n_gen^2 + n_gen n_ref) multiply-adds counted as FLOP
(``knn_flops``), the lower bound of any exact method that looks at every pair.
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


def knn_flops(n_gen: int, n_ref: int, dim: int) -> float:
    """FLOP of the three passes (the multiply-adds of the three distance products)."""
    return 2.0 * dim * (n_ref * n_ref + n_gen * n_gen + n_gen * n_ref)


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


def _blocks(x: torch.Tensor, y: torch.Tensor, block_elems: int):
    """(start, distances of rows start.. of x to every row of y), in blocks of bounded size."""
    yn = y.pow(2).sum(1)
    rows = max(1, block_elems // max(1, len(y)))
    for s in range(0, len(x), rows):
        xb = x[s : s + rows]
        d = torch.addmm(yn.unsqueeze(0), xb, y.T, alpha=-2)  # |y|^2 - 2 x.y, then + |x|^2
        d.add_(xb.pow(2).sum(1, keepdim=True)).clamp_min_(0).sqrt_()
        yield s, d


def _radii(x: torch.Tensor, ks: tuple[int, ...], block_elems: int) -> dict[int, torch.Tensor]:
    """k -> the (k+1)-th smallest distance of each row of x to x (itself included), one top-k."""
    top = max(ks) + 1
    out = {k: torch.empty(len(x), dtype=x.dtype, device=x.device) for k in ks}
    for s, d in _blocks(x, x, block_elems):
        vals = d.topk(top, dim=1, largest=False, sorted=True).values
        for k in ks:
            out[k][s : s + len(d)] = vals[:, k]
    return out


def knn_metrics(gen, ref, *, k: int, dc_k: int, device: torch.device | str | None = None,
                block_elems: int = BLOCK_ELEMS) -> KnnMetrics:
    """Precision / recall (k-NN radius ``k``) and density / coverage (``dc_k``) in three passes.

    ``gen`` and ``ref`` are [n, d] feature arrays (numpy or torch); the pass runs in fp32 on
    ``device`` (default: where ``gen`` lies, the CPU for numpy).  Precision / recall need more
    than k samples on both sides, density / coverage more than dc_k reference samples and one
    generated sample; a pair that cannot be computed carries its reason instead.
    """
    n_gen, n_ref = len(gen), len(ref)
    pr_skip = (_need(n_gen, k + 1, f"precision/recall (k={k})", "generated")
               or _need(n_ref, k + 1, f"precision/recall (k={k})", "reference"))
    dc_skip = (_need(n_ref, dc_k + 1, f"density/coverage (k={dc_k})", "reference")
               or _need(n_gen, 1, "density/coverage", "generated"))
    if pr_skip and dc_skip:
        return KnnMetrics(pr_skip=pr_skip, dc_skip=dc_skip)
    dev = torch.device(device) if device is not None else (gen.device if torch.is_tensor(gen) else torch.device("cpu"))
    g, r = (_as_fp32(a, dev) for a in (gen, ref))
    with _exact_fp32(dev), torch.no_grad():
        ks = tuple(kk for kk, skip in ((k, pr_skip), (dc_k, dc_skip)) if not skip)
        ref_radii = _radii(r, ks, block_elems)
        gen_radius = None if pr_skip else _radii(g, (k,), block_elems)[k]
        in_ref_ball = torch.zeros((), dtype=torch.int64, device=dev)  # generated rows inside a ref ball (k)
        covered = torch.zeros(n_ref, dtype=torch.bool, device=dev)  # recall: ref inside a gen ball
        inside = torch.zeros((), dtype=torch.int64, device=dev)  # density: (gen, ref ball) pairs, dc_k
        near = torch.zeros(n_ref, dtype=torch.bool, device=dev)  # coverage: a gen sample inside the ref ball
        for s, d in _blocks(g, r, block_elems):
            if not pr_skip:
                in_ref_ball += (d <= ref_radii[k]).any(1).sum()
                covered |= (d <= gen_radius[s : s + len(d)].unsqueeze(1)).any(0)
            if not dc_skip:
                ball = d < ref_radii[dc_k]
                inside += ball.sum()
                near |= ball.any(0)
        out = {}
        if not pr_skip:
            out.update(precision=in_ref_ball.item() / n_gen, recall=covered.sum().item() / n_ref)
        if not dc_skip:
            out.update(density=inside.item() / (dc_k * n_gen), coverage=near.sum().item() / n_ref)
    return KnnMetrics(**out, pr_skip=pr_skip, dc_skip=dc_skip)


def _as_fp32(a, device: torch.device) -> torch.Tensor:
    if torch.is_tensor(a):
        return a.to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)
