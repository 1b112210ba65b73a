"""Names shared by every stage: the pseudo-method of real data, metric and group names.

One place for each: the metrics write these strings into ``results.csv`` and the report reads
them back, so a renamed metric can never leave a plot reading a column that no longer exists.
The strings themselves are the published format of ``results.csv``: change a constant's name
freely, its value only with a note in the README's results section.
"""

REAL = "real"  # pseudo-method: real held-out images (metric floor) and the real-LT classifier

# ---------------------------------------------------------------- values of the `group` column
ALL = "all"  # the whole set
MANY, MEDIUM, FEW = "many", "medium", "few"  # the frequency groups, head to tail
GROUPS = (MANY, MEDIUM, FEW)
CLASS = "class"  # one row per class; the class index is in the `class` column

# ---------------------------------------------------------------- values of the `metric` column
FID = "fid"
KID = "kid"
PRECISION, RECALL = "precision", "recall"  # improved precision/recall (one k-NN pass)
DENSITY, COVERAGE = "density", "coverage"  # Naeem et al. 2020 (one k-NN pass)
IS = "is"  # Inception Score (Inception features only)
LABEL_ACC = "label_acc"  # the evaluator's accuracy on the generated images' intended labels
EVALUATOR_ACC = "evaluator_acc"  # the classifier feature space's accuracy on the real test set
EVALUATOR_BALANCED_ACC = "evaluator_balanced_acc"  # its mean per-class recall: what the trust gate judges
CAS_ACC = "cas_acc"  # classifier trained on generated images, tested on real (CAS)
AUG_ACC = "aug_acc"  # classifier trained on real-LT + generated images
REAL_ACC = "real_acc"  # classifier trained on the real long-tailed set alone (downstream baseline)
TRAIN_COUNT = "train_count"  # training images per class (a per-class row of every cell)
VENDI = "vendi"  # Vendi score of the generated images (cosine kernel)
VENDI_REAL = "vendi_real"  # Vendi score of real reference images at the same n per class
VENDI_RATIO = "vendi_ratio"  # vendi / vendi_real: 1 = as diverse as real data (rewards noisy samples)
VENDI_INLIER = "vendi_inlier"  # Vendi of the generated images inside their class's real manifold x their fraction
VENDI_INLIER_REAL = "vendi_inlier_real"  # the same of held-out real images of the class
VENDI_INLIER_RATIO = "vendi_inlier_ratio"  # vendi_inlier / vendi_inlier_real: 1 = as diverse as real, noise lowers it
MEMORIZATION = "memorization"  # fraction of generated images with d1/d2 < 1/3 to their class's training images
MEMORIZATION_PIXEL = "memorization_pixel"  # the same test on raw pixels (feature_space PIXEL)
# FID of each half of a generated set (even / odd sample index within each class) against the whole
# reference: a setting chosen on one half is reported on the other (report/robustness.py)
FID_HALF_A, FID_HALF_B = "fid_half_a", "fid_half_b"


def ci_low(metric: str) -> str:
    """The metric name of the lower end of ``metric``'s 95% interval (e.g. 'fid_ci_low')."""
    return f"{metric}_ci_low"


def ci_high(metric: str) -> str:
    return f"{metric}_ci_high"


def is_interval(metric: str) -> bool:
    return metric.endswith(("_ci_low", "_ci_high"))


def class_mean(metric: str) -> str:
    """The mean of a group's per-class values of ``metric`` (e.g. 'fid_classmean'); group rows pool."""
    return f"{metric}_classmean"


def at_floor_n(metric: str) -> str:
    """``metric`` of a method scored at the real floor's n (e.g. 'fid_at_floor_n')."""
    return f"{metric}_at_floor_n"


# ---------------------------------------------------------------- values of the `feature_space` column
NO_FEATURES = "none"  # rows that use no feature space (downstream accuracy, class counts)
PIXEL = "pixel"  # rows measured on raw pixels (pixel-space memorisation)
FEATURE_FREE = (NO_FEATURES, PIXEL)  # rows the report shows in every feature space's table

UNTRUSTED_NOTE = "untrusted-evaluator"  # in the note of every row scored by an evaluator that failed its trust gate


def dataset_slug(spec: str) -> str:
    """The dataset's name in folders and rows ('imagefolder:/data/x' -> 'imagefolder-x')."""
    if spec.startswith("imagefolder:"):
        return "imagefolder-" + spec.split(":", 1)[1].rstrip("/").rpartition("/")[2]
    return spec


def cell_folder(out, dataset: str, profile: str, imbalance: float, method: str, seed: int):
    """Where a grid cell's files live under the results folder ``out`` (the report finds samples here)."""
    from pathlib import Path

    return Path(out) / "runs" / dataset_slug(dataset) / f"{profile}-{imbalance:g}" / method.replace("+", "_") / f"seed{seed}"
