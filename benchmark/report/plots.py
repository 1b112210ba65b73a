"""Plots from the results table (and, for sample grids, the cells' stored samples).

Per-class diversity curves put each class's recall and FID against its training count on a
log axis, one line per method; grouped bars show many / medium / few; a sweep plot shows a
metric against imbalance when a table holds several settings.  PNG and PDF each.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmark.core.names import (  # noqa: E402
    ALL,
    CAS_ACC,
    CLASS,
    FEW,
    FID,
    GROUPS,
    LABEL_ACC,
    REAL,
    RECALL,
    TRAIN_COUNT,
)
from benchmark.harness.cells import Cell  # noqa: E402
from benchmark.report.tables import TABLE_KEY, attach_feature_free_rows  # noqa: E402


def _save(fig, path_stem: Path) -> list[Path]:
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        path = path_stem.parent / f"{path_stem.name}.{ext}"  # names hold dots (0.01)
        fig.savefig(path, dpi=130, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else None)
        out.append(path)
    plt.close(fig)
    return out


def _slug(key: dict) -> str:
    space = str(key["feature_space"]).split(":")[0]  # the weights id stays in the table, not the file name
    return f"{key['dataset']}_{key['profile']}-{float(key['imbalance']):g}_{key['protocol']}_{space}"


def per_class_curves(block: pd.DataFrame, key: dict, folder: Path) -> list[Path]:
    counts = block[(block["metric"] == TRAIN_COUNT) & (block["group"] == CLASS)]
    counts = counts.groupby("class")["value"].first()
    metrics = [m for m in (RECALL, FID, LABEL_ACC) if ((block["metric"] == m) & (block["group"] == CLASS)).any()]
    if counts.empty or not metrics:
        return []
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = block[(block["metric"] == metric) & (block["group"] == CLASS)]
        for method, mrows in sorted(rows.groupby("method"), key=lambda kv: (kv[0] == REAL, kv[0])):
            per_class = mrows.groupby("class")["value"].agg(["mean", "std"]).reindex(counts.index).dropna(subset=["mean"])
            x = counts.loc[per_class.index].to_numpy(float)
            order = np.argsort(x)
            style = dict(color="black", linestyle="--") if method == REAL else {}
            label = "real data (floor)" if method == REAL else method
            ax.plot(x[order], per_class["mean"].to_numpy()[order], marker="o", ms=3, label=label, **style)
            if per_class["std"].notna().any():
                lo = (per_class["mean"] - per_class["std"]).to_numpy()[order]
                hi = (per_class["mean"] + per_class["std"]).to_numpy()[order]
                ax.fill_between(x[order], lo, hi, alpha=0.15, **({"color": "black"} if method == REAL else {}))
        ax.set_xscale("log")
        ax.set_xlabel("training images of the class (log)")
        ax.set_ylabel({FID: "per-class FID (lower is better)", RECALL: "per-class recall (diversity)",
                       LABEL_ACC: "label accuracy of generated images"}[metric])  # fmt: skip
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Per-class quality and diversity vs class size: {key['dataset']} imbalance {float(key['imbalance']):g}")
    return _save(fig, folder / f"per_class_{_slug(key)}")


def group_bars(block: pd.DataFrame, key: dict, folder: Path) -> list[Path]:
    metrics = [m for m in (FID, RECALL, CAS_ACC) if ((block["metric"] == m) & block["group"].isin(GROUPS)).any()]
    if not metrics:
        return []
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = block[(block["metric"] == metric) & block["group"].isin(GROUPS)]
        per_seed = rows.groupby(["method", "group", "seed"])["value"].mean()
        stats = per_seed.groupby(["method", "group"]).agg(["mean", "std"])
        methods = sorted(rows["method"].unique(), key=lambda m: (m == REAL, m))
        width = 0.8 / max(len(methods), 1)
        for i, method in enumerate(methods):
            means = [stats["mean"].get((method, g), np.nan) for g in GROUPS]
            errs = np.array([stats["std"].get((method, g), np.nan) for g in GROUPS], dtype=float)
            label = "real data (floor)" if method == REAL else method
            # +-1 std over seeds; with one seed there is no spread to draw (not a zero-length bar)
            ax.bar(np.arange(3) + i * width - 0.4 + width / 2, means, width, label=label,
                   yerr=errs if np.isfinite(errs).any() else None)
        ax.set_xticks(np.arange(3), GROUPS)
        ax.set_ylabel(metric)
        ax.set_title(metric + (" (lower is better)" if metric == FID else ""))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Many / medium / few: {key['dataset']} imbalance {float(key['imbalance']):g}")
    return _save(fig, folder / f"groups_{_slug(key)}")


def imbalance_sweep(table: pd.DataFrame, folder: Path) -> list[Path]:
    out = []
    key_cols = ["dataset", "profile", "protocol", "feature_space"]
    for key_values, block in table.groupby(key_cols, dropna=False):
        if block["imbalance"].nunique() < 2:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for ax, (metric, group) in zip(axes, [(FID, ALL), (RECALL, FEW)]):
            rows = block[(block["metric"] == metric) & (block["group"] == group)]
            for method, mrows in sorted(rows.groupby("method")):
                stats = mrows.groupby("imbalance")["value"].agg(["mean", "std"])
                spread = stats["std"] if stats["std"].notna().any() else None  # one seed: no error bars
                ax.errorbar(stats.index, stats["mean"], yerr=spread, marker="o",
                            label="real data (floor)" if method == REAL else method)  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel("imbalance n_min / n_max (log)")
            ax.set_ylabel(f"{metric} ({group})")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        key = dict(zip(key_cols, key_values))
        fig.suptitle(f"Imbalance sweep: {key['dataset']} ({key['protocol']})")
        out += _save(fig, folder / f"sweep_{key['dataset']}_{key['profile']}_{key['protocol']}")
    return out


def sample_grids(table: pd.DataFrame, out: Path, folder: Path, per_class: int = 8, max_classes: int = 10) -> list[Path]:
    """One image per method: a row per class from head to tail (read from the cells' samples.npz)."""
    paths = []
    cells = table[table["method"] != REAL][["dataset", "profile", "imbalance", "method", "seed"]].drop_duplicates()
    for _, c in cells.iterrows():
        cell = Cell(c["dataset"], c["profile"], float(c["imbalance"]), c["method"], int(c["seed"]))
        npz = cell.folder(out) / "samples.npz"
        if not npz.exists():
            continue
        data = np.load(npz)
        images, labels = data["images"], data["labels"]
        counts = table[(table["metric"] == TRAIN_COUNT) & (table["dataset"] == c["dataset"])
                       & (table["imbalance"] == c["imbalance"])].groupby("class")["value"].first()  # fmt: skip
        counts.index = counts.index.astype(int)
        classes = list(counts.sort_values(ascending=False).index) if len(counts) else sorted(set(labels.tolist()))
        if len(classes) > max_classes:
            classes = [classes[int(i)] for i in np.linspace(0, len(classes) - 1, max_classes)]
        rows = []
        for k in classes:
            imgs = images[labels == k][:per_class]
            if len(imgs) < per_class:
                continue
            rows.append(np.concatenate(list(imgs.transpose(0, 2, 3, 1)), axis=1))
        if not rows:
            continue
        grid = np.concatenate(rows, axis=0)
        fig, ax = plt.subplots(figsize=(per_class * 0.8, len(rows) * 0.8))
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", interpolation="nearest")
        h = images.shape[2]
        names = [f"class {k} (n={int(counts.get(k, 0))})" if len(counts) else f"class {k}" for k in classes[: len(rows)]]
        ax.set_yticks([h * (i + 0.5) for i in range(len(rows))], names)
        ax.set_xticks([])
        ax.set_title(f"{c['method']} seed {c['seed']}: head (top) to tail (bottom)", fontsize=9)
        stem = f"samples_{c['dataset']}_{c['profile']}-{float(c['imbalance']):g}_{c['method'].replace('+', '_')}_seed{c['seed']}"
        paths += _save(fig, folder / stem)
    return paths


def write_plots(table: pd.DataFrame, out: Path) -> list[Path]:
    folder = Path(out) / "plots"
    table = attach_feature_free_rows(table)
    paths = []
    for key_values, block in table.groupby(TABLE_KEY, dropna=False):
        key = dict(zip(TABLE_KEY, key_values))
        # the class-size axis comes from the real cell / any cell of the same split
        counts = table[(table["metric"] == TRAIN_COUNT) & (table["dataset"] == key["dataset"])
                       & (table["imbalance"] == key["imbalance"])]  # fmt: skip
        block = pd.concat([block[block["metric"] != TRAIN_COUNT], counts], ignore_index=True)
        paths += per_class_curves(block, key, folder)
        paths += group_bars(block, key, folder)
    paths += imbalance_sweep(table, folder)
    paths += sample_grids(table, Path(out), folder)
    return paths
