"""Whether a ranking holds: across the budget points and guidance scales a grid was scored at.

The leaderboards rank the cells' main points (the final model at the first scale listed, the
``point`` column); this module reads every point of a table and says, in a few lines under it:

- budgets: which method has the lowest overall FID at each training step all methods were scored at,
  "X best at k of n budgets", and how far the orderings at the last two budgets agree (Kendall tau);
- scales: the same across the guidance scales of the final models, then the ordering at one common
  scale beside the ordering at each method's own best scale.  The best scale is never chosen on the
  number it is reported with: a method's scale is the one with the lowest overall FID of half a of its
  images (even positions within each class, ``fid_half_a``) and the number shown is the FID of the
  other half at that scale (``fid_half_b``), both against the whole reference, averaged over seeds.

Orderings use the mean over seeds; the paired seed test of the leaderboard stays the only source of
bold.  Reads the results table alone.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from benchmark.core.names import ALL, FID, FID_HALF_A, FID_HALF_B, REAL
from benchmark.core.presets import PROTOCOL_SETTINGS
from benchmark.report.tables import rows_of

MAIN = "main"  # the ``point`` column's value of a cell's main point (harness/points.py writes it)
SELECTION_RULE = ("each method's scale is the one with the lowest overall FID on half a of its images (even "
                  "positions within each class); the FID shown is that of the other half at that scale")


def main_points(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the cells' main points: what the leaderboards and per-cell plots show."""
    if "point" not in table.columns:
        return table
    return table[table["point"].fillna(MAIN).astype(str) == MAIN]


def kendall_tau(a: list[str], b: list[str]) -> float:
    """Kendall's tau between two orderings (best first) of the methods both hold; NaN below two."""
    common = [m for m in a if m in b]
    if len(common) < 2:
        return float("nan")
    pos = {m: b.index(m) for m in common}
    score = 0
    for x, y in itertools.combinations(common, 2):  # x before y in a
        score += 1 if pos[x] < pos[y] else -1
    return score / (len(common) * (len(common) - 1) / 2)


def _overall(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean over seeds of the overall ``metric``: one row per (method, train_steps, guidance)."""
    rows = rows[(rows["metric"] == metric) & (rows["group"] == ALL) & (rows["method"] != REAL)]
    rows = rows[rows["value"].notna()]
    return rows.groupby(["method", "train_steps", "guidance"], dropna=False)["value"].mean().reset_index()


def _order(values: pd.Series) -> list[str]:
    """Methods best first (lowest value); ``values`` indexed by method."""
    return list(values.sort_values(kind="stable").index)


def _main_scale(rows: pd.DataFrame) -> dict[str, float]:
    """Each method's scale of its main point (its final model at the first scale listed)."""
    main = main_points(rows)
    main = main[main["method"] != REAL]
    return {m: float(g) for m, g in main.groupby("method")["guidance"].first().items()}


def _fmt_scale(w: float) -> str:
    return "official" if pd.isna(w) else f"{float(w):g}"


def budget_lines(rows: pd.DataFrame) -> list[str]:
    """The budget statement of one table's rows (every point), or nothing with fewer than two budgets."""
    fid = _overall(rows, FID)
    scale = _main_scale(rows)
    at_main = np.array([_same(g, scale.get(m)) for m, g in zip(fid["method"], fid["guidance"])], dtype=bool)
    fid = fid[at_main & fid["train_steps"].notna().to_numpy()]
    methods, steps, apart = _shared({m: set(g["train_steps"]) for m, g in fid.groupby("method")})
    fid = fid[fid["method"].isin(methods)]
    if len(methods) < 2 or len(steps) < 2:
        return []
    orders = [_order(fid[fid["train_steps"] == s].set_index("method")["value"]) for s in steps]
    line = f"Budgets (overall FID at each method's main scale, steps {', '.join(str(int(s)) for s in steps)}): "
    line += _best_counts([o[0] for o in orders], "budgets")
    tau = kendall_tau(orders[-2], orders[-1])
    agree = "agree" if tau == 1 else "differ"
    line += (f"; the orderings at the last two budgets ({int(steps[-2])}, {int(steps[-1])}) {agree}, "
             f"Kendall tau {tau:.2f}")
    return [line + (f"; not compared: {', '.join(apart)} (scored at other steps)." if apart else ".")]


def scale_lines(rows: pd.DataFrame) -> list[str]:
    """The guidance statement of one table's rows (the final models): best per scale, then the ordering at a
    common scale beside the ordering at each method's own scale chosen on the other half of its images."""
    fid = _overall(rows, FID)
    if fid.empty:
        return []
    fid = fid[fid["train_steps"].notna() & fid["guidance"].notna()]
    fid = fid[fid["train_steps"] == fid.groupby("method")["train_steps"].transform("max")]
    methods, common, apart = _shared({m: set(g["guidance"]) for m, g in fid.groupby("method")})
    fid = fid[fid["method"].isin(methods)]
    if len(methods) < 2 or len(common) < 2:
        return []
    orders = {w: _order(fid[fid["guidance"] == w].set_index("method")["value"]) for w in common}
    lines = [f"Scales (overall FID of the final models, guidance {', '.join(_fmt_scale(w) for w in common)}): "
             + _best_counts([o[0] for o in orders.values()], "scales")
             + (f"; not compared: {', '.join(apart)} (scored at other scales)." if apart else ".")]
    main = _main_scale(rows)
    at = next((w for w in dict.fromkeys(main.values()) if w in orders), common[0])
    lines.append(f"At the common scale {_fmt_scale(at)}: " + " < ".join(orders[at]) + ".")
    tuned = tuned_ranking(rows)
    if tuned is None:
        lines.append("Own best scales: not shown (rows fid_half_a / fid_half_b are missing; cells scored before "
                     "guidance lists had them: --rescore adds them).")
        return lines
    shown = " < ".join(f"{m} (w={_fmt_scale(w)}, {v:.2f})" for m, (w, v) in tuned.items())
    tau = kendall_tau(orders[at], list(tuned))
    lines.append(f"At each method's own best scale ({SELECTION_RULE}): {shown}; Kendall tau against the common "
                 f"scale {tau:.2f}.")
    return lines


def tuned_ranking(rows: pd.DataFrame) -> dict[str, tuple[float, float]] | None:
    """{method: (chosen scale, FID of half b there)} best first, the scale chosen on half a at the final step;
    None when a method lacks the half rows."""
    a, b = _overall(rows, FID_HALF_A), _overall(rows, FID_HALF_B)
    if a.empty or b.empty:
        return None
    out = {}
    for method in sorted(set(a["method"]) | set(b["method"])):
        mine_a, mine_b = a[a["method"] == method], b[b["method"] == method]
        if mine_a.empty:
            return None
        mine_a = mine_a[mine_a["train_steps"] == mine_a["train_steps"].max()]
        pick = mine_a.loc[mine_a["value"].idxmin()]
        same = mine_b["guidance"].map(lambda g, w=pick["guidance"]: _same(g, w))
        hit = mine_b[(mine_b["train_steps"] == pick["train_steps"]) & same]
        if hit.empty:
            return None
        out[method] = (float(pick["guidance"]), float(hit["value"].iloc[0]))
    return dict(sorted(out.items(), key=lambda kv: kv[1][1]))


def _shared(held: dict[str, set]) -> tuple[list[str], list, list[str]]:
    """(methods, the values they all hold, the methods left out) among the methods holding two values or
    more (steps, or scales): every such method when they share two; else the most methods that share
    some two (larger values first at a tie), so an outside model scored at its own steps leaves the
    grid's statement as it was and is named as not compared."""
    held = {m: v for m, v in held.items() if len(v) >= 2}  # a model scored at one point has no curve
    if len(held) < 2:
        return [], [], []
    pairs = itertools.combinations(sorted(set().union(*held.values()), reverse=True), 2)
    best = max(pairs, key=lambda pair: sum(set(pair) <= v for v in held.values()), default=None)
    methods = sorted(m for m, v in held.items() if best is not None and set(best) <= v)
    if len(methods) < 2:
        return [], [], []
    values = sorted(set.intersection(*(held[m] for m in methods)))
    return methods, values, sorted(set(held) - set(methods))


def _best_counts(winners: list[str], what: str) -> str:
    counts = pd.Series(winners).value_counts()
    n = len(winners)
    parts = [f"{m} best at {k} of {n} {what}" for m, k in counts.items()]
    return "; ".join(parts)


def _same(a, b) -> bool:
    if b is None:
        return False
    if pd.isna(a) and pd.isna(b):
        return True
    return not pd.isna(a) and not pd.isna(b) and abs(float(a) - float(b)) < 1e-9


def robustness_lines(table: pd.DataFrame, key: dict) -> list[str]:
    """The lines under the leaderboard of ``key`` (a TABLE_KEY dict): nothing when the table holds one
    budget and one scale."""
    rows = rows_of(table, key)
    return budget_lines(rows) + scale_lines(rows) + protocol_lines(rows, key)


def protocol_lines(rows: pd.DataFrame, key: dict) -> list[str]:
    """Under a paper protocol with several scales: published rows are comparable with main points at the
    protocol's own scale only; say which main points are not at it."""
    protocol = PROTOCOL_SETTINGS.get(str(key["protocol"]))
    methods = rows[rows["method"] != REAL]
    if protocol is None or methods["guidance"].nunique() < 2:
        return []
    if protocol.guidance is None:
        return [f"Published rows of protocol {key['protocol']} are at each method's official guidance scale: compare "
                "them only with main points at that scale (sample.guidance=none)."]
    off = sorted(m for m, w in _main_scale(rows).items() if not _same(w, protocol.guidance))
    line = (f"Published rows of protocol {key['protocol']} are at guidance {protocol.guidance:g}: compare them only "
            f"with main points at that scale")
    return [line + (f"; not {', '.join(off)}, whose main points are at another scale." if off else ".")]
