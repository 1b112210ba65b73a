"""Reference-free diversity per class: the Vendi score of generated and of real images at the same n.

Vendi (Friedman and Dieng 2023) is exp of the Shannon entropy of the eigenvalues of K / n,
K the n x n similarity matrix with K_ii = 1: 1 for n identical items, n for n mutually
orthogonal ones, an "effective number of distinct items".  The kernel here is the cosine
of the feature vectors, the paper's choice for image embeddings, because

- it has no bandwidth to tune, so generated and real sets are scored by the same rule in
  any feature space (classifier, Inception, DINOv2);
- K = X X^T for the row-normalised features X, whose nonzero eigenvalues equal those of the
  d x d matrix X^T X: a set of 50,000 images costs one d x d eigendecomposition, not an
  n x n one (the Gram form is used when n <= d).

Vendi is bounded by n, so it is only comparable at equal n: every slice (overall, group,
class) scores min(n_gen, n_ref) images per class from both sides, the real side drawn from
the reference set of that class and averaged over ``real_draws`` seeded draws when the
reference holds more images than that.  The rows are ``vendi`` (generated), ``vendi_real``
and ``vendi_ratio`` (generated / real: below 1 is less diverse than real data, e.g. mode
collapse).  Group and overall rows pool the images of their classes, like every other group
row, so they include the diversity between classes.  A feature vector of norm zero has no
cosine: such a slice is NaN with the reason.  ``vendi-score``'s ``score_dual`` computes the
same number (cross-checked in the tests); it is not called here because it gives zero vectors
a silent zero row.
"""

from __future__ import annotations

import numpy as np

from benchmark.core.errors import MetricError, failure_note
from benchmark.core.names import ALL, CLASS, GROUPS, VENDI, VENDI_RATIO, VENDI_REAL

KERNEL = "cosine"


def vendi_score(features: np.ndarray) -> float:
    """Vendi score (order q = 1) of the rows of ``features`` under the cosine kernel."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise MetricError(f"Vendi needs at least 1 feature vector [n, d], got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    zero = int((norms == 0).sum())
    if zero:
        raise MetricError(f"{zero} of {len(x)} feature vectors are zero; the cosine kernel is undefined for them")
    x = x / norms[:, None]
    n, d = x.shape
    gram = x @ x.T if n <= d else x.T @ x  # same nonzero eigenvalues
    w = np.clip(np.linalg.eigvalsh(gram / n), 0.0, None)
    w = w / w.sum()  # the trace is exactly 1 (K_ii = 1); this removes the rounding
    w = w[w > 0]
    return float(np.exp(-(w * np.log(w)).sum()))


def slices(groups: list[str]) -> list[tuple[str, int | None, list[int]]]:
    """(group, class, classes) for overall, every non-empty group and every class."""
    out = [(ALL, None, list(range(len(groups))))]
    for g in GROUPS:
        members = [c for c, name in enumerate(groups) if name == g]
        if members:
            out.append((g, None, members))
    out += [(CLASS, c, [c]) for c in range(len(groups))]
    return out


def _draw(idx: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    return idx if m >= len(idx) else np.sort(rng.choice(idx, m, replace=False))


def vendi_rows(gen_feats, gen_labels, ref_feats, ref_labels, *, groups: list[str], seed: int = 0,
               real_draws: int = 5) -> list[dict]:
    """``vendi``, ``vendi_real`` and ``vendi_ratio`` rows overall, per group and per class."""
    gen_feats = np.asarray(gen_feats, dtype=np.float64)
    ref_feats = np.asarray(ref_feats, dtype=np.float64)
    gen_labels = np.asarray(gen_labels)
    ref_labels = np.asarray(ref_labels)
    gen_idx = {c: np.flatnonzero(gen_labels == c) for c in range(len(groups))}
    ref_idx = {c: np.flatnonzero(ref_labels == c) for c in range(len(groups))}
    m = {c: min(len(gen_idx[c]), len(ref_idx[c])) for c in gen_idx}
    # one generated subset per class (the whole class unless the reference is smaller), shared by
    # every slice; real draws seeded per (seed, draw, class), so a class row and its group row agree
    gen_pick = {c: _draw(gen_idx[c], m[c], np.random.default_rng([seed, 0, c])) for c in gen_idx}
    draws = real_draws if any(len(ref_idx[c]) > m[c] for c in ref_idx) else 1
    ref_pick = [{c: _draw(ref_idx[c], m[c], np.random.default_rng([seed, 1 + r, c])) for c in ref_idx}
                for r in range(draws)]
    rows = []
    for group, cls, classes in slices(groups):
        n = sum(m[c] for c in classes)
        note = f"kernel={KERNEL};n_per_class=min(n_gen,n_ref)" + (";pooled" if cls is None else "")
        try:
            if n == 0:
                raise MetricError("no class of this slice has both generated and reference images")
            gen_v = vendi_score(gen_feats[np.concatenate([gen_pick[c] for c in classes])])
            real_v = float(np.mean([vendi_score(ref_feats[np.concatenate([p[c] for c in classes])]) for p in ref_pick]))
            values, why = (gen_v, real_v, gen_v / real_v), ""
        except Exception as err:  # noqa: BLE001 - a slice that fails is a NaN row; the other rows are kept
            values, why = (float("nan"),) * 3, failure_note(err)
        for metric, value, n_gen, n_ref, extra in (
            (VENDI, values[0], n, 0, ""),
            (VENDI_REAL, values[1], 0, n, f"real_draws={draws}"),
            (VENDI_RATIO, values[2], n, n, f"real_draws={draws}"),
        ):
            rows.append(dict(metric=metric, group=group, **{"class": cls}, n_gen=n_gen, n_ref=n_ref, value=value,
                             note=";".join(p for p in (why, note, extra) if p)))
    return rows
