"""Leaderboards from ``results.csv`` alone: Markdown, LaTeX (booktabs) and CSV.

One table per (dataset, profile, imbalance, protocol, feature space, reference): rows are
methods, cells are mean +- std over seeds.  The best method per column (by mean) is marked bold
when a paired t test over the seeds it shares with the runner-up separates the two at 5%, and
marked not separable otherwise (see ``seeds.py``: the methods of one seed share their initial
noise and reference, so their per-seed differences are what carries the evidence).  A table with
one seed claims no ranking and says so under its title (bold there marks only the best mean).
``leaderboard_paired.csv`` holds every test: the best method against each other one.  Published
numbers appear as labelled reference rows only when the protocol matches, each beside our row of
the same method and with what it was measured with (``settings``; see ``published.py``).

A table whose feature space is a classifier evaluator that failed the trust gate
(rows noted ``untrusted-evaluator``, see benchmark/eval/trust.py) ranks nothing: its numbers
are shown without any mark, and a line under its title says why (``untrusted_tables``).
``leaderboard_per_class.csv`` holds every per-class metric with the class's name, size and group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.core.files import write_csv_atomic, write_text_atomic
from benchmark.core.names import (
    ALL,
    AUG_ACC,
    CAS_ACC,
    CLASS,
    COVERAGE,
    DENSITY,
    EVALUATOR_BALANCED_ACC,
    FEW,
    FID,
    IS,
    KID,
    LABEL_ACC,
    MANY,
    MEDIUM,
    MEMORIZATION,
    MEMORIZATION_PIXEL,
    PRECISION,
    REAL,
    REAL_ACC,
    RECALL,
    UNTRUSTED_NOTE,
    VENDI,
    VENDI_INLIER,
    VENDI_INLIER_RATIO,
    VENDI_INLIER_REAL,
    VENDI_RATIO,
    VENDI_REAL,
    at_floor_n,
)
from benchmark.report.main_table import LEGEND_MAIN, main_view
from benchmark.report.published import describe, published_for
from benchmark.report.seeds import ALPHA, LEVEL, Comparison, compare_best
from benchmark.report.tables import TABLE_KEY, attach_feature_free_rows, class_info


@dataclass(frozen=True)
class Column:
    label: str
    metric: str
    group: str
    lower_is_better: bool
    digits: int = 2
    target: float | None = None  # rank by distance to this value instead (a ratio to real data: 1)


LEADERBOARD_COLUMNS = [  # what each leaderboard shows, in order
    Column("FID", FID, ALL, True),
    Column("FID many", FID, MANY, True),
    Column("FID med", FID, MEDIUM, True),
    Column("FID few", FID, FEW, True),
    Column("KIDx1e3", KID, ALL, True),
    Column("FID @floor n", at_floor_n(FID), ALL, True),
    Column("FID few @floor n", at_floor_n(FID), FEW, True),
    Column("KIDx1e3 @floor n", at_floor_n(KID), ALL, True),
    Column("IS", IS, ALL, False),
    Column("Prec", PRECISION, ALL, False, 3),
    Column("Rec", RECALL, ALL, False, 3),
    Column("Rec few", RECALL, FEW, False, 3),
    Column("Cov few", COVERAGE, FEW, False, 3),
    Column("Vendi-in/real few", VENDI_INLIER_RATIO, FEW, False, 3, target=1.0),
    Column("Mem few", MEMORIZATION, FEW, True, 3),
    Column("Mem px few", MEMORIZATION_PIXEL, FEW, True, 3),
    Column("LabelAcc", LABEL_ACC, ALL, False, 3),
    Column("CAS", CAS_ACC, ALL, False, 3),
    Column("CAS few", CAS_ACC, FEW, False, 3),
    Column("Aug", AUG_ACC, ALL, False, 3),
    Column("Aug few", AUG_ACC, FEW, False, 3),
]
SCALE = {KID: 1e3, at_floor_n(KID): 1e3}

def per_seed_values(table: pd.DataFrame) -> pd.DataFrame:
    """Long per-seed values: one row per (table key, method, precision, metric, group, seed)."""
    agg = attach_feature_free_rows(table)
    agg = agg[agg["group"] != CLASS]
    agg = agg[agg["metric"].isin({c.metric for c in LEADERBOARD_COLUMNS})]
    agg = agg.assign(precision=agg["train_precision"].astype(str) + "/" + agg["sample_precision"].astype(str))
    # precision is part of a row's identity: seeds trained or sampled at different precisions never share a cell
    keys = TABLE_KEY + ["method", "precision", "metric", "group", "seed"]
    return agg.groupby(keys, dropna=False)["value"].mean().reset_index()


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Long summary: one row per (table key, method, metric, group) with mean, std, n seeds."""
    return _summary(per_seed_values(table))


def _summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    grouped = per_seed.groupby(TABLE_KEY + ["method", "precision", "metric", "group"], dropna=False)["value"]
    out = pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1), "n_seeds": grouped.count()})
    return out.reset_index()


def untrusted_tables(table: pd.DataFrame) -> dict[tuple, str]:
    """{table key values: why the table ranks nothing} for tables from an untrusted evaluator."""
    flagged = table[table["note"].astype(str).str.contains(UNTRUSTED_NOTE, regex=False)]
    out = {}
    for key_values, block in flagged.groupby(TABLE_KEY, dropna=False, sort=True):
        gate = block[block["metric"] == EVALUATOR_BALANCED_ACC]
        if len(gate):
            row = gate.iloc[0]
            fields = dict(part.split("=", 1) for part in str(row["note"]).split(";") if "=" in part)
            detail = (f"its held-out balanced accuracy is {float(row['value']):.3f} on {int(row['n_ref'])} real "
                      f"images, chance {float(fields.get('chance', 'nan')):.3f}; the gate needs at least "
                      f"{float(fields.get('threshold', 'nan')):.3f} and p < 0.01 (p = {fields.get('p', '?')})")
        else:
            detail = "its rows are marked untrusted-evaluator"
        out[tuple(key_values)] = (
            f"No ranking: the classifier evaluator of this table failed the trust gate ({detail}), so its features "
            "cannot separate the methods and no method is marked best. Numbers are shown for inspection only. "
            "What helps: Inception or DINOv2 weights for natural images, a reference folder "
            "(data.reference_folder), more images per class."
        )
    return out


def no_ranking_lines(table: pd.DataFrame) -> list[str]:
    """One console line per leaderboard table that ranks nothing because its evaluator is untrusted."""
    return [f"leaderboard {_title(dict(zip(TABLE_KEY, key)))}: {why}" for key, why in untrusted_tables(table).items()]


ONE_SEED = ("No ranking is claimed: one seed per method, so the seed-to-seed spread is unknown and no paired "
            "test is possible; bold marks only the best mean.")


def one_seed_lines(table: pd.DataFrame) -> list[str]:
    """One console line per (trusted) leaderboard table whose methods have a single seed: it claims no ranking."""
    untrusted = untrusted_tables(table)
    return [f"leaderboard {_title(dict(zip(TABLE_KEY, key)))}: {ONE_SEED}"
            for key, block in per_seed_values(table).groupby(TABLE_KEY, dropna=False, sort=True)
            if _one_seed(block) and tuple(key) not in untrusted]


def _one_seed(per_seed: pd.DataFrame) -> bool:
    """Whether a table's competing methods (not the real-data floor) have at most one seed each."""
    models = per_seed[(per_seed["method"] != REAL) & per_seed["value"].notna()]
    return bool(len(models)) and int(models.groupby(["method", "precision"])["seed"].nunique().max()) <= 1


def _fmt(mean: float, std: float, n: int, digits: int) -> str:
    if np.isnan(mean):
        return "-"
    if n > 1 and not np.isnan(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def leaderboards(table: pd.DataFrame) -> list[tuple[dict, pd.DataFrame, pd.DataFrame]]:
    """[(key, display frame, marks frame)] where marks are '' / 'best' / 'tie'.

    Each display frame's ``attrs`` carry ``paired`` (the column's comparisons, see ``seeds.py``),
    ``one_seed`` (True when the table claims no ranking for want of seeds) and ``no_ranking``
    (why an untrusted evaluator's table marks nothing)."""
    untrusted = untrusted_tables(table)
    boards = []
    for key_values, seeds_block in per_seed_values(table).groupby(TABLE_KEY, dropna=False, sort=True):
        key = dict(zip(TABLE_KEY, key_values))
        no_ranking = untrusted.get(tuple(key_values))
        one_seed = _one_seed(seeds_block)
        block = _summary(seeds_block)
        block = block.assign(label=_row_labels(block))
        seeds_block = seeds_block.assign(label=_row_labels(seeds_block))
        methods = sorted(m for m in block.loc[block["method"] != REAL, "label"].unique())
        if REAL in set(block["method"]):
            methods.append(REAL)
        display = pd.DataFrame(index=methods, columns=["seeds", "precision"] + [c.label for c in LEADERBOARD_COLUMNS],
                               dtype=object)
        marks = pd.DataFrame("", index=methods, columns=display.columns)
        for method in methods:
            rows = block[block["label"] == method]
            display.loc[method, "seeds"] = str(int(rows["n_seeds"].max())) if len(rows) else "0"
            display.loc[method, "precision"] = rows["precision"].iloc[0] if len(rows) else "-"
        paired = {}
        for col in LEADERBOARD_COLUMNS:
            scale = SCALE.get(col.metric, 1.0)
            cells = seeds_block[(seeds_block["metric"] == col.metric) & (seeds_block["group"] == col.group)]
            values = {}  # {method: {seed: value}} of the competing methods
            for method in methods:
                hit = block[(block["label"] == method) & (block["metric"] == col.metric) & (block["group"] == col.group)]
                if len(hit):
                    first = hit.iloc[0]
                    mean, std, n = float(first["mean"]) * scale, float(first["std"]) * scale, int(first["n_seeds"])
                else:
                    mean, std, n = float("nan"), float("nan"), 0
                display.loc[method, col.label] = _fmt(mean, std, n, col.digits)
                if method != REAL and not np.isnan(mean):
                    mine = cells[(cells["label"] == method) & cells["value"].notna()]
                    values[method] = {seed: float(v) * scale for seed, v in zip(mine["seed"], mine["value"])}
            if not no_ranking:
                paired[col.label] = _mark_best(values, col, marks, one_seed=one_seed)
        own = _settings(table, key)
        display.insert(1, "settings", [own.get(m, "") for m in display.index])
        marks.insert(1, "settings", "")
        published = published_for(dataset=key["dataset"], imbalance=float(key["imbalance"]), protocol=key["protocol"],
                                  feature_space=key["feature_space"], pr_k=_pr_k(table, key))  # fmt: skip
        for row in published:
            label = f"{row.label} (published)"
            display.loc[label] = "-"
            marks.loc[label] = ""
            display.loc[label, "seeds"] = "paper"
            display.loc[label, "settings"] = f"{row.settings.source}: {describe(row.settings)}"
            display.loc[label, "precision"] = "-"
            for col in LEADERBOARD_COLUMNS:
                if (col.metric, col.group) in row.values:
                    display.loc[label, col.label] = f"{row.values[(col.metric, col.group)]:.{col.digits}f}"
        display, marks = _beside_ours(display, marks, published)
        if REAL in display.index:
            display = display.rename(index={REAL: "real data (floor)"})
            marks = marks.rename(index={REAL: "real data (floor)"})
        if no_ranking:
            display.attrs["no_ranking"] = no_ranking
        display.attrs["one_seed"] = one_seed
        display.attrs["sizes"] = sample_sizes(table, key)
        display.attrs["paired"] = paired
        boards.append((key, display, marks))
    return boards


def _sizes_of(rows: pd.DataFrame) -> str:
    pairs = sorted({(int(g), int(r)) for g, r in zip(rows["n_gen"], rows["n_ref"])})
    return ", ".join(f"{g} vs {r}" for g, r in pairs) if pairs else "-"


def sample_sizes(table: pd.DataFrame, key: dict) -> str:
    """The line under a table: n_gen vs n_ref of its overall FID rows, for the methods' own columns,
    for the '@floor n' columns and for the floor, and how the floor drew its sample."""
    rows = _key_rows(table, key)
    rows = rows[rows["group"] == ALL]
    methods, real = rows[rows["method"] != REAL], rows[rows["method"] == REAL]
    own = methods[methods["metric"] == FID]
    at_floor = methods[methods["metric"] == at_floor_n(FID)]
    floor = real[real["metric"] == FID]
    if own.empty and floor.empty:
        return ""
    parts = [f"methods' own columns {_sizes_of(own)}"]
    if len(at_floor):
        parts.append(f"'@floor n' columns {_sizes_of(at_floor)}")
    if len(floor):
        how = sorted({p for n in floor["note"].astype(str) for p in n.split(";")
                      if p.startswith(("real_floor", "capped_classes"))})
        parts.append(f"real data (floor) {_sizes_of(floor)}" + (f" ({', '.join(how)})" if how else ""))
    return "Sample sizes, generated vs reference images, overall: " + "; ".join(parts) + "."


def _key_rows(table: pd.DataFrame, key: dict) -> pd.DataFrame:
    rows = table
    for k, v in key.items():
        rows = rows[rows[k].astype(str) == str(v)]
    return rows


def _pr_k(table: pd.DataFrame, key: dict) -> int | None:
    """k of this table's precision / recall rows (their note says k=...), or None."""
    notes = _key_rows(table, key)
    notes = notes[notes["metric"].isin([PRECISION, RECALL])]["note"].astype(str)
    ks = {int(p[2:]) for n in notes for p in n.split(";") if p.startswith("k=") and p[2:].isdigit()}
    return ks.pop() if len(ks) == 1 else None


def _settings(table: pd.DataFrame, key: dict) -> dict[str, str]:
    """Per method of one table: sampler and steps, guidance, training steps, images, P/R k (from its rows)."""
    rows = _key_rows(table, key)
    k = _pr_k(table, key)
    out = {}
    for method, block in rows.groupby("method"):
        if method == REAL:
            continue
        first = block.iloc[0]
        sampler = f"{str(first['sampler']).upper()}-{int(first['sampler_steps'])}"
        guidance = "" if pd.isna(first["guidance"]) else f"guidance {float(first['guidance']):g}"
        steps = sorted({int(s) for s in block["train_steps"].dropna()})
        fid = block[(block["metric"] == "fid") & (block["group"] == "all")]
        parts = [sampler, guidance, "/".join(str(s) for s in steps) + " steps" if steps else "",
                 f"{int(fid['n_gen'].iloc[0])} images" if len(fid) else "", f"P/R k={k}" if k else ""]
        out[method] = "; ".join(p for p in parts if p)
    return out


def _beside_ours(display: pd.DataFrame, marks: pd.DataFrame, published) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each published row right after our row of the same method (the rest after ours, before the floor)."""
    pub = {f"{r.label} (published)": r.method for r in published}
    ours = [i for i in display.index if i not in pub and i != REAL]
    order = []
    for i in ours:
        order += [i] + [p for p, m in pub.items() if m == i]
    order += [p for p, m in pub.items() if m not in ours]
    order += [i for i in display.index if i == REAL]
    return display.loc[order], marks.loc[order]
def _row_labels(block: pd.DataFrame) -> pd.Series:
    """The method name; with its precision appended where the table holds more than one."""
    models = block["method"] != REAL
    if block.loc[models, "precision"].nunique() <= 1:
        return block["method"].where(models, REAL)
    return (block["method"] + " [" + block["precision"] + "]").where(models, REAL)


def precision_note(display: pd.DataFrame) -> str:
    """What a table's title says about precision: the one its method rows share, or that they differ."""
    shown = display.drop(index=[i for i in display.index if i == "real data (floor)" or i.endswith("(published)")])
    found = sorted(set(shown["precision"]) - {"-"})
    if len(found) <= 1:
        return found[0] if found else "-"
    return "DIFFERS between rows: " + ", ".join(found)


def _mark_best(values: dict, col: Column, marks: pd.DataFrame, *, one_seed: bool) -> list[Comparison]:
    """Mark the column's best mean: 'best' when the paired test separates it from the runner-up at 5%,
    'tie' when it does not (or fewer than two seeds pair up); in a one-seed table, 'best' for a strictly
    best mean ('tie' on equal means).  Returns the comparisons of the best method with every other one."""
    comparisons = compare_best(values, lower_is_better=col.lower_is_better, target=col.target)
    if comparisons:
        runner_up = comparisons[0]
        ahead = runner_up.lead > 0 if one_seed else runner_up.separated
        marks.loc[runner_up.best, col.label] = "best" if ahead else "tie"
    return comparisons


def _title(key: dict, display: pd.DataFrame | None = None) -> str:
    """The table's title; with its rows (``display``) it names their precision too."""
    title = (
        f"{key['dataset']} {key['profile']} imbalance {float(key['imbalance']):g} | protocol {key['protocol']} | "
        f"features {key['feature_space']} | reference {key['reference']}"
    )
    return title if display is None else f"{title} | precision (train/sample) {precision_note(display)}"


LEGEND = (
    "Mean ± std over seeds. **Bold**: best mean in the column, separated from the runner-up by a paired t "
    f"test over the seeds both have (two-sided p < {ALPHA:g}; the methods of one seed share their initial noise "
    "and reference images, so the per-seed differences are compared); *italic~*: best mean that the test does "
    "not separate from the runner-up, or fewer than two paired seeds (not separable). A table with one seed "
    "claims no ranking and says so under its title; bold there marks only the best mean, untested. "
    "leaderboard_paired.csv holds each test: the best method against every other one, with the mean "
    f"difference, its {LEVEL:.0%} t interval, p and the number of paired seeds. "
    "FID/KID and Mem (memorised fraction of the few-shot group's generated images, d1/d2 < 1/3 against "
    "their class's training images, in the feature space / in pixels) lower is better; Vendi-in/real (Vendi "
    "score of the generated images inside their class's real k-NN manifold times their fraction, over the same of "
    "held-out real images; pooled over the group; noise lowers it) is best closest to 1; the "
    "rest higher. KID is shown x1000. 'real data (floor)' scores real held-out images like generated ones "
    "(a perfect generator's score): per class min(n, half the class's reference images) held out against "
    "the rest of the reference, so its n can be below the methods'. The plain FID/KID columns score each "
    "method at its own n against the whole reference; the '@floor n' columns score it at exactly the "
    "floor's n (per class as many generated images as the floor holds out, against the same rest): compare "
    "methods with the floor there. The sample sizes are under each table. Its CAS/Aug columns are empty and its "
    f"downstream baseline (classifier on the real long-tailed set alone) is in the CSV as {REAL_ACC}. "
    "precision: train/sample arithmetic (fp32 or bf16) of the row; where a table holds rows of different "
    "precisions, its title says so and each method row carries its precision in brackets."
)


PER_CLASS_METRICS = [FID, KID, PRECISION, RECALL, DENSITY, COVERAGE, VENDI, VENDI_REAL, VENDI_RATIO, VENDI_INLIER,
                     VENDI_INLIER_REAL, VENDI_INLIER_RATIO, MEMORIZATION, MEMORIZATION_PIXEL, LABEL_ACC, CAS_ACC, AUG_ACC]


def per_class_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (table key, method, class) with the class's name, training count and group and the
    mean over seeds of every per-class metric (``<metric>_std`` beside it when there are several seeds)."""
    agg = attach_feature_free_rows(table)
    agg = agg[(agg["group"] == CLASS) & agg["metric"].isin(PER_CLASS_METRICS)]
    if agg.empty:
        return pd.DataFrame()
    keys = TABLE_KEY + ["method", "class"]
    per_seed = agg.groupby(keys + ["metric", "seed"], dropna=False)["value"].mean()
    grouped = per_seed.groupby(level=list(range(len(keys) + 1)), dropna=False)
    stats = pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1), "n": grouped.count()})
    wide = stats["mean"].unstack("metric")
    metrics = [m for m in PER_CLASS_METRICS if m in wide.columns]
    wide = wide[metrics]
    if int(stats["n"].max()) > 1:
        spread = stats["std"].unstack("metric")[metrics].add_suffix("_std")
        wide = wide.join(spread)[[c for m in metrics for c in (m, f"{m}_std")]]
    wide.insert(0, "seeds", stats["n"].groupby(level=list(range(len(keys)))).max())
    wide = wide.reset_index()
    wide["class"] = wide["class"].astype(int)
    info = []
    for (dataset, profile, imbalance), block in table.groupby(["dataset", "profile", "imbalance"], dropna=False):
        one = class_info(block).reset_index()
        one["dataset"], one["profile"], one["imbalance"] = dataset, profile, imbalance
        info.append(one.rename(columns={"name": "class_name", "count": "train_count", "group": "class_group"}))
    info = pd.concat(info, ignore_index=True) if info else pd.DataFrame(columns=["class"])
    wide = wide.merge(info, on=["dataset", "profile", "imbalance", "class"], how="left")
    front = keys + ["class_name", "train_count", "class_group", "seeds"]
    wide = wide[front + [c for c in wide.columns if c not in front]]
    wide["method"] = wide["method"].replace({REAL: "real data (floor)"})
    return wide.sort_values(TABLE_KEY + ["method", "class"], kind="stable").reset_index(drop=True)


PAIRED_COLUMNS = TABLE_KEY + ["column", "metric", "group", "best", "other", "runner_up", "mean_diff", "ci_low",
                              "ci_high", "p", "n_seeds", "note"]


def paired_table(boards: list[tuple[dict, pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
    """One row per (table key, column, best method, other method): the paired test of ``seeds.py``.

    ``mean_diff`` is the best method's mean advantage over the other on their shared seeds, in the
    column's units (KID x1000) and direction (positive: the best is better; for the Vendi ratio,
    closer to 1); ``runner_up`` flags the comparison that decides the column's mark.  Tables of
    an untrusted evaluator rank nothing and have no rows."""
    by_label = {c.label: c for c in LEADERBOARD_COLUMNS}
    rows = []
    for key, display, _ in boards:
        for label, comparisons in display.attrs.get("paired", {}).items():
            col = by_label[label]
            for i, comp in enumerate(comparisons):
                note = comp.test.note
                if display.attrs.get("one_seed"):
                    note = f"one seed: no ranking claimed; {note}" if note else "one seed: no ranking claimed"
                rows.append({**key, "column": label, "metric": col.metric, "group": col.group, "best": comp.best,
                             "other": comp.other, "runner_up": i == 0, "mean_diff": comp.test.mean_diff,
                             "ci_low": comp.test.ci_low, "ci_high": comp.test.ci_high, "p": comp.test.p,
                             "n_seeds": comp.test.n_seeds, "note": note})  # fmt: skip
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def _statement(display: pd.DataFrame) -> str:
    """What a table's title is followed by: why it ranks nothing, or that one seed claims no ranking."""
    if display.attrs.get("no_ranking"):
        return display.attrs["no_ranking"]
    return ONE_SEED if display.attrs.get("one_seed") else ""


def write_leaderboards(table: pd.DataFrame, out: Path, *, under=None) -> list[Path]:
    """``under(key)``: lines written under the Markdown table of ``key`` (e.g. report/robustness.py's)."""
    out = Path(out)
    boards = leaderboards(table)
    # leaderboard.md: the main view (main_table.py); leaderboard_full.md and the CSV: every column
    md, full, tex, flat = ["# Leaderboards", "", *LEGEND_MAIN, ""], ["# Leaderboards: every column", "", LEGEND, ""], [], []
    for key, display, marks in boards:
        view, view_marks, shared, below = main_view(display, marks)
        title = _title(key, display) + (f" | {shared}" if shared else "")
        md += [f"## {title}", ""]
        full += [f"## {_title(key, display)}", ""]
        if _statement(display):
            md += [f"> {_statement(display)}", ""]
            full += [f"> {_statement(display)}", ""]
        md += [_markdown(view, view_marks), ""]
        full += [_markdown(display, marks), ""]
        md += [line for part in below for line in (part, "")]
        if display.attrs.get("sizes"):
            md += [display.attrs["sizes"], ""]
            full += [display.attrs["sizes"], ""]
        for line in under(key) if under is not None else []:
            md += [line, ""]
            full += [line, ""]
        tex += [_latex(key, view, view_marks, title=title), ""]
        frame = display.copy()
        frame.attrs = {}
        frame.insert(0, "method", frame.index)
        frame["ranking"] = ("none: untrusted evaluator" if display.attrs.get("no_ranking")
                            else "none: one seed" if display.attrs.get("one_seed") else "")  # fmt: skip
        for k, v in reversed(list(key.items())):
            frame.insert(0, k, v)
        flat.append(frame)
    paths = [out / "leaderboard.md", out / "leaderboard.tex", out / "leaderboard.csv"]
    write_text_atomic(paths[0], "\n".join(md))  # atomic: a killed report never leaves half a table
    paths.append(out / "leaderboard_full.md")
    write_text_atomic(paths[-1], "\n".join(full))
    write_text_atomic(paths[1], "\n".join(tex))
    write_csv_atomic(paths[2], pd.concat(flat, ignore_index=True) if flat else pd.DataFrame())
    paths.append(out / "leaderboard_per_class.csv")
    write_csv_atomic(paths[-1], per_class_table(table))
    paths.append(out / "leaderboard_paired.csv")
    write_csv_atomic(paths[-1], paired_table(boards))
    return paths


def _markdown(display: pd.DataFrame, marks: pd.DataFrame) -> str:
    cols = list(display.columns)
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method in display.index:
        cells = []
        for c in cols:
            text = str(display.loc[method, c])
            mark = marks.loc[method, c]
            cells.append(f"**{text}**" if mark == "best" else f"*{text}~*" if mark == "tie" else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _latex(key: dict, display: pd.DataFrame, marks: pd.DataFrame, *, title: str | None = None) -> str:
    cols = list(display.columns)

    def esc(s: str) -> str:
        return s.replace("_", r"\_").replace("±", r"$\pm$").replace("%", r"\%").replace("&", r"\&")

    caption_note = ". " + _statement(display) if _statement(display) else ""
    if display.attrs.get("sizes"):
        caption_note += ". " + display.attrs["sizes"].rstrip(".")
    lines = [
        r"\begin{table}[t]", r"\centering", r"\small",
        rf"\caption{{{esc((title or _title(key, display)) + caption_note)}}}",
        r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule",
        "Method & " + " & ".join(esc(c) for c in cols) + r" \\", r"\midrule",
    ]  # fmt: skip
    for method in display.index:
        cells = []
        for c in cols:
            text = esc(str(display.loc[method, c]))
            mark = marks.loc[method, c]
            cells.append(rf"\textbf{{{text}}}" if mark == "best" else rf"\textit{{{text}}}$^\sim$" if mark == "tie" else text)
        lines.append(esc(method) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)
