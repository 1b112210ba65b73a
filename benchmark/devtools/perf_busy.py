"""``perf --busy N``: the harness's training rate beside N busy processes, against the same machine quiet.

A laptop with a browser open, a CI runner or a shared node runs the benchmark beside other work.  Each
round times the harness arm (the real ``trainer.train``) twice, quiet and with N processes spinning on
cores, in alternating order from round to round so that drift hits both alike; before each timing the
threads are decided as a grid cell's stage decides them (``benchmark.core.threads``: ``auto`` measures
the load then), or fixed with ``--threads``, which shows what a thread count blind to the load costs.
The figure is the median of the per-round busy / quiet ratios.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmark.core.threads import measure, use_threads
from benchmark.devtools.perf_loops import harness_seconds

SETTLE_S = 0.5  # the spinners are running on their cores before the load is measured


@contextlib.contextmanager
def busy_processes(n: int):
    """``n`` processes that spin on a core each until the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(SETTLE_S if n else 0)
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def busy_vs_quiet(cfg, data, name: str, *, busy: int, rounds: int, steps: int, warm: int, device,
                  precision: str, threads: str) -> dict:
    """Harness images/s quiet and beside ``busy`` spinning processes, per round, with the threads used."""
    acfg = replace(cfg, train=replace(cfg.train, precision=precision))
    ips: dict[str, list[float]] = {"quiet": [], "busy": []}
    used: dict[str, list[str]] = {"quiet": [], "busy": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for cond in (("quiet", "busy") if r % 2 == 0 else ("busy", "quiet")):
                with busy_processes(busy if cond == "busy" else 0):
                    decision = measure(threads, device)
                    with use_threads(decision.threads):
                        sec = harness_seconds(acfg, data, name, steps=steps, warm=warm, device=device,
                                              tmp=Path(tmp), tag=f"{name}-{cond}-{r}")
                ips[cond].append(steps * cfg.train.batch_size / sec)
                load = f"busy {decision.busy}" if decision.auto else "as set"
                used[cond].append(f"{decision.threads} ({load})")
                # as each timing ends: a run stopped early (a time limit) still says what it measured
                seen = f"{decision.busy} of {decision.cores} cores busy" if decision.auto else "load not measured"
                print(f"  round {r + 1} {cond}: {ips[cond][-1]:.1f} images/s; threads {decision.threads}, {seen}",
                      flush=True)
    ratio = statistics.median(b / q for b, q in zip(ips["busy"], ips["quiet"]))
    return {"ips": ips, "threads": used, "ratio": ratio}


def report(name: str, precision: str, m: dict, *, busy: int, threads: str) -> None:
    spread = lambda xs: f"{statistics.median(xs):8.1f} [{min(xs):.1f}-{max(xs):.1f}]"  # noqa: E731
    print(f"{name:<7}{precision:<6}{spread(m['ips']['quiet']):>24}{spread(m['ips']['busy']):>24}"
          f"{m['ratio']:>12.2f}x   threads quiet {', '.join(m['threads']['quiet'])}; "
          f"busy {', '.join(m['threads']['busy'])}")


def header(*, busy: int, rounds: int, steps: int, warm: int, threads: str) -> None:
    print(f"\ntrain beside {busy} busy process{'es' if busy != 1 else ''} (each spinning on a core): harness "
          f"images/s, median [min-max] of {rounds} rounds x {steps} timed steps (+{warm} warm-up), quiet and busy "
          f"alternating; threads={threads} decided before each timing (the load measured then); busy/quiet is the "
          "median of per-round ratios")
    print(f"{'method':<7}{'prec':<6}{'quiet':>24}{'busy':>24}{'busy/quiet':>13}")
