"""Progress in a file is a few whole lines (per 10% or per minute, with rate and ETA), never bar frames."""

from __future__ import annotations

import io

from tqdm import tqdm

from benchmark.core import progress as progress_mod
from benchmark.core.progress import LineProgress, progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_main_task_writes_one_line_per_tenth_with_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(total=1000, desc="train ddpm", unit="step", stream=out, clock=clock)
    for _ in range(1000):
        clock.t += 0.01
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0].startswith("train ddpm: 100/1000 (10%), 100 step/s, elapsed 0:01, ETA 0:09")
    assert lines[-1].startswith("train ddpm: 1000/1000 (100%)") and "ETA" not in lines[-1]


def test_a_slow_task_writes_a_line_per_minute_and_resumes_from_its_initial_step():
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(total=100, initial=50, desc="train", stream=out, clock=clock)
    for _ in range(4):  # 4 steps of 40 s: lines at 80 s and 160 s, none at the 10% marks 60 / 70 not reached
        clock.t += 40
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("train: 52/100 (52%), 0.025 it/s, elapsed 1:20, ETA 32:00")


def test_a_short_passing_task_leaves_no_line_a_long_one_does():
    out, clock = io.StringIO(), Clock()
    for _ in LineProgress(range(50), desc="features", transient=True, stream=out, clock=clock):
        clock.t += 0.1
    assert out.getvalue() == ""
    for _ in LineProgress(range(50), desc="features", transient=True, stream=out, clock=clock):
        clock.t += 2.0
    assert len(out.getvalue().splitlines()) == 2  # one after a minute, one at the end
    bar = LineProgress(total=10, desc="x", stream=out, clock=clock)
    bar.set_postfix(loss="0.1234")
    bar.update(10)
    bar.close()
    assert out.getvalue().splitlines()[-1].endswith("loss=0.1234")


def test_a_bar_only_on_a_terminal(monkeypatch):
    assert isinstance(progress(range(3), desc="x"), LineProgress)  # pytest's captured stderr is no terminal
    monkeypatch.setattr(progress_mod, "is_terminal", lambda stream=None: True)
    bar = progress(range(3), desc="x")
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()
    off = progress(range(3), desc="x", enabled=False)
    assert isinstance(off, tqdm) and off.disable and list(off) == [0, 1, 2]
