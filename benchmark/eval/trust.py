"""The evaluator's trust gate: is a trained classifier feature space clearly better than chance?

Features of a classifier that cannot tell the classes apart are near-constant, so every FID
between them is about 0 and a leaderboard built on them ranks noise.  The gate looks at the
evaluator's accuracy on real images it never saw in training (the held-out test / reference
images), per class, and passes it only when both hold:

1. **significance**: a one-sided permutation test of the balanced accuracy (mean per-class
   recall, whose chance level is 1 / C for any rule that ignores the image, however unbalanced
   the test set) rejects "predictions independent of the labels" at ``ALPHA`` = 0.01; the true
   labels are shuffled ``PERMUTATIONS`` = 2000 times (seeded), predictions fixed, so the test is
   exact at the held-out n (on a balanced test set it is the binomial test against 1 / C);
2. **size**: the balanced accuracy is at least ``min(MIN_RATIO * chance, (1 + chance) / 2)``,
   twice chance (capped half-way to 1 for two or three classes), so a large test set cannot
   certify an evaluator that is only a little better than guessing.

An evaluator that fails keeps working (its cell finishes and writes its rows), but every row
from its feature space carries the note ``untrusted-evaluator`` and the leaderboard ranks
nothing in that table and says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from benchmark.core.names import UNTRUSTED_NOTE  # noqa: F401  (the note's home: the report reads it too)

ALPHA = 0.01
MIN_RATIO = 2.0
PERMUTATIONS = 2000
RULE = (f"balanced accuracy on held-out real images above chance by a one-sided permutation test "
        f"(p < {ALPHA:g}, {PERMUTATIONS} label shuffles) and at least min({MIN_RATIO:g} x chance, (1 + chance) / 2)")


@dataclass(frozen=True)
class TrustVerdict:
    trusted: bool
    balanced_acc: float
    chance: float
    threshold: float
    p_value: float
    n_test: int
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        return (f"held-out balanced accuracy {self.balanced_acc:.3f} on {self.n_test} images, chance "
                f"{self.chance:.3f}, needs >= {self.threshold:.3f} and p < {ALPHA:g} (p = {self.p_value:.3g})")


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, classes: np.ndarray) -> float:
    return float(np.mean([(y_pred[y_true == c] == c).mean() for c in classes]))


def _permuted_balanced_acc(y_true: np.ndarray, y_pred: np.ndarray, classes: np.ndarray, *, permutations: int,
                           seed: int) -> np.ndarray:
    """Balanced accuracy under ``permutations`` seeded shuffles of the true labels (predictions fixed)."""
    k = len(classes)
    true_idx = np.searchsorted(classes, y_true)
    pos = np.searchsorted(classes, y_pred).clip(0, k - 1)
    pred_idx = np.where(classes[pos] == y_pred, pos, -1)  # a predicted class absent from the test set never hits
    counts = np.bincount(true_idx, minlength=k).astype(np.float64)
    rng = np.random.RandomState(seed)
    out = np.empty(permutations)
    chunk = max(1, 2_000_000 // max(1, len(y_true)))
    for start in range(0, permutations, chunk):
        stop = min(permutations, start + chunk)
        shuffled = np.stack([rng.permutation(true_idx) for _ in range(start, stop)])  # [b, n]
        hit = shuffled == pred_idx[None, :]
        rows = np.broadcast_to(np.arange(stop - start)[:, None], shuffled.shape)
        per_class = np.bincount((rows * k + shuffled)[hit], minlength=(stop - start) * k).reshape(-1, k)
        out[start:stop] = (per_class / counts[None, :]).mean(1)
    return out


def evaluator_trust(y_true, y_pred, *, num_classes: int, seed: int = 0,
                    permutations: int = PERMUTATIONS) -> TrustVerdict:
    """The gate's verdict on an evaluator's predictions for its held-out test images."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    classes = np.unique(y_true)
    n = len(y_true)
    if n == 0 or len(classes) < 2:
        return TrustVerdict(False, float("nan"), float("nan"), float("nan"), float("nan"), n,
                            f"its test set holds {n} images of {len(classes)} class(es); the gate needs two classes")
    chance = 1.0 / len(classes)
    threshold = min(MIN_RATIO * chance, (1.0 + chance) / 2.0)
    bacc = balanced_accuracy(y_true, y_pred, classes)
    null = _permuted_balanced_acc(y_true, y_pred, classes, permutations=permutations, seed=seed)
    p = float((1 + np.sum(null >= bacc - 1e-12)) / (1 + permutations))
    reasons = []
    if p >= ALPHA:
        reasons.append(f"not significantly above chance (p = {p:.3g} >= {ALPHA:g})")
    if bacc < threshold:
        reasons.append(f"below {threshold:.3f} = min({MIN_RATIO:g} x chance, (1 + chance) / 2)")
    missing = num_classes - len(classes)
    if missing:
        reasons.append(f"{missing} class(es) have no test images")
    return TrustVerdict(not reasons, bacc, chance, threshold, p, n, "; ".join(reasons) or "passed")


def fix_advice(*, channels: int, resolution: int, smallest_train: int, has_reference_folder: bool,
               holdout: bool) -> list[str]:
    """What helps an evaluator that fails the gate, most useful first."""
    tips = []
    if channels == 3 or resolution >= 32:
        tips.append("natural images: pretrained features need no training on your data; pass --inception-weights "
                    "PATH (eval.feature_space=inception) or put the DINOv2 weights in the torch hub cache "
                    "(eval.feature_space=dinov2)")
    tips.append(f"more images: the evaluator's smallest class has {smallest_train} training image(s); "
                "a few dozen per class is the least a small CNN learns from")
    if holdout and not has_reference_folder:
        tips.append("a reference folder (data.reference_folder, same class subfolders): a larger, balanced test "
                    "and reference set, and no images taken out of training")
    tips.append("or train it longer (eval.classifier_epochs, the maximum; it stops on a held-out plateau)")
    return tips
