"""Published numbers and what each was measured with, for the leaderboard's reference rows.

Second-hand transcriptions of two tables (check the papers before quoting them): the CORAL
paper's Table 1 and the Capacity Manipulation (CM) paper's table.  A published row is shown
only in a leaderboard whose protocol reproduces its sampler and evaluator (same dataset and
imbalance), and inside it a number enters a column only when it was measured as that column
is: an FID or IS on Inception features; a precision / recall on the same features with the same
k.  Numbers measured otherwise (CORAL's recall: VGG16 features, k = 3) stay in the row's
``settings`` text instead.  Settings a paper does not state are written "not stated".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.core.names import ALL, FEW, FID, IS, MANY, MEDIUM, PRECISION, RECALL
from benchmark.core.presets import DDPM1000_GUIDANCE


@dataclass(frozen=True)
class Measured:
    """How a published row was produced."""

    source: str
    protocol: str  # our protocol with the same sampler and evaluator
    sampler: str  # e.g. "DDPM-1000", "DDIM-100"
    guidance: float | None  # omega; None: not stated
    train_steps: int | None
    batch: int | None
    n_samples: int | None
    features: str = "Inception pool3"  # FID / IS
    pr_features: str | None = None  # precision / recall features, e.g. "VGG16 fc2"
    pr_k: int | None = None
    note: str = ""


@dataclass(frozen=True)
class PublishedRow:
    method: str  # our method name the paper's row stands for
    label: str  # the paper's name
    dataset: str
    imbalance: float
    settings: Measured
    values: dict[tuple[str, str], float] = field(default_factory=dict)  # (metric, group) -> value


def _steps(n: int | None) -> str:
    return "not stated" if n is None else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def describe(m: Measured) -> str:
    """The settings of a published row, as the leaderboard shows them."""
    omega = "not stated" if m.guidance is None else f"{m.guidance:g}"
    if m.train_steps is None and m.batch is None:
        train = "training budget not stated"
    else:
        train = f"{_steps(m.train_steps)} steps x batch {m.batch if m.batch is not None else 'not stated'}"
    images = "number of images not stated" if m.n_samples is None else f"{_steps(m.n_samples)} images"
    parts = [m.sampler, f"guidance {omega}", train, images, m.features]
    if m.pr_features:
        parts.append(f"P/R {m.pr_features} k={m.pr_k}")
    if m.note:
        parts.append(m.note)
    return "; ".join(parts)


# --- protocol A: the CORAL paper's Table 1 (two independent transcriptions agree) ------------------------
# DDPM, CBDM, CORAL: 150k steps x 128 with the CBDM sampler (DDPM-1000); T2H: 200k steps with OC's DDIM-100
# (batch 128, T2H's official one).  omega per method and setting; recall on VGG16 fc2 features with k = 3.
_CORAL = "CORAL paper, Table 1"
_OMEGA_A = DDPM1000_GUIDANCE  # (dataset, imbalance) -> {method: omega}; the protocol samples with them too
_LABEL = {"ddpm": "DDPM", "cbdm": "CBDM", "t2h": "T2H", "coral": "CORAL", "cm": "CM"}


def _coral_table(method: str, dataset: str, imbalance: float, values: dict) -> PublishedRow:
    omega = _OMEGA_A[(dataset, imbalance)][method]
    recall = values.get((RECALL, ALL))
    note = f"recall {recall:.2f} (not the Rec column's measure)" if recall is not None else ""
    if method == "t2h":
        m = Measured(_CORAL, "ddim100", "DDIM-100", omega, 200_000, 128, 50_000, pr_features="VGG16 fc2", pr_k=3,
                     note=note)
    else:
        m = Measured(_CORAL, "ddpm1000", "DDPM-1000", omega, 150_000, 128, 50_000, pr_features="VGG16 fc2", pr_k=3,
                     note=note)
    return PublishedRow(method, _LABEL[method], dataset, imbalance, m, values)


_A = [
    ("cifar100", 0.01, {"ddpm": (7.70, 13.20, 0.50), "cbdm": (6.02, 12.92, 0.56), "t2h": (6.78, 12.97, 0.54),
                        "coral": (5.37, 13.53, 0.59)}),
    ("cifar10", 0.01, {"ddpm": (6.17, None, 0.52), "cbdm": (5.62, None, 0.57), "t2h": (7.01, None, 0.54),
                       "coral": (5.32, None, 0.59)}),
    ("cifar10", 0.001, {"ddpm": (13.05, None, None), "cbdm": (12.74, None, None), "t2h": (12.80, None, None),
                        "coral": (11.03, None, None)}),
]  # fmt: skip

# --- protocol B: the Capacity Manipulation paper (DDIM-50, guidance 1.5, balanced labels) -----------------
# CM's released config: 300k steps x 64 (CM there includes T2H's calibration); the baselines' budgets and the
# sample count of the overall FID are not stated; the many / medium / few FIDs rest on 20k samples per split.
_CM = "Capacity Manipulation paper"


def _cm_row(method: str, dataset: str, values: dict) -> PublishedRow:
    ours = method == "cm"
    note = "many/medium/few FID from 20k samples per split" if len(values) > 1 else ""
    if ours:
        note = "; ".join(p for p in ("CM as released: with T2H's calibration", note) if p)
    m = Measured(_CM, "ddim", "DDIM-50", 1.5, 300_000 if ours else None, 64 if ours else None, None, note=note)
    label = "OC" if method == "t2h" else _LABEL[method]
    return PublishedRow(method, label, dataset, 0.01, m, values)


_B = [
    ("cifar100", {"ddpm": {(FID, ALL): 10.16, (FID, MANY): 14.07, (FID, MEDIUM): 15.66,
                           (FID, FEW): 22.19},
                  "cbdm": {(FID, ALL): 10.05}, "t2h": {(FID, ALL): 8.31},
                  "cm": {(FID, ALL): 7.52, (FID, MANY): 11.71, (FID, MEDIUM): 13.04,
                         (FID, FEW): 18.73}}),
    ("cifar10", {"ddpm": {(FID, ALL): 10.70}, "cbdm": {(FID, ALL): 8.23}, "t2h": {(FID, ALL): 8.39},
                 "cm": {(FID, ALL): 7.73}}),
]  # fmt: skip


def _build() -> list[PublishedRow]:
    rows = []
    for dataset, imbalance, table in _A:
        for method, (fid, is_, recall) in table.items():
            values = {(FID, ALL): fid}
            if is_ is not None:
                values[(IS, ALL)] = is_
            if recall is not None:
                values[(RECALL, ALL)] = recall
            rows.append(_coral_table(method, dataset, imbalance, values))
    for dataset, table in _B:
        rows += [_cm_row(method, dataset, dict(values)) for method, values in table.items()]
    return rows


PUBLISHED: list[PublishedRow] = _build()


def published_for(*, dataset: str, imbalance: float, protocol: str, feature_space: str,
                  pr_k: int | None) -> list[PublishedRow]:  # fmt: skip
    """The published rows a leaderboard of these settings may show, each with only the values measured
    as its columns are (see the module docstring)."""
    if not str(feature_space).startswith("inception"):
        return []  # every published FID rests on Inception features
    out = []
    for row in PUBLISHED:
        if (row.dataset, round(row.imbalance, 6), row.settings.protocol) != (dataset, round(imbalance, 6), protocol):
            continue
        same_pr = row.settings.pr_features is None or (row.settings.pr_features.startswith("Inception")
                                                       and row.settings.pr_k == pr_k)
        values = {k: v for k, v in row.values.items() if k[0] not in (PRECISION, RECALL) or same_pr}
        out.append(PublishedRow(row.method, row.label, row.dataset, row.imbalance, row.settings, values))
    return out
