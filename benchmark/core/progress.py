"""Progress that fits its destination: a bar on a terminal, a few plain lines in a file.

A tqdm bar redraws itself with carriage returns; written to a file (``> log.txt``, a Slurm log) every
redraw stays, and a long run leaves hundreds of thousands of them. So a bar is drawn only when the
stream it writes to is a terminal. Elsewhere a main task (training, generating a sample set) writes
one line per 10% of its work or per minute, whichever comes first, with its rate and the time left;
a passing sub-task (``transient``: a batch loop inside a stage) writes only when it runs past a
minute, so a short one leaves no line at all.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm

LINE_EVERY_S = 60.0
LINE_EVERY_FRACTION = 0.1


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class LineProgress:
    """tqdm's small interface (update, set_postfix, close, iteration) writing whole lines."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", initial: int = 0,
                 unit: str = "it", transient: bool = False, stream=None, clock=time.monotonic) -> None:  # fmt: skip
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.transient, self.stream, self.clock = transient, stream or sys.stderr, clock
        self.start_n, self.t0 = initial, clock()
        self.last_t = self.t0
        self.next_mark = self._mark_after(initial)
        self.postfix = ""
        self.closed = False
        self.lines = 0

    def _mark_after(self, n: int) -> float:
        if not self.total:
            return float("inf")
        step = LINE_EVERY_FRACTION * self.total
        return (int(n / step) + 1) * step

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        by_fraction = not self.transient and self.n >= self.next_mark and (not self.total or self.n < self.total)
        if by_fraction or now - self.last_t >= LINE_EVERY_S:
            self._line(now)

    def _line(self, now: float) -> None:
        done = self.n - self.start_n
        elapsed = now - self.t0
        rate = done / elapsed if elapsed > 0 else float("nan")
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        parts.append(f"{rate:.3g} {self.unit}/s" if rate == rate else f"- {self.unit}/s")
        parts.append(f"elapsed {_clock(elapsed)}")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        print(", ".join(parts), file=self.stream, flush=True)
        self.lines += 1
        self.last_t = now
        self.next_mark = self._mark_after(self.n)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # a main task says when it is done; a passing one only if it already said something
        if self.n > self.start_n and (not self.transient or self.lines):
            self._line(self.clock())


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", enabled: bool = True,
             initial: int = 0, unit: str = "it", transient: bool = False):  # fmt: skip
    """A tqdm bar on a terminal, :class:`LineProgress` elsewhere, nothing when not ``enabled``."""
    if enabled and is_terminal():
        return tqdm(iterable, total=total, desc=desc, initial=initial, unit=unit, leave=not transient)
    return LineProgress(iterable, total=total, desc=desc, initial=initial, unit=unit, transient=transient,
                        stream=sys.stderr) if enabled else tqdm(iterable, total=total, disable=True)  # fmt: skip
