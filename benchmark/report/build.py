"""Build the whole report of a results folder from ``results.csv`` alone."""

from __future__ import annotations

from pathlib import Path

from benchmark.core.files import write_csv_atomic
from benchmark.harness.results import read_results
from benchmark.report.claims import claim_frame, claim_lines, claim_tests, verdict_lines
from benchmark.report.curves import write_curves
from benchmark.report.html import write_html
from benchmark.report.leaderboard import no_ranking_lines, one_seed_lines, write_leaderboards
from benchmark.report.plots import write_plots
from benchmark.report.robustness import main_points, robustness_lines
from benchmark.report.stale import write_stale


def make_report(out: Path, *, plots: bool = True, say=print) -> list[Path]:
    """Redraw leaderboards (and plots) from ``out/results.csv`` alone and return the files written
    (``leaderboard_paired.csv``, the seed-level tests behind the marks, among them).  ``say`` gets one
    line per table that ranks nothing (its classifier evaluator failed the trust gate), one per
    table that claims no ranking because its methods have one seed, and one per kind of stale row
    (written by an earlier version that computed it differently, listed in ``stale_rows.csv``)."""
    every = read_results(out)
    table = main_points(every)  # the cells' main points; the budget points and other scales are curves
    for line in no_ranking_lines(table):
        say(f"WARNING: {line}")
    for line in one_seed_lines(table):
        say(f"NOTE: {line}")
    paths, stale = write_stale(table, Path(out))
    for line in stale:
        say(f"WARNING: {line}")
    tested: list = []  # (table key, its claim tests): computed once, for the lines, the console and the CSV

    def under(key: dict) -> list[str]:
        tested.append((key, claim_tests(every, key)))
        return robustness_lines(every, key) + claim_lines(every, key, tested[-1][1])

    paths += write_leaderboards(table, out, under=under)
    for line in verdict_lines(tested):
        say(line)
    claims = claim_frame(tested)
    if len(claims):  # the published claims a table can test (report/claims.py), every budget and metric
        paths.append(Path(out) / "claims.csv")
        write_csv_atomic(paths[-1], claims)
    if plots:
        paths += write_plots(table, Path(out))
        paths += write_curves(every, Path(out))
    paths.append(write_html(Path(out)))  # last: it shows what the steps above wrote
    return paths
