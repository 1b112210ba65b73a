"""Plots from the results table (and, for sample grids, the cells' stored samples).

Per-class curves put each class's FID, recall, coverage and label accuracy against its training
count on a log axis, one line per method; the diversity plot does the same for the Vendi ratio
(generated / real at the same n), coverage and the memorised fraction, with the real data as
the reference line and the seed spread as a band; grouped bars show many / medium / few; a
sweep plot shows a metric against imbalance when a table holds several settings; sample grids
and nearest-neighbour sheets show images.  Classes carry their names.  PNG and PDF each.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmark.core.files import write_atomic  # noqa: E402
from benchmark.core.names import (  # noqa: E402
    ALL,
    CAS_ACC,
    CLASS,
    COVERAGE,
    FEW,
    FID,
    GROUPS,
    LABEL_ACC,
    MEMORIZATION,
    MEMORIZATION_PIXEL,
    REAL,
    RECALL,
    TRAIN_COUNT,
    VENDI_INLIER_RATIO,
    VENDI_RATIO,
    cell_folder,
)
from benchmark.report.tables import attach_feature_free_rows, class_info, class_label, each_table  # noqa: E402


def _save(fig, path_stem: Path) -> list[Path]:
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        path = path_stem.parent / f"{path_stem.name}.{ext}"  # names hold dots (0.01)
        meta = {"CreationDate": None} if ext == "pdf" else None
        write_atomic(path, lambda tmp, ext=ext, meta=meta: fig.savefig(tmp, format=ext, dpi=130, bbox_inches="tight",
                                                                       metadata=meta))  # a killed report leaves no half file
        out.append(path)
    plt.close(fig)
    return out


def _slug(key: dict) -> str:
    space = str(key["feature_space"]).split(":")[0]  # the weights id stays in the table, not the file name
    return f"{key['dataset']}_{key['profile']}-{float(key['imbalance']):g}_{key['protocol']}_{space}"


YLABEL = {
    FID: "per-class FID (lower is better; the floor at its held-out n)",
    RECALL: "per-class recall (fooled by noisy samples)",
    COVERAGE: "per-class coverage (Naeem et al.)",
    LABEL_ACC: "label accuracy of generated images",
    VENDI_RATIO: "Vendi generated / real at the same n (rewards noise)",
    VENDI_INLIER_RATIO: "in-manifold Vendi, generated / real (1 = real)",
    MEMORIZATION: "memorised fraction (d1/d2 < 1/3)",
}
_NAMED_TICKS = 12  # name the classes on the x axis up to this many classes


def _class_panel(ax, block: pd.DataFrame, metric: str, info: pd.DataFrame, *, linestyle: str = "-",
                 label_suffix: str = "", colors: dict | None = None) -> None:
    """One line per method over the classes, x = training images of the class (log); the real data
    as a black dashed line; +-1 std over seeds as a band where there are several seeds."""
    counts = info["count"]
    rows = block[(block["metric"] == metric) & (block["group"] == CLASS)]
    for method, mrows in sorted(rows.groupby("method"), key=lambda kv: (kv[0] == REAL, kv[0])):
        per_seed = mrows.groupby(["class", "seed"])["value"].mean()
        per_class = per_seed.groupby("class").agg(["mean", "std"]).reindex(counts.index).dropna(subset=["mean"])
        if per_class.empty:
            continue
        x = counts.loc[per_class.index].to_numpy(float)
        order = np.argsort(x, kind="stable")
        real = method == REAL
        style = dict(color="black", linestyle="--") if real else dict(linestyle=linestyle)
        if not real and colors is not None and method in colors:
            style["color"] = colors[method]
        label = ("real data (floor)" if real else method) + label_suffix
        (line,) = ax.plot(x[order], per_class["mean"].to_numpy()[order], marker="o", ms=3, label=label, **style)
        if colors is not None and not real:
            colors.setdefault(method, line.get_color())
        if per_class["std"].notna().any():
            lo = (per_class["mean"] - per_class["std"]).to_numpy()[order]
            hi = (per_class["mean"] + per_class["std"]).to_numpy()[order]
            ax.fill_between(x[order], lo, hi, alpha=0.15, color=line.get_color())


def _class_axis(ax, info: pd.DataFrame) -> None:
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log)")
    if len(info) <= _NAMED_TICKS:  # name the classes at their sizes (equal sizes share a tick)
        ticks: dict[float, list[str]] = {}
        for cls, row in info.iterrows():
            ticks.setdefault(float(row["count"]), []).append(class_label(int(cls), row["name"]))
        ax.set_xticks(list(ticks), [f"{int(n)}\n" + "/".join(names) for n, names in ticks.items()], fontsize=6,
                      rotation=60, ha="right")
        ax.minorticks_off()
    ax.grid(alpha=0.3)


def _has_class_rows(block: pd.DataFrame, metric: str) -> bool:
    return bool(((block["metric"] == metric) & (block["group"] == CLASS)).any())


def _cell_stem(prefix: str, c) -> str:
    return f"{prefix}_{c['dataset']}_{c['profile']}-{float(c['imbalance']):g}_{c['method'].replace('+', '_')}_seed{c['seed']}"


def per_class_curves(block: pd.DataFrame, key: dict, folder: Path) -> list[Path]:
    """Quality and k-NN diversity per class: FID, recall with coverage beside it, label accuracy."""
    info = class_info(block)
    metrics = [m for m in (FID, RECALL, COVERAGE, LABEL_ACC) if _has_class_rows(block, m)]
    if info.empty or not metrics:
        return []
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        _class_panel(ax, block, metric, info)
        _class_axis(ax, info)
        ax.set_ylabel(YLABEL[metric])
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Per-class quality and diversity vs class size: {key['dataset']} imbalance {float(key['imbalance']):g}")
    return _save(fig, folder / f"per_class_{_slug(key)}")


def diversity_curves(block: pd.DataFrame, key: dict, folder: Path) -> list[Path]:
    """Tail diversity and memorisation per class: the in-manifold Vendi ratio (1 = as diverse as
    held-out real images; off-manifold samples lower it, so noise is not diversity), coverage, and the
    memorised fraction (feature space solid, pixel space dotted).  The plain Vendi ratio, which
    rewards noisy samples, is not drawn (it stays in results.csv and per_class.csv)."""
    info = class_info(block)
    metrics = [m for m in (VENDI_INLIER_RATIO, COVERAGE, MEMORIZATION) if _has_class_rows(block, m)]
    if info.empty or VENDI_INLIER_RATIO not in metrics and MEMORIZATION not in metrics:
        return []
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.8 * len(metrics), 4.2), squeeze=False)
    colors: dict = {}
    for ax, metric in zip(axes[0], metrics):
        _class_panel(ax, block, metric, info, colors=colors)
        if metric == VENDI_INLIER_RATIO:
            ax.axhline(1.0, color="grey", linewidth=0.8)
        if metric == MEMORIZATION and _has_class_rows(block, MEMORIZATION_PIXEL):
            _class_panel(ax, block, MEMORIZATION_PIXEL, info, linestyle=":", label_suffix=" (pixels)", colors=colors)
        _class_axis(ax, info)
        ax.set_ylabel(YLABEL[metric])
        ax.legend(fontsize=7)
    fig.suptitle(f"Per-class diversity and memorisation vs class size: {key['dataset']} imbalance "
                 f"{float(key['imbalance']):g} ({str(key['feature_space']).split(':')[0]} features)")
    return _save(fig, folder / f"diversity_{_slug(key)}")


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


def _cell_files(table: pd.DataFrame, out: Path, name: str):
    """(cell row, path) for every method cell of the table whose folder holds the file ``name``."""
    cells = table[table["method"] != REAL][["dataset", "profile", "imbalance", "method", "seed"]].drop_duplicates()
    for _, c in cells.iterrows():
        path = cell_folder(out, c["dataset"], c["profile"], float(c["imbalance"]), c["method"], int(c["seed"])) / name
        if path.exists():
            yield c, path


def sample_grids(table: pd.DataFrame, out: Path, folder: Path, per_class: int = 8, max_classes: int = 10) -> list[Path]:
    """One image per method: a row per class from head to tail (read from the cells' samples.npz)."""
    paths = []
    for c, npz in _cell_files(table, out, "samples.npz"):
        data = np.load(npz)
        images, labels = data["images"], data["labels"]
        info = class_info(table[(table["dataset"] == c["dataset"]) & (table["imbalance"] == c["imbalance"])])
        counts = info["count"]
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
        names = [f"{class_label(k, info['name'].get(k, k))} (n={int(counts.get(k, 0))})" if len(counts) else f"class {k}"
                 for k in classes[: len(rows)]]  # fmt: skip
        ax.set_yticks([h * (i + 0.5) for i in range(len(rows))], names)
        ax.set_xticks([])
        ax.set_title(f"{c['method']} seed {c['seed']}: head (top) to tail (bottom)", fontsize=9)
        paths += _save(fig, folder / _cell_stem("samples", c))
    return paths


def neighbour_sheets(table: pd.DataFrame, out: Path, folder: Path) -> list[Path]:
    """One image per method cell: each few-shot class's most copy-like generated images (top row of
    its block, d1/d2 beneath) above their three nearest training images in pixel space (read from
    the cells' neighbours.npz, written at evaluation)."""
    paths = []
    for c, npz in _cell_files(table, out, "neighbours.npz"):
        with np.load(npz) as z:
            sheet = {k: z[k] for k in z.files}
        if not len(sheet["classes"]) or not sheet["found"].any():
            continue
        info = class_info(table[(table["dataset"] == c["dataset"]) & (table["imbalance"] == c["imbalance"])])
        k_cls, per_class, k_near = sheet["train"].shape[:3]
        fig, axes = plt.subplots(k_cls, 1, figsize=(per_class * 0.9, k_cls * (k_near + 1) * 0.9 + 0.6), squeeze=False)
        for i, ax in enumerate(axes[:, 0]):
            cls = int(sheet["classes"][i])
            found = sheet["found"][i]
            block = np.concatenate([sheet["gen"][i][None], np.moveaxis(sheet["train"][i], 1, 0)])  # [1 + k, R, C, H, W]
            block[:, ~found] = 0
            rows = [np.concatenate(list(r.transpose(0, 2, 3, 1)), axis=1) for r in block]
            grid = np.concatenate(rows, axis=0)
            ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", interpolation="nearest")
            w = sheet["gen"].shape[-1]
            ax.set_xticks([w * (j + 0.5) for j in range(per_class)],
                          [f"{r:.2f}" if f else "" for r, f in zip(sheet["ratio"][i], found)], fontsize=7)
            ax.set_yticks([w * (j + 0.5) for j in range(k_near + 1)],
                          ["generated"] + [f"nearest {q + 1}" for q in range(k_near)], fontsize=7)
            name = info["name"].get(cls, str(cls))
            n = int(info["count"].get(cls, 0))
            ax.set_title(f"{class_label(cls, name)} ({n} training images); d1/d2 under each (< 0.33 = copy)", fontsize=8)
        fig.suptitle(f"{c['method']} seed {c['seed']}: few-shot classes, most copy-like generated images first "
                     "(nearest training images of their class, pixel space)", fontsize=9)
        paths += _save(fig, folder / _cell_stem("neighbours", c))
    return paths


def write_plots(table: pd.DataFrame, out: Path) -> list[Path]:
    folder = Path(out) / "plots"
    table = attach_feature_free_rows(table)
    paths = []
    for key, block in each_table(table):
        # the class-size axis comes from the real cell / any cell of the same split
        counts = table[(table["metric"] == TRAIN_COUNT) & (table["dataset"] == key["dataset"])
                       & (table["imbalance"] == key["imbalance"])]  # fmt: skip
        block = pd.concat([block[block["metric"] != TRAIN_COUNT], counts], ignore_index=True)
        paths += per_class_curves(block, key, folder)
        paths += diversity_curves(block, key, folder)
        paths += group_bars(block, key, folder)
    paths += imbalance_sweep(table, folder)
    paths += sample_grids(table, Path(out), folder)
    paths += neighbour_sheets(table, Path(out), folder)
    return paths
