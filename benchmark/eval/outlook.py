"""What an evaluation will be able to say, known before anything is trained.

``evaluator_outlook(dataset, cfg)`` returns the lines a run prints before its first cell (and
that a preflight can show): which feature space 'auto' resolves to and, when that is the
classifier evaluator, how reliable it can be at this data's size: its training images per
class, its held-out test set, and the balanced accuracy the trust gate needs there.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from benchmark.core.config import EvalConfig
from benchmark.core.errors import ConfigError
from benchmark.data.reference import validation_split
from benchmark.eval.classifier import EVALUATOR_SEED
from benchmark.eval.features import (
    INCEPTION_FILE,
    default_space,
    inception_weights_absent,
    resolve_feature_space_name,
    resolve_inception_weights,
)
from benchmark.eval.trust import ALPHA, MIN_RATIO

Z_ONE_SIDED = {0.01: 2.326, 0.05: 1.645}


def gate_bar(test_per_class: np.ndarray) -> tuple[float, float]:
    """(threshold of the size rule, about the balanced accuracy significance needs) at this test set.

    The second is the normal approximation of the permutation test's critical value when the
    evaluator's guesses are spread evenly over the classes: chance + z * sd, with
    sd^2 = sum_c (1/C)(1 - 1/C) / n_c / C^2 (a guide; the gate itself runs the exact test)."""
    n = np.asarray([x for x in test_per_class if x > 0], dtype=np.float64)
    if len(n) < 2:
        return float("nan"), float("nan")
    k = len(n)
    chance = 1.0 / k
    sd = math.sqrt(float(np.sum(chance * (1 - chance) / n)) / k**2)
    return min(MIN_RATIO * chance, (1 + chance) / 2), chance + Z_ONE_SIDED.get(ALPHA, 2.326) * sd


def reliability(smallest_train: int, *, natural: bool) -> str:
    """A rough guide from the smallest class's training images (the evaluator learns every class)."""
    if smallest_train < 20:
        level = "low: a class with fewer than 20 training images is barely learnt; expect noisy features, maybe a failed gate"
    elif smallest_train < 100:
        level = "moderate: enough for simple, centred images (digits, clothing), weak for natural photos"
    else:
        level = "good for simple, centred images; pretrained features are still the stronger choice for natural photos"
    return level + ("" if not natural else "; these look like natural (colour or >= 32 px) images")


def evaluator_outlook(dataset, cfg: EvalConfig) -> list[str]:
    """Lines to print before training: the resolved feature space, and the classifier's outlook."""
    lines = []
    resolved = resolve_feature_space_name(cfg.feature_space, dataset, cfg)
    source = dataset.source
    if cfg.feature_space == "auto" and default_space(source.name) == "inception" and resolved == "classifier":
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        lines.append(
            f"note: eval.feature_space=auto resolves to inception for {source.name}, but the Inception weights are "
            f"absent ({INCEPTION_FILE} is not in {hub}, and neither --inception-weights nor LTGEN_INCEPTION_WEIGHTS "
            "is set; nothing is downloaded). This run falls back to the classifier feature space: a small CNN "
            "trained on this dataset's own images. For natural images pass --inception-weights PATH (or put "
            "the DINOv2 weights in the torch hub cache and set eval.feature_space=dinov2)."
        )
    if resolved == "inception" and inception_weights_absent(cfg):
        try:
            resolve_inception_weights(cfg)
        except ConfigError as err:  # before any training: the fix, and what the classifier would give here
            raise ConfigError(f"{err} With the classifier here: {_classifier_line(dataset, cfg)}") from None
    if resolved != "classifier":
        return lines
    return lines + [_classifier_line(dataset, cfg)]


def _classifier_line(dataset, cfg: EvalConfig) -> str:
    source = dataset.source
    pool = source.train.labels.numpy()
    k = len(source.class_names)
    train_idx, _ = validation_split(pool, seed=EVALUATOR_SEED)  # the evaluator's own split
    per_class = np.bincount(pool[train_idx], minlength=k)
    test = np.bincount(source.test.labels.numpy(), minlength=k)
    size_bar, p_bar = gate_bar(test)
    natural = source.channels == 3 or source.resolution >= 32
    return (
        f"classifier evaluator: trains on {int(per_class.sum())} images ({int(per_class.min())}..{int(per_class.max())} "
        f"per class, class-balanced draws, at most {cfg.classifier_epochs} epochs), tested on {int(test.sum())} "
        f"held-out images (smallest class {int(test.min())}). Expected reliability: "
        f"{reliability(int(per_class.min()), natural=natural)}. The trust gate passes it only at a balanced "
        f"accuracy >= {size_bar:.3f} (2 x chance) that is also significant at p < {ALPHA:g} "
        f"(about >= {p_bar:.3f} at this test set); otherwise its rows are flagged and not ranked."
    )
