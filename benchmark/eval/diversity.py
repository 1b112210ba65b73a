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

**Vendi rewards noise.**  Without a reference, a set of noisy, off-manifold samples is "diverse":
in the demo, DDPM's blob-like tail classes score the highest Vendi ratios of all classes.  The
``vendi_inlier`` rows fix that with the real data of the class as the judge of what counts:

    vendi_inlier = Vendi(generated images inside the class's real manifold) x (their fraction)

(0 when no image is inside).  The manifold is improved precision's: the union of the k-NN balls
(k = ``eval.pr_k``) of the class's reference images, each image tested against the manifold of
its *own* class, so an image that looks like another class does not count either.  The real
counterpart ``vendi_inlier_real`` is the same statistic of real images that did not build the
manifold: per class and draw, the reference is split at random into n held-out images
(n = min(n_gen, half the class)) and the manifold (the rest); the generated side is n of the
class's generated images tested against that same manifold.  ``vendi_inlier_ratio`` (generated /
real, both averaged over ``draws`` splits) is 1 for a generator that draws from the real
distribution, falls when samples leave the manifold (fewer inliers, each counted once) and when
the inliers collapse onto a few modes (lower Vendi).  Group and overall rows pool the slices'
inliers; a class whose reference is too small for a manifold after the hold-out (fewer than
k + 1 images) is NaN with the reason and left out of its group (named in the group rows' note).
This is the quality-weighted Vendi score of Nguyen and Dieng (2024, qVS = mean quality x Vendi)
with the 0/1 in-manifold test as the quality, except that the Vendi factor is taken over the
inliers only, so off-manifold samples raise neither factor.
"""

from __future__ import annotations

import numpy as np

from benchmark.core.errors import MetricError, failure_note
from benchmark.core.names import (
    ALL,
    CLASS,
    GROUPS,
    VENDI,
    VENDI_INLIER,
    VENDI_INLIER_RATIO,
    VENDI_INLIER_REAL,
    VENDI_RATIO,
    VENDI_REAL,
)
from benchmark.eval.knn import inside_balls

KERNEL = "cosine"


_CHUNK_ROWS = 8192  # rows gathered at a time when a pooled slice's d x d matrix is accumulated


def _eigenvalues(gram: np.ndarray) -> np.ndarray:
    return np.linalg.eigvalsh(gram)


def _entropy_exp(gram: np.ndarray, n: int) -> float:
    """exp of the entropy of the eigenvalues of ``gram / n`` (trace n: the rows are unit vectors)."""
    w = np.clip(_eigenvalues(gram / n), 0.0, None)
    w = w / w.sum()  # the trace is exactly 1 (K_ii = 1); this removes the rounding
    w = w[w > 0]
    return float(np.exp(-(w * np.log(w)).sum()))


def _zero_error(zero: int, n: int) -> MetricError:
    return MetricError(f"{zero} of {n} feature vectors are zero; the cosine kernel is undefined for them")


def vendi_score(features: np.ndarray) -> float:
    """Vendi score (order q = 1) of the rows of ``features`` under the cosine kernel."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise MetricError(f"Vendi needs at least 1 feature vector [n, d], got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    zero = int((norms == 0).sum())
    if zero:
        raise _zero_error(zero, len(x))
    x = x / norms[:, None]
    n, d = x.shape
    return _entropy_exp(x @ x.T if n <= d else x.T @ x, n)  # same nonzero eigenvalues


def pooled_vendi(features: np.ndarray, rows: dict[int, np.ndarray], slices_: list[list[int]]) -> list:
    """Vendi score of the pooled ``rows[c]`` of every class list in ``slices_`` (one value, or the
    exception that slice raised, per list), equal to ``vendi_score(features[concatenated rows])``.

    Scores the overall, group and class slices of one draw without copying a pooled slice: a slice of
    more rows than dimensions accumulates its d x d matrix X^T X over chunks of unit rows, and a slice
    that is the disjoint union of slices already accumulated (overall = the groups) sums their
    matrices, so the overall's pass over the data is not repeated."""
    feats = np.asarray(features)
    d = feats.shape[1]
    grams: dict[frozenset, np.ndarray] = {}

    def unit_chunks(classes):
        idx = np.concatenate([rows[c] for c in classes])
        for lo in range(0, len(idx), _CHUNK_ROWS):
            x = np.asarray(feats[idx[lo : lo + _CHUNK_ROWS]], dtype=np.float64)
            norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # without norm()'s n x d temporary
            x /= np.where(norms == 0, 1.0, norms)[:, None]
            yield x, int((norms == 0).sum())

    out: list = [None] * len(slices_)
    for i in sorted(range(len(slices_)), key=lambda j: sum(len(rows[c]) for c in slices_[j])):  # small first
        classes = [c for c in slices_[i] if len(rows[c])]
        try:
            n = sum(len(rows[c]) for c in classes)
            if n == 0:
                raise MetricError(f"Vendi needs at least 1 feature vector [n, d], got shape (0, {d})")
            if n <= d:  # the n x n Gram matrix of the slice's unit rows
                chunks = list(unit_chunks(classes))
                if zero := sum(z for _, z in chunks):
                    raise _zero_error(zero, n)
                x = np.concatenate([x for x, _ in chunks])
                out[i] = _entropy_exp(x @ x.T, n)
                continue
            left, g, zero = set(classes), np.zeros((d, d)), 0
            for part in sorted(grams, key=len, reverse=True):  # the largest disjoint pieces already summed
                if part <= left:
                    g += grams[part]
                    left -= part
            if left:
                for x, z in unit_chunks(sorted(left)):
                    g += x.T @ x
                    zero += z
            if zero:  # pieces with zero rows were never stored, so the count is the slice's
                raise _zero_error(zero, n)
            grams[frozenset(classes)] = g
            out[i] = _entropy_exp(g, n)
        except Exception as err:  # noqa: BLE001 - the caller turns it into a NaN row with the reason
            out[i] = err
    return out


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
    cuts = slices(groups)
    lists = [classes for _, _, classes in cuts]
    gen_vs = pooled_vendi(gen_feats, gen_pick, lists)
    real_vs = [pooled_vendi(ref_feats, pick, lists) for pick in ref_pick]
    for i, (group, cls, classes) in enumerate(cuts):
        n = sum(m[c] for c in classes)
        note = f"kernel={KERNEL};n_per_class=min(n_gen,n_ref)" + (";pooled" if cls is None else "")
        try:
            if n == 0:
                raise MetricError("no class of this slice has both generated and reference images")
            for v in [gen_vs[i]] + [r[i] for r in real_vs]:
                if isinstance(v, Exception):
                    raise v
            gen_v, real_v = gen_vs[i], float(np.mean([r[i] for r in real_vs]))
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


def inlier_vendi(features: np.ndarray, inside: np.ndarray) -> float:
    """Vendi score of the rows flagged ``inside`` times their fraction of all rows (0 when none is)."""
    inside = np.asarray(inside, dtype=bool)
    if len(inside) == 0:
        raise MetricError("no samples to score")
    kept = np.asarray(features)[inside]
    return 0.0 if len(kept) == 0 else vendi_score(kept) * len(kept) / len(inside)


def vendi_inlier_rows(gen_feats, gen_labels, ref_feats, ref_labels, *, groups: list[str], k: int = 3, seed: int = 0,
                      draws: int = 5, device=None) -> list[dict]:
    """``vendi_inlier``, ``vendi_inlier_real`` and ``vendi_inlier_ratio`` rows overall, per group and per
    class (module docstring): generated and held-out real images inside their class's k-NN manifold."""
    gen_feats = np.asarray(gen_feats, dtype=np.float64)
    ref_feats = np.asarray(ref_feats, dtype=np.float64)
    gen_labels, ref_labels = np.asarray(gen_labels), np.asarray(ref_labels)
    classes_all = range(len(groups))
    gen_idx = {c: np.flatnonzero(gen_labels == c) for c in classes_all}
    ref_idx = {c: np.flatnonzero(ref_labels == c) for c in classes_all}
    held = {c: min(len(gen_idx[c]), len(ref_idx[c]) // 2) for c in classes_all}
    why = {}
    for c in classes_all:
        if not len(gen_idx[c]):
            why[c] = "skipped: the class has no generated images"
        elif len(ref_idx[c]) - held[c] < k + 1:
            why[c] = (f"skipped: the class has {len(ref_idx[c])} reference images; holding out {held[c]} leaves "
                      f"fewer than the k + 1 = {k + 1} its k-NN manifold needs")
    # per draw and class: (generated rows, inside?) and (held-out real rows, inside?), one split per draw
    picks: list[dict] = [{} for _ in range(draws)]
    for c in [c for c in classes_all if c not in why]:
        try:
            for r in range(draws):
                rng = np.random.default_rng([seed, 101 + r, c])
                order = rng.permutation(ref_idx[c])
                real, manifold = order[: held[c]], order[held[c] :]
                gen = _draw(gen_idx[c], held[c], rng)
                base = ref_feats[manifold]
                picks[r][c] = ((gen, inside_balls(gen_feats[gen], base, k=k, device=device)),
                               (real, inside_balls(ref_feats[real], base, k=k, device=device)))
        except Exception as err:  # noqa: BLE001 - the class becomes a NaN row with the reason, the rest is kept
            why[c] = failure_note(err)
            for per_class in picks:
                per_class.pop(c, None)
    usable = [c for c in classes_all if c not in why]
    cuts = slices(groups)
    lists = [[c for c in classes if c in usable] for _, _, classes in cuts]
    # per draw and side: the inliers' Vendi of every slice, scored in one pooled pass per draw
    scored = [[pooled_vendi(gen_feats if side == 0 else ref_feats,
                            {c: per_class[c][side][0][per_class[c][side][1]] for c in usable}, lists)
               for side in (0, 1)] for per_class in picks]  # fmt: skip
    rows = []
    for i, (group, cls, classes) in enumerate(cuts):
        use = [c for c in classes if c in usable]
        left_out = [c for c in classes if c not in usable and len(gen_idx[c])]
        n = sum(held[c] for c in use)
        note = [f"kernel={KERNEL};gate=k-NN manifold of the class's reference (k={k});"
                f"value=vendi(inliers)*inliers/n;n_per_class=min(n_gen,half the class);draws={draws}"]
        if cls is None:
            note.append("pooled")
        if left_out and cls is None:
            note.append("left_out_classes=" + "/".join(map(str, left_out)))
        try:
            if not use:
                raise MetricError(why[cls].removeprefix("skipped: ") if cls is not None and cls in why else
                                  "no class of this slice has generated images and a reference manifold")
            gen_v, real_v, gen_in, real_in = [], [], [], []
            for per_class, by_side in zip(picks, scored):
                for side, values, fractions in ((0, gen_v, gen_in), (1, real_v, real_in)):
                    inside = np.concatenate([per_class[c][side][1] for c in use])
                    kept = int(inside.sum())
                    if kept and isinstance(by_side[side][i], Exception):
                        raise by_side[side][i]
                    values.append(by_side[side][i] * kept / len(inside) if kept else 0.0)  # inlier_vendi
                    fractions.append(inside.mean())
            gen_mean, real_mean = float(np.mean(gen_v)), float(np.mean(real_v))
            if real_mean == 0:
                raise MetricError("no held-out real image lies inside the manifold, so there is no real level")
            values, fractions, reason = (gen_mean, real_mean, gen_mean / real_mean), (np.mean(gen_in), np.mean(real_in)), ""
        except Exception as err:  # noqa: BLE001 - a slice that fails is a NaN row; the other rows are kept
            values, fractions, reason = (float("nan"),) * 3, (float("nan"),) * 2, failure_note(err)
        common = ";".join(note)
        inl = f"inliers={fractions[0]:.3f}", f"real_inliers={fractions[1]:.3f}"
        for metric, value, n_gen, n_ref, extra in (
            (VENDI_INLIER, values[0], n, 0, inl[0]),
            (VENDI_INLIER_REAL, values[1], 0, n, inl[1]),
            (VENDI_INLIER_RATIO, values[2], n, n, ";".join(inl)),
        ):
            rows.append(dict(metric=metric, group=group, **{"class": cls}, n_gen=n_gen, n_ref=n_ref, value=value,
                             note=";".join(p for p in (reason, common, extra if not reason else "") if p)))
    return rows
