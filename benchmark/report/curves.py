"""Budget curves and guidance fronts from the results table (every point of every cell).

``plots/budget_<table>.png``: overall, many and few FID, and the few-shot group's coverage, in-manifold
Vendi (generated / real) and memorised fraction (the tail metrics of report/claims.py) against the
training step, at each method's main scale: one line per method (mean over seeds, the band spans the
seeds), the real-data floor as a dashed line.
``plots/front_<table>.png``: the fidelity-diversity front of the final models, FID against coverage
and against recall, overall and for the few-shot classes: one line per method through its guidance
scales, each point labelled with its scale, the real-data floor marked.  A table with one budget (or
one scale) draws no budget (or front) plot.  PNG and PDF each.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from benchmark.core.names import (  # noqa: E402
    ALL,
    COVERAGE,
    FEW,
    FID,
    MANY,
    MEMORIZATION,
    REAL,
    RECALL,
    VENDI_INLIER_RATIO,
)
from benchmark.report.plots import _save, _slug  # noqa: E402
from benchmark.report.robustness import main_points  # noqa: E402
from benchmark.report.tables import each_table  # noqa: E402

BUDGET_PANELS = [  # (metric, group, title)
    (FID, ALL, "FID, all classes"), (FID, MANY, "FID, many-shot"), (FID, FEW, "FID, few-shot"),
    (COVERAGE, FEW, "coverage, few-shot"), (VENDI_INLIER_RATIO, FEW, "in-manifold Vendi / real, few-shot"),
    (MEMORIZATION, FEW, "memorised fraction, few-shot"),
]  # fmt: skip
FRONT_PANELS = [(COVERAGE, ALL), (COVERAGE, FEW), (RECALL, ALL), (RECALL, FEW)]  # x axes, FID of the same group on y


def _colors(methods: list[str]) -> dict[str, object]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _floor(block: pd.DataFrame, metric: str, group: str) -> float | None:
    real = block[(block["method"] == REAL) & (block["metric"] == metric) & (block["group"] == group)]
    return float(real["value"].mean()) if len(real) and real["value"].notna().any() else None


def _at_main_scale(block: pd.DataFrame) -> pd.DataFrame:
    """Each method's rows at the scale of its main point (its budget curve's scale); an outside model
    scored without --guidance has an unknown scale (NaN), which matches the points that lack one too."""
    main = main_points(block)
    scale = main[main["method"] != REAL].groupby("method")["guidance"].first()
    keep = [m in scale.index and (abs(float(g) - float(scale[m])) < 1e-9 or pd.isna(g) and pd.isna(scale[m]))
            for m, g in zip(block["method"], block["guidance"])]  # fmt: skip
    return block[keep]


def budget_curves(block: pd.DataFrame, key: dict, folder: Path) -> list[Path]:
    methods_rows = _at_main_scale(block[block["method"] != REAL])
    if methods_rows.empty or methods_rows.groupby("method")["train_steps"].nunique().max() < 2:
        return []
    methods = sorted(methods_rows["method"].unique())
    colors = _colors(methods)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (metric, group, title) in zip(axes.flat, BUDGET_PANELS):
        rows = methods_rows[(methods_rows["metric"] == metric) & (methods_rows["group"] == group)]
        for method in methods:
            mine = rows[rows["method"] == method].groupby("train_steps")["value"]
            if not len(mine):
                continue
            mean, low, high = mine.mean(), mine.min(), mine.max()
            ax.plot(mean.index, mean.values, marker="o", color=colors[method], label=method)
            if (mine.count() > 1).any():
                ax.fill_between(mean.index, low.values, high.values, color=colors[method], alpha=0.2)
        floor = _floor(block, metric, group)
        if floor is not None:
            ax.axhline(floor, color="black", linestyle="--", linewidth=1, label="real data (floor)")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"budget curves: {_slug(key)} (each method at its main guidance scale; band: seeds)", fontsize=10)
    fig.tight_layout()
    return _save(fig, folder / f"budget_{_slug(key)}")


def fronts(block: pd.DataFrame, key: dict, folder: Path) -> list[Path]:
    rows = block[block["method"] != REAL]
    if rows.empty:
        return []
    rows = rows[rows["guidance"].notna() & rows["train_steps"].notna()]  # outside samples state neither, unless given
    if rows.empty:
        return []
    rows = rows[rows["train_steps"] == rows.groupby("method")["train_steps"].transform("max")]
    if rows.groupby("method")["guidance"].nunique().max() < 2:
        return []
    methods = sorted(rows["method"].unique())
    colors = _colors(methods)
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    axes = list(axes.flat)
    for ax, (metric, group) in zip(axes, FRONT_PANELS):
        for method in methods:
            mine = rows[(rows["method"] == method) & (rows["group"] == group)]
            x = mine[mine["metric"] == metric].groupby("guidance")["value"].mean()
            y = mine[mine["metric"] == FID].groupby("guidance")["value"].mean()
            both = pd.concat([x.rename("x"), y.rename("y")], axis=1).dropna().sort_index()
            if both.empty:
                continue
            ax.plot(both["x"], both["y"], marker="o", color=colors[method], label=method)
            for w, (px, py) in both.iterrows():
                ax.annotate(f"{w:g}", (px, py), textcoords="offset points", xytext=(3, 3), fontsize=7,
                            color=colors[method])
        fx, fy = _floor(block, metric, group), _floor(block, FID, group)
        if fx is not None and fy is not None:
            ax.scatter([fx], [fy], marker="*", s=120, color="black", label="real data (floor)", zorder=3)
        ax.set_xlabel(f"{metric} ({group}), higher is better")
        ax.set_ylabel(f"FID ({group}), lower is better")
        ax.set_title(f"{metric} vs FID, {group}", fontsize=9)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    fig.suptitle(f"guidance fronts of the final models: {_slug(key)} (labels: guidance scale)", fontsize=10)
    fig.tight_layout()
    return _save(fig, folder / f"front_{_slug(key)}")


def write_curves(table: pd.DataFrame, out: Path) -> list[Path]:
    folder = Path(out) / "plots"
    paths = []
    for key, block in each_table(table):
        paths += budget_curves(block, key, folder)
        paths += fronts(block, key, folder)
    return paths
