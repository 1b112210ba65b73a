"""Downstream classifier accuracy: CAS, real+generated augmentation, and the real long-tailed baseline.

- CAS (Ravuri & Vinyals 2019): train on the generated, class-balanced images only.
- Augmentation: the real long-tailed train subset plus generated images filling every class
  up to the head count (the first generated images of each class, in stored order).
- Baseline: the same recipe on the real long-tailed subset alone (cached: it does not depend
  on the generator).
All three test on the real balanced test split with the fixed recipe of classifier.py
(``smallcnn`` for small/gray images, ``resnet32`` for RGB >= 32 px), seeded, and report
overall, many/medium/few and per-class accuracy (rows ``cas_acc``, ``aug_acc``, ``real_acc``).
``n_gen`` is the number of generated training images behind the number (0 for the baseline),
``n_ref`` the number of test images it is measured on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.core.errors import failure_note
from benchmark.core.files import write_text_atomic
from benchmark.core.names import ALL, AUG_ACC, CAS_ACC, CLASS, GROUPS, REAL_ACC
from benchmark.eval.classifier import RECIPE, arch_for, predict, train_classifier


def accuracy_rows(metric: str, correct: np.ndarray, test_labels: np.ndarray, *, groups: list[str],
                  n_gen_per_class: np.ndarray, note: str) -> list[dict]:
    """Overall, group and per-class accuracy rows from per-test-image correctness."""
    rows = []

    def add(group, cls, classes):
        mask = np.isin(test_labels, classes)
        n = int(mask.sum())
        value = float(correct[mask].mean()) if n else float("nan")
        rows.append(dict(metric=metric, group=group, **{"class": cls}, n_gen=int(n_gen_per_class[classes].sum()),
                         n_ref=n, value=value, note=note if n else f"skipped: no test images;{note}"))

    add(ALL, None, list(range(len(groups))))
    for g in GROUPS:
        classes = [c for c, name in enumerate(groups) if name == g]
        if classes:  # an empty group has no rows (see metrics.py)
            add(g, None, classes)
    for c in range(len(groups)):
        add(CLASS, c, [c])
    return rows


def _train_and_test(images, labels, *, dataset, epochs, seed, device, progress, desc) -> tuple[np.ndarray, str]:
    source = dataset.source
    net = train_classifier(images, labels, num_classes=dataset.num_classes, epochs=epochs, seed=seed, device=device,
                           hflip=bool(source.hflip), progress=progress, desc=desc)
    probs, _ = predict(net, source.test.images, device=device)
    correct = probs.argmax(1) == source.test.labels.numpy()
    arch = arch_for(channels=images.shape[1], resolution=images.shape[2])
    return correct, f"recipe={arch}-v{RECIPE['version']};epochs={epochs};seed={seed}"


def cas_rows(gen_images: torch.Tensor, gen_labels: torch.Tensor, *, dataset, epochs: int, seed: int,
             device: torch.device, progress: bool = False) -> list[dict]:
    correct, note = _train_and_test(gen_images, gen_labels, dataset=dataset, epochs=epochs, seed=seed,
                                    device=device, progress=progress, desc="CAS")
    n_gen = np.bincount(gen_labels.numpy(), minlength=dataset.num_classes)
    return accuracy_rows(CAS_ACC, correct, dataset.source.test.labels.numpy(), groups=list(dataset.groups),
                         n_gen_per_class=n_gen, note=note)


def fill_to_head(gen_labels: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of generated images that fill each class up to the head count, and how many each class lacked."""
    need = counts.max() - counts
    picks = [np.flatnonzero(gen_labels == c)[: need[c]] for c in range(len(counts))]
    return np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, np.int64), need


def aug_rows(gen_images: torch.Tensor, gen_labels: torch.Tensor, *, dataset, epochs: int, seed: int,
             device: torch.device, progress: bool = False) -> list[dict]:
    counts = np.asarray(dataset.counts)
    idx, need = fill_to_head(gen_labels.numpy(), counts)
    images = torch.cat([dataset.train_images, gen_images[idx]])
    labels = torch.cat([torch.as_tensor(dataset.train_labels, dtype=torch.int64), gen_labels[idx]])
    correct, note = _train_and_test(images, labels, dataset=dataset, epochs=epochs, seed=seed, device=device,
                                    progress=progress, desc="augmentation")
    used = np.bincount(gen_labels.numpy()[idx], minlength=len(counts))
    short = int((used < need).sum())
    if short:  # fewer generated images than the gap: say so rather than pretend the classes were filled
        note += f";underfilled_classes={short}"
    return accuracy_rows(AUG_ACC, correct, dataset.source.test.labels.numpy(), groups=list(dataset.groups),
                         n_gen_per_class=used, note=note)


def real_rows(*, dataset, epochs: int, seed: int, device: torch.device, cache_dir: Path | None = None,
              progress: bool = False) -> list[dict]:
    """Baseline trained on the real long-tailed subset; cached per (split fingerprint, recipe, seed)."""
    path = None
    if cache_dir is not None:
        name = f"{REAL_ACC}-{dataset.fingerprint}-{arch_for(channels=dataset.channels, resolution=dataset.resolution)}" \
               f"-v{RECIPE['version']}-e{epochs}-s{seed}.json"
        path = Path(cache_dir) / name
        if path.exists():
            return json.loads(path.read_text())
    labels = torch.as_tensor(dataset.train_labels, dtype=torch.int64)
    correct, note = _train_and_test(dataset.train_images, labels, dataset=dataset, epochs=epochs, seed=seed,
                                    device=device, progress=progress, desc="real-LT baseline")
    rows = accuracy_rows(REAL_ACC, correct, dataset.source.test.labels.numpy(), groups=list(dataset.groups),
                         n_gen_per_class=np.zeros(dataset.num_classes, np.int64), note=note)
    if path is not None:
        write_text_atomic(path, json.dumps(rows))
    return rows


def downstream_rows(gen_images, gen_labels, *, dataset, epochs: int, seed: int, device, cache_dir=None,
                    progress: bool = False, include_real: bool = True) -> pd.DataFrame:
    """CAS and augmentation rows (and, with ``include_real``, the real-LT baseline; the grid keeps that
    baseline in its own ``real`` cell so a method's rows hold only what its samples produced)."""
    rows = _guarded(CAS_ACC, dataset, lambda: cas_rows(gen_images, gen_labels, dataset=dataset, epochs=epochs,
                                                       seed=seed, device=device, progress=progress))
    rows += _guarded(AUG_ACC, dataset, lambda: aug_rows(gen_images, gen_labels, dataset=dataset, epochs=epochs,
                                                        seed=seed, device=device, progress=progress))
    if include_real:
        rows += _guarded(REAL_ACC, dataset, lambda: real_rows(dataset=dataset, epochs=epochs, seed=seed, device=device,
                                                              cache_dir=cache_dir, progress=progress))
    return pd.DataFrame(rows)


def _guarded(metric: str, dataset, compute) -> list[dict]:
    """The rows of one downstream accuracy; when it fails, for whatever reason, its rows are NaN with
    the reason in ``note`` (never 0) and the evaluation's other rows are kept."""
    try:
        return compute()
    except Exception as err:  # noqa: BLE001 - one failing classifier must not lose the cell's other rows
        reason = failure_note(err)
        test = dataset.source.test.labels.numpy()
        rows = accuracy_rows(metric, np.zeros(len(test), bool), test, groups=list(dataset.groups),
                             n_gen_per_class=np.zeros(dataset.num_classes, np.int64), note=reason)
        return [dict(r, value=float("nan"), note=reason) for r in rows]
