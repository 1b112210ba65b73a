"""Build the whole report of a results folder from ``results.csv`` alone."""

from __future__ import annotations

from pathlib import Path

from benchmark.harness.results import read_results
from benchmark.report.leaderboard import write_leaderboards
from benchmark.report.plots import write_plots


def make_report(out: Path, *, plots: bool = True) -> list[Path]:
    """Redraw leaderboards (and plots) from ``out/results.csv`` alone."""
    table = read_results(out)
    paths = write_leaderboards(table, out)
    if plots:
        paths += write_plots(table, Path(out))
    return paths
