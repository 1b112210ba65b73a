"""A published claim tested on a results table: treatment against baseline, paired over seeds.

A claim names two methods, the tail metrics on which the paper says the treatment is better (and in
which direction), and the metrics that say what the treatment costs.  Under every leaderboard that
holds both methods, the report writes the test of each registered claim:

- for each metric, both methods' means over the seeds they share, the treatment's advantage
  (``report/seeds.py``'s paired t test: mean of the per-seed differences, its 95% interval, two-sided p);
- the verdict, read on the tail metrics only, with Holm's correction over them (so that naming three
  metrics does not triple the chance of a false "reproduced"):
  **reproduced** when at least one tail metric separates the two in the claim's direction (Holm-adjusted
  p < 0.05, positive mean advantage), **contradicted** when none does and at least one separates them
  the other way, **not reproduced at this scale** otherwise, **untested** below two paired seeds;
- the same verdict at each training budget the table was scored at (the cells' budget points at their
  main guidance scale), so the curve shows where the two methods part or that they never do.

A claim's direction is the paper's, not the leaderboard column's ranking rule: the in-manifold Vendi
ratio is tested as "higher is more diverse" (the claim is that the treatment restores diversity a
collapsing baseline loses), although the leaderboard ranks that column by closeness to 1.

Reads the results table alone, like the rest of the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from benchmark.core.names import (
    COVERAGE,
    FEW,
    FID,
    MANY,
    MEMORIZATION,
    MEMORIZATION_PIXEL,
    REAL,
    UNTRUSTED_NOTE,
    VENDI_INLIER_RATIO,
)
from benchmark.report.robustness import MAIN
from benchmark.report.seeds import ALPHA, MIN_PAIRED, PairedTest, compare
from benchmark.report.tables import attach_feature_free_rows, rows_of


@dataclass(frozen=True)
class Metric:
    label: str
    metric: str
    group: str
    lower_is_better: bool  # in the claim's direction
    tail: bool  # part of the verdict (True) or what the treatment costs / a supplementary figure (False)
    digits: int = 3
    floor: bool = True  # the real-data floor's value is comparable (FID is not: the floor's n differs)


@dataclass(frozen=True)
class Claim:
    name: str
    source: str  # the paper, in words
    statement: str
    baseline: str
    treatment: str
    metrics: tuple[Metric, ...]


CBDM_TAIL = Claim(
    name="cbdm-tail",
    source="CBDM (Qin et al., CVPR 2023)",
    statement="a class-conditional DDPM trained on long-tailed data loses diversity on its tail classes "
              "(collapse, copying); CBDM's regulariser restores much of it",
    baseline="ddpm",
    treatment="cbdm",
    metrics=(
        Metric("Mem few", MEMORIZATION, FEW, True, True),
        Metric("Vendi-in/real few", VENDI_INLIER_RATIO, FEW, False, True),
        Metric("Cov few", COVERAGE, FEW, False, True),
        Metric("FID many", FID, MANY, True, False, 2, floor=False),
        Metric("Mem px few", MEMORIZATION_PIXEL, FEW, True, False),
    ),
)
CLAIMS = (CBDM_TAIL,)

REPRODUCED, CONTRADICTED, NOT_REPRODUCED, UNTESTED = (
    "reproduced", "contradicted", "not reproduced at this scale", "untested")


@dataclass(frozen=True)
class MetricTest:
    metric: Metric
    baseline_mean: float
    treatment_mean: float
    test: PairedTest  # the treatment's advantage in the claim's direction (positive: as the paper says)
    p_holm: float = math.nan  # tail metrics only
    floor: float = math.nan  # the real-data floor's value (mean over its seeds): what "no loss" looks like


@dataclass(frozen=True)
class ClaimTest:
    claim: Claim
    train_steps: int
    n_seeds: int
    tests: tuple[MetricTest, ...]
    verdict: str

    def on(self, label: str) -> MetricTest:
        return next(t for t in self.tests if t.metric.label == label)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a test)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[i]))
        out[i] = running
    return out


def _per_seed(rows: pd.DataFrame, method: str, metric: Metric) -> dict:
    pick = rows[(rows["method"] == method) & (rows["metric"] == metric.metric) & (rows["group"] == metric.group)]
    pick = pick[pick["value"].notna()]
    return pick.groupby("seed")["value"].mean().to_dict()


def _mean(values: dict, seeds: set) -> float:
    return float(np.mean([values[s] for s in seeds])) if seeds else math.nan


def run_claim(claim: Claim, rows: pd.DataFrame, train_steps: int, floor_rows: pd.DataFrame | None = None) -> ClaimTest:
    """``rows``: one table's rows at one budget, both methods at their main scale; ``floor_rows``: the
    table's real-data rows (the floor column)."""
    tests = []
    for m in claim.metrics:
        base, treat = _per_seed(rows, claim.baseline, m), _per_seed(rows, claim.treatment, m)
        test = compare(treat, base, lower_is_better=m.lower_is_better)
        shared = set(base) & set(treat)  # the means shown are over the seeds the test pairs
        floor = _per_seed(floor_rows, REAL, m) if floor_rows is not None and m.floor else {}
        tests.append(MetricTest(m, _mean(base, shared), _mean(treat, shared), test,
                                floor=_mean(floor, set(floor))))
    tail = [i for i, t in enumerate(tests) if t.metric.tail]
    adjusted = holm([tests[i].test.p for i in tail])
    for i, p in zip(tail, adjusted):
        t = tests[i]
        tests[i] = replace(t, p_holm=p)
    n = max((tests[i].test.n_seeds for i in tail), default=0)
    tail_tests = [tests[i] for i in tail]
    if n < MIN_PAIRED or all(math.isnan(t.p_holm) for t in tail_tests):
        verdict = UNTESTED
    elif any(t.p_holm < ALPHA and t.test.mean_diff > 0 for t in tail_tests):
        verdict = REPRODUCED
    elif any(t.p_holm < ALPHA and t.test.mean_diff < 0 for t in tail_tests):
        verdict = CONTRADICTED
    else:
        verdict = NOT_REPRODUCED
    return ClaimTest(claim, int(train_steps), n, tuple(tests), verdict)


def _table_rows(table: pd.DataFrame, key: dict) -> pd.DataFrame:
    return rows_of(attach_feature_free_rows(table), key)  # pixel-space memorisation joins the table of its data


def _untrusted(rows: pd.DataFrame) -> bool:
    return bool(rows["note"].astype(str).str.contains(UNTRUSTED_NOTE, regex=False).any())


def _at_main_scale(rows: pd.DataFrame, methods: tuple[str, ...]) -> pd.DataFrame:
    rows = rows[rows["method"].isin(methods)]
    point = rows["point"].fillna(MAIN).astype(str) if "point" in rows.columns else pd.Series(MAIN, index=rows.index)
    scale = rows[point == MAIN].groupby("method")["guidance"].first()
    keep = [m in scale.index and (pd.isna(g) and pd.isna(scale[m]) or (not pd.isna(g) and not pd.isna(scale[m])
                                                                        and abs(float(g) - float(scale[m])) < 1e-9))
            for m, g in zip(rows["method"], rows["guidance"])]
    return rows[keep]


def claim_tests(table: pd.DataFrame, key: dict) -> list[ClaimTest]:
    """Each registered claim whose two methods the table of ``key`` holds, at its final budget first, then at
    each earlier budget both methods were scored at (ascending)."""
    rows = _table_rows(table, key)
    if _untrusted(rows):
        return []  # its features cannot separate the methods: the leaderboard ranks nothing, nor is a claim tested
    out = []
    for claim in CLAIMS:
        pair = (claim.baseline, claim.treatment)
        if not set(pair) <= set(rows["method"]):
            continue
        scaled = _at_main_scale(rows, pair)
        steps = sorted(set.intersection(*(set(scaled.loc[scaled["method"] == m, "train_steps"].astype(int))
                                          for m in pair)))
        if not steps:
            continue
        final = steps[-1]
        floor = rows[rows["method"] == REAL]
        out.append(run_claim(claim, scaled[scaled["train_steps"].astype(int) == final], final, floor))
        out += [run_claim(claim, scaled[scaled["train_steps"].astype(int) == s], s, floor) for s in steps[:-1]]
    return out


def _fmt(x: float, digits: int) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _direction(m: Metric) -> str:
    return "lower" if m.lower_is_better else "higher"


def claim_lines(table: pd.DataFrame, key: dict, tests: list[ClaimTest] | None = None) -> list[str]:
    """The Markdown written under the leaderboard of ``key``: per claim, a header line, a table of the
    final budget's tests (means over the paired seeds) and one line of verdicts per budget."""
    tests = claim_tests(table, key) if tests is None else tests  # ``tests``: claim_tests of the same key
    lines: list[str] = []
    for claim in CLAIMS:
        mine = [t for t in tests if t.claim is claim]
        if not mine:
            rows = _table_rows(table, key)
            if _untrusted(rows) and {claim.baseline, claim.treatment} <= set(rows["method"]):
                lines.append(f"Claim test, {claim.source}: not run, this table's evaluator failed the trust gate.")
            continue
        final, earlier = mine[0], mine[1:]
        if final.verdict == UNTESTED:  # nothing to show but why
            n = final.n_seeds
            lines.append(f"Claim test, {claim.source} ({claim.treatment} against {claim.baseline}): untested, {n} "
                         f"paired seed{'s' if n != 1 else ''}; a t test needs at least {MIN_PAIRED}.")
            continue
        tail = ", ".join(m.label for m in claim.metrics if m.tail)
        lines.append(f"**Claim test, {claim.source}**: {claim.statement}. {claim.treatment} against "
                     f"{claim.baseline} at {final.train_steps} steps, paired t test over {final.n_seeds} seed"
                     f"{'s' if final.n_seeds != 1 else ''}; verdict on the tail metrics ({tail}) with Holm's "
                     f"correction over them: **{final.verdict}**.")
        rows = [f"| metric (claim: {claim.treatment} ...) | {claim.baseline} | {claim.treatment} | real data (floor) | "
                f"advantage [95% CI] | p | p (Holm) |", "|---|---|---|---|---|---|---|"]
        for t in final.tests:
            m, d = t.metric, t.metric.digits
            role = "" if m.tail else " (not in the verdict)"
            ci = (f"[{_fmt(t.test.ci_low, d)}, {_fmt(t.test.ci_high, d)}]"
                  if not math.isnan(t.test.ci_low) else "")
            rows.append(f"| {m.label}: {_direction(m)}{role} | {_fmt(t.baseline_mean, d)} | {_fmt(t.treatment_mean, d)} "
                        f"| {_fmt(t.floor, d)} | {_fmt(t.test.mean_diff, d)} {ci} | {_p(t.test.p)} | {_p(t.p_holm)} |")
        lines.append("\n".join(rows))
        seeds_notes = dict.fromkeys(part for t in final.tests for part in t.test.note.split("; ")
                                    if part.startswith("not tested") or part.endswith("dropped"))
        lines.append("Advantage: the per-seed difference in the claim's direction (positive: as the paper says), "
                     "mean over the paired seeds (the methods' columns too); the floor column: held-out real images scored "
                     "like generated ones, what a method that lost nothing would reach"
                     + "".join(f"; {n}" for n in seeds_notes) + ".")
        if earlier:
            parts = []
            for t in [*earlier, final]:
                sep = [x.metric.label for x in t.tests if x.metric.tail and x.p_holm < ALPHA]
                parts.append(f"{t.train_steps}: {t.verdict}" + (f" ({', '.join(sep)})" if sep else ""))
            lines.append("Claim verdict at each budget (steps): " + "; ".join(parts) + ".")
    return lines


def verdict_lines(tested: list[tuple[dict, list[ClaimTest]]]) -> list[str]:
    """One console line per claim a table tests (``tested``: each table key with its claim_tests): its
    verdict at the final budget."""
    out = []
    for key, tests in tested:
        seen = set()
        for t in tests:  # each claim's final budget comes first
            if t.claim.name in seen or t.verdict == UNTESTED:  # untested: the one-seed note says why
                seen.add(t.claim.name)
                continue
            seen.add(t.claim.name)
            where = f"{key['dataset']} {key['profile']} {key['imbalance']:g} ({key['protocol']})"
            seeds = f"{t.n_seeds} paired seed{'s' if t.n_seeds != 1 else ''}"
            out.append(f"claim test {t.claim.name} on {where}: {t.verdict} ({t.claim.treatment} vs "
                       f"{t.claim.baseline}, {seeds}, {t.train_steps} steps; leaderboard.md)")
    return out


def claim_frame(tested: list[tuple[dict, list[ClaimTest]]]) -> pd.DataFrame:
    """Every claim test of every table (``tested``: each key with its claim_tests), one row per (table,
    claim, budget, metric): ``claims.csv``."""
    records = []
    for key, tests in tested:
        for t in tests:
            for x in t.tests:
                records.append({**key, "claim": t.claim.name, "baseline": t.claim.baseline,
                                "treatment": t.claim.treatment, "train_steps": t.train_steps,
                                "column": x.metric.label, "metric": x.metric.metric, "group": x.metric.group,
                                "direction": _direction(x.metric), "in_verdict": x.metric.tail,
                                "baseline_mean": x.baseline_mean, "treatment_mean": x.treatment_mean, "floor": x.floor,
                                "advantage": x.test.mean_diff, "ci_low": x.test.ci_low, "ci_high": x.test.ci_high,
                                "p": x.test.p, "p_holm": x.p_holm, "n_seeds": x.test.n_seeds, "verdict": t.verdict,
                                "note": x.test.note})
    return pd.DataFrame.from_records(records)
