"""The arithmetic of FID and KID, exact and cheap enough to repeat for every slice of a cell.

FID = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2).  torch-fidelity takes tr sqrt(S1 S2)
from ``np.linalg.eigvals`` of the non-symmetric product S1 S2, a general D x D eigenproblem
(about 15 s at D = 2048 on two cores).  The same eigenvalues come from a symmetric matrix:

- n > D (``Gaussian`` statistics): factor the reference covariance S2 = F F^T (Cholesky; an
  eigendecomposition, eigenvalues within roundoff of 0 set to 0, when S2 is not numerically
  positive definite).  F^T S1 F is similar to S1 S2 (the eigenvalues of AB and BA agree) and
  symmetric positive semi-definite, so ``eigvalsh`` gives them: about 6x faster, and stable.
  The factor is computed once per reference statistics and kept with them.
- n <= D (singular covariances, ``fid_low_rank``): with A, B the centred feature matrices,
  S1 S2 = A^T A B^T B / ((n1-1)(n2-1)) has the nonzero eigenvalues of C C^T, C = A B^T, an
  n x n symmetric matrix (replacing D x D by n x n; ``eigvalsh`` of C C^T is 4-7x faster than
  the SVD of C at n ~ 1,000-1,700).  Centring makes 1 an exact null vector of C, which would
  come out of C C^T as a roundoff eigenvalue of either sign and enter the sum as sqrt(eps |C|^2);
  a Householder reflection that maps 1 to e_1 removes that row exactly first.

The factorizations (Cholesky, eigh, eigvalsh) run on one BLAS thread (``one_blas_thread``): the
tridiagonal reduction is memory-bound and made 10-20% faster by a second thread on an idle 2-core
machine, while with another process on one core each of its n synchronisations waits for a time
slice (n = 1,000: 10 s on two threads against 0.14 s on one).  So do products too small to share
(under ``SMALL_BLAS_MACS`` multiply-adds: a class slice's KID took 220 ms on two threads, 1 ms on
one); larger GEMMs keep every thread.

Statistics pool exactly (``Gaussian.pooled``: means weighted by counts, scatter matrices summed
with the between-part term), so a group's or the overall covariance is built from its parts'
D x D scatters instead of another pass over the features.

KID (torch-fidelity's unbiased cubic-kernel MMD^2 over random subsets, ``mmd2``) takes the same
subset draws as ``kid_features_to_metric``.  When the kernel matrices over the whole sets have
fewer entries than the subsets together, every subset's three sums come from those matrices,
built block by block and never held whole: sum_{i,j in I} K_ij = 1_I^T K 1_I for the subsets'
indicator vectors (one GEMM per block for all subsets).  Nested slices (overall, groups, classes)
that all take this route share the kernel blocks of the outermost one (``mmd2_slices``).
Otherwise each subset's kernels are formed as torch-fidelity forms them, the cube taken by two
multiplications (``** 3`` is numpy's general power, 100x slower).  Both orders of summation agree
with torch-fidelity to about 1e-13.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import ThreadpoolController
from torch_fidelity.metric_kid import mmd2

KERNEL_BLOCK = 1 << 22  # kernel entries per block of the whole-set path (32 MiB of float64)
SMALL_BLAS_MACS = 1 << 27  # multiply-adds below which a product runs on one BLAS thread (see above)
REFERENCE_SLOTS = 1  # reference statistics kept per process: one cell's full-rank slices (2 D x D each)
_BLAS = ThreadpoolController()


def one_blas_thread():
    """Context in which numpy's BLAS (and LAPACK on top of it) uses one thread."""
    return _BLAS.limit(limits=1, user_api="blas")


# ---------------------------------------------------------------- FID


_SCATTER_ROWS = 8192  # rows centred at a time for a scatter matrix


@dataclass
class Gaussian:
    """Mean and scatter (sum of centred outer products) of n samples; cov = scatter / (n - 1)."""

    n: int
    mean: np.ndarray
    scatter: np.ndarray
    _factor: tuple[np.ndarray, float] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, x: np.ndarray, rows: np.ndarray | None = None) -> Gaussian:
        """The statistics of ``x``, or of ``x[rows]`` (row indices) gathered a chunk at a time: a group
        of a paper-scale cell is 17k x 2048 float64 features (270 MB), which a whole copy would hold."""
        if rows is not None:
            if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
                return cls.of(x[rows[0] : rows[-1] + 1])  # consecutive rows: a view
            if len(rows) <= _SCATTER_ROWS:
                return cls.of(x[rows])
            chunks = [rows[lo : lo + _SCATTER_ROWS] for lo in range(0, len(rows), _SCATTER_ROWS)]
            total = np.zeros(x.shape[1])
            for idx in chunks:  # numpy sums axis 0 row after row: carried on, the sum x[rows].mean(0) takes
                total = np.add.reduce(np.vstack([total[None], x[idx]]), axis=0)
            return cls._scatter(len(rows), total / len(rows), (x[idx] for idx in chunks))
        mean = x.mean(0)
        if len(x) <= _SCATTER_ROWS:
            a = x - mean
            return cls(len(x), mean, a.T @ a)  # numpy's a.T @ a is one symmetric rank-k update
        # no centred copy of 50k x 2048 features (800 MB)
        return cls._scatter(len(x), mean, (x[lo : lo + _SCATTER_ROWS] for lo in range(0, len(x), _SCATTER_ROWS)))

    @classmethod
    def _scatter(cls, n: int, mean: np.ndarray, chunks) -> Gaussian:
        scatter = np.zeros((len(mean), len(mean)))
        for chunk in chunks:
            a = chunk - mean
            scatter += a.T @ a
        return cls(n, mean, scatter)

    @classmethod
    def pooled(cls, parts: list[Gaussian]) -> Gaussian:
        """The statistics of the union of disjoint parts, exact: the scatter about the pooled mean is
        the sum of the parts' scatters plus sum_i n_i (mu_i - mu)(mu_i - mu)^T."""
        if len(parts) == 1:
            return parts[0]
        counts = np.array([p.n for p in parts], dtype=np.float64)
        n = int(counts.sum())
        mean = (counts[:, None] * np.stack([p.mean for p in parts])).sum(0) / n
        d = np.stack([p.mean for p in parts]) - mean
        scatter = sum(p.scatter for p in parts) + (d * counts[:, None]).T @ d
        return cls(n, mean, scatter)

    @property
    def cov(self) -> np.ndarray:
        return self.scatter / (self.n - 1)

    def factor(self) -> tuple[np.ndarray, float]:
        """(F, tr S) with F F^T = S, computed once."""
        if self._factor is None:
            cov = self.cov
            self._factor = (cov_factor(cov), float(np.trace(cov)))
        return self._factor


def cov_factor(cov: np.ndarray) -> np.ndarray:
    """F with F F^T = cov: the Cholesky factor, or U diag(sqrt(l)) when cov is not numerically positive
    definite.  Then eigenvalues under D eps l_max (eigh's error bound) are set to 0: they cannot be told
    from zero, and a roundoff value kept there would add sqrt(eps)-sized terms to tr sqrt(S1 S2)."""
    with one_blas_thread():
        try:
            return np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            w, u = np.linalg.eigh(cov)
    w[w <= len(w) * np.finfo(w.dtype).eps * max(float(w.max()), 0.0)] = 0.0
    return u * np.sqrt(w)


def trace_sqrt_product(cov1: np.ndarray, factor2: np.ndarray) -> float:
    """tr sqrt(S1 S2) for S2 = F F^T: the square roots of the eigenvalues of F^T S1 F."""
    m = factor2.T @ (cov1 @ factor2)
    with one_blas_thread():
        eig = np.linalg.eigvalsh(m)
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Frechet distance of two Gaussians from their statistics (torch-fidelity's
    ``fid_statistics_to_metric`` and clean-fid's ``frechet_distance`` compute the same number)."""
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, cov_factor(sigma2)))


def fid_gaussians(gen: Gaussian, ref: Gaussian) -> float:
    """FID of two sets of statistics; the reference's factor is computed once and kept with it."""
    f, tr_ref = ref.factor()
    cov = gen.cov
    diff = gen.mean - ref.mean
    return float(diff @ diff + np.trace(cov) + tr_ref - 2 * trace_sqrt_product(cov, f))


def slice_statistics(x: np.ndarray, parts: list[tuple[frozenset | None, np.ndarray | None]], *,
                     cache_key: str | None = None) -> list[Gaussian]:
    """Statistics of nested slices of ``x``, each given as (its classes, its row mask; None: every row).

    Smallest first; a slice pools the statistics of the largest disjoint slices inside it and one
    direct pass over its remaining rows, so the features are read about once whatever the nesting
    (overall from groups, groups from classes).  With ``cache_key`` (a ``content_key``) the result
    is kept for the next call with the same reference features, labels and slices: the reference
    is the same for every method and seed of a grid.  The route depends only on the slices, so a
    cached result is bit for bit what a fresh computation gives."""
    if cache_key is not None and cache_key in _REFERENCE:
        _REFERENCE.move_to_end(cache_key)
        return _REFERENCE[cache_key]
    size = [math.inf if c is None else len(c) for c, _ in parts]
    out: dict[int, Gaussian] = {}
    for i in sorted(range(len(parts)), key=size.__getitem__):
        classes, mask = parts[i]
        pieces, taken, covered = [], set(), None
        for j in sorted(out, key=lambda j: -size[j]):
            inner, inner_mask = parts[j]
            if (classes is None or inner <= classes) and taken.isdisjoint(inner):
                pieces.append(out[j])
                taken |= inner
                covered = inner_mask if covered is None else covered | inner_mask
        if covered is None:
            pieces.append(Gaussian.of(x) if mask is None else Gaussian.of(x, np.flatnonzero(mask)))
        else:
            rest = ~covered if mask is None else mask & ~covered
            if rest.any():
                pieces.append(Gaussian.of(x, np.flatnonzero(rest)))
        out[i] = Gaussian.pooled(pieces)
    result = [out[i] for i in range(len(parts))]
    if cache_key is not None:
        _REFERENCE[cache_key] = result
        while len(_REFERENCE) > REFERENCE_SLOTS:
            _REFERENCE.popitem(last=False)
    return result


_REFERENCE: OrderedDict[str, list[Gaussian]] = OrderedDict()


def content_key(feats: np.ndarray, labels: np.ndarray, slices: list[frozenset | None]) -> str:
    """SHA-256 of the features, the labels and the slices' classes (about 2 GB/s)."""
    h = hashlib.sha256()
    for a in (feats, labels):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    h.update(repr([None if c is None else sorted(c) for c in slices]).encode())
    return h.hexdigest()


def clear_reference_cache() -> None:
    """Forget the kept reference statistics (for timing a cold evaluation)."""
    _REFERENCE.clear()


def _deflate(a: np.ndarray) -> np.ndarray:
    """Rows 2.. of H a, H the Householder reflection with H 1/sqrt(n) = e_1: for centred a (1^T a = 0)
    the first row is zero and the rest keeps a^T a, so the known null direction is gone."""
    n = len(a)
    v = np.full(n, 1 / math.sqrt(n))
    v[0] -= 1.0
    return (a - np.outer(v, (2 / (v @ v)) * (v @ a)))[1:]


def fid_low_rank(gen: np.ndarray, ref: np.ndarray) -> float:
    """FID when a covariance is singular (n <= D): the nuclear norm of A B^T from an n x n eigvalsh."""
    n1, n2 = len(gen), len(ref)
    mu1, mu2 = gen.mean(0), ref.mean(0)
    a, b = _deflate(gen - mu1), _deflate(ref - mu2)
    tr1 = np.einsum("ij,ij->", a, a) / (n1 - 1)
    tr2 = np.einsum("ij,ij->", b, b) / (n2 - 1)
    c = a @ b.T
    gram = c @ c.T if len(c) <= c.shape[1] else c.T @ c
    with one_blas_thread():
        eig = np.linalg.eigvalsh(gram)
    nuclear = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + tr1 + tr2 - 2 * nuclear / math.sqrt((n1 - 1) * (n2 - 1)))


# ---------------------------------------------------------------- KID


def poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """torch-fidelity's default kernel (x.y / d + 1)^3, the cube by two multiplications."""
    k = x @ y.T
    k *= 1.0 / x.shape[1]
    k += 1
    cube = k * k
    cube *= k
    return cube


def subset_draws(n1: int, n2: int, m: int, subsets: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (generated, reference) index draws of ``kid_features_to_metric`` with the same seed."""
    rng = np.random.RandomState(seed)
    return [(rng.choice(n1, m, replace=False), rng.choice(n2, m, replace=False)) for _ in range(subsets)]


def whole_set_is_cheaper(n1: int, n2: int, m: int, subsets: int) -> bool:
    """Kernel entries of the whole sets (the symmetric two counted by half) against the subsets'."""
    return n1 * n1 / 2 + n2 * n2 / 2 + n1 * n2 <= 2 * subsets * m * m


def kid_plan(n1: int, n2: int, subsets: int, subset_size: int) -> tuple[int, int]:
    """(subset size, number of subsets) KID uses: the size shrinks to the smaller set, and when both sets
    are that size every subset is the whole of both, so one is computed."""
    m = min(subset_size, n1, n2)
    return m, 1 if m == n1 == n2 else subsets


def mmd2_subsets(gen: np.ndarray, ref: np.ndarray, draws) -> np.ndarray:
    """torch-fidelity's unbiased MMD^2 of every subset draw, by whichever route costs less."""
    m = len(draws[0][0])
    if whole_set_is_cheaper(len(gen), len(ref), m, len(draws)):
        return _mmd2_from_sums(gen, ref, draws, m)
    out = np.empty(len(draws))
    for s, (i, j) in enumerate(draws):
        x, y = gen[i], ref[j]
        out[s] = mmd2(poly_kernel(x, x), poly_kernel(x, y), poly_kernel(y, y))
    return out


def _mmd2_from_sums(gen: np.ndarray, ref: np.ndarray, draws, m: int) -> np.ndarray:
    return mmd2_slices(gen, ref, [((0, len(gen)), (0, len(ref)))], [draws])[0]


Range = tuple[int, int]


def mmd2_slices(gen: np.ndarray, ref: np.ndarray, slices: list[tuple[Range, Range]], draws: list, *,
                gen_order: np.ndarray | None = None, ref_order: np.ndarray | None = None) -> list[np.ndarray]:
    """``mmd2`` (unbiased) of every subset of every slice from the whole-set kernel sums: the same formula,
    (sum K_XX - diag + sum K_YY - diag) / (m (m - 1)) - 2 sum K_XY / m^2, with each sum 1_I^T K 1_J.

    A slice is (generated rows, reference rows) as ranges of the rows in ``gen_order`` / ``ref_order``
    (default: as given), nested or disjoint (overall, groups, classes), and ``draws[i]`` its subsets as
    (generated, reference) row positions in that order.  The kernels are formed once per outermost
    slice, in row blocks of its upper triangle; every slice inside it sums its own sub-blocks, so the
    groups and classes of an overall slice cost their indicator products, not more kernels."""
    gen_order = np.arange(len(gen)) if gen_order is None else gen_order
    ref_order = np.arange(len(ref)) if ref_order is None else ref_order
    by_size = sorted(range(len(slices)), key=lambda i: -(slices[i][0][1] - slices[i][0][0]))
    outer: dict[int, list[int]] = {}
    for i in by_size:
        home = next((o for o in outer if _inside(slices[i], slices[o])), None)
        outer.setdefault(i if home is None else home, []).append(i)
    out: list = [None] * len(slices)
    for o, members in outer.items():
        (ga, gb), (ra, rb) = slices[o]
        x, y = _in_order(gen, gen_order[ga:gb]), _in_order(ref, ref_order[ra:rb])
        parts = []
        for i in members:
            (a, b), (c, e) = slices[i]
            parts.append(((a - ga, b - ga), (c - ra, e - ra), _indicators(b - a, [g - a for g, _ in draws[i]]),
                          _indicators(e - c, [r - c for _, r in draws[i]])))
        xx = _self_sums(x, [(gr, ig) for gr, _, ig, _ in parts])
        yy = _self_sums(y, [(rr, ir) for _, rr, _, ir in parts])
        xy = _cross_sums(x, y, parts)
        for i, (sx, dx), (sy, dy), sxy in zip(members, xx, yy, xy):
            m = len(draws[i][0][0])
            out[i] = (sx - dx + sy - dy) / (m * (m - 1)) - 2 * sxy / (m * m)
    return out


def _in_order(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """x[idx]: a view when idx is a run of consecutive rows (features already in slice order, as the
    generated samples are), else a copy (781 MiB at 50k x 2048 float64)."""
    if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and (np.diff(idx) == 1).all():
        return x[idx[0] : idx[-1] + 1]
    return x[idx]


def _inside(inner: tuple[Range, Range], outer: tuple[Range, Range]) -> bool:
    return all(o[0] <= i[0] and i[1] <= o[1] for i, o in zip(inner, outer))


def _indicators(n: int, draws) -> np.ndarray:
    ind = np.zeros((len(draws), n))
    for s, i in enumerate(draws):
        ind[s, i] = 1.0
    return ind


def _threads(macs: int):
    return one_blas_thread() if macs < SMALL_BLAS_MACS else contextlib.nullcontext()


def _self_sums(x: np.ndarray, parts: list[tuple[Range, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per part (its rows of x, its subsets' indicators): per subset the sum of K = poly_kernel(x, x) over
    I x I and over its diagonal, in row blocks of the upper triangle (off-diagonal blocks counted twice)."""
    n = len(x)
    out = [(np.zeros(len(ind)), np.zeros(len(ind))) for _, ind in parts]
    rows = max(1, KERNEL_BLOCK // max(n, 1))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        with _threads((r1 - r0) * (n - r0) * x.shape[1]):
            k = poly_kernel(x[r0:r1], x[r0:])
        for ((a, b), ind), (total, diag) in zip(parts, out):
            lo, hi = max(a, r0), min(b, r1)
            if lo >= hi:
                continue
            with _threads(len(ind) * (hi - lo) * (b - lo)):
                block, own = k[lo - r0 : hi - r0, lo - r0 : b - r0], ind[:, lo - a : hi - a]
                p = own @ block
                total += (p[:, : hi - lo] * own).sum(1) + 2 * (p[:, hi - lo :] * ind[:, hi - a :]).sum(1)
                diag += own @ np.diagonal(block[:, : hi - lo])
    return out


def _cross_sums(x: np.ndarray, y: np.ndarray, parts) -> list[np.ndarray]:
    """Per part: per subset the sum of poly_kernel(x, y) over I x J, in row blocks of x."""
    out = [np.zeros(len(ig)) for _, _, ig, _ in parts]
    rows = max(1, KERNEL_BLOCK // max(len(y), 1))
    for r0 in range(0, len(x), rows):
        r1 = min(len(x), r0 + rows)
        with _threads((r1 - r0) * len(y) * x.shape[1]):
            k = poly_kernel(x[r0:r1], y)
        for ((a, b), (c, e), ig, ir), total in zip(parts, out):
            lo, hi = max(a, r0), min(b, r1)
            if lo >= hi:
                continue
            with _threads(len(ig) * (hi - lo) * (e - c)):
                total += ((ig[:, lo - a : hi - a] @ k[lo - r0 : hi - r0, c:e]) * ir).sum(1)
    return out
