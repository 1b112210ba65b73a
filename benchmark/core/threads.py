"""How many CPU threads a stage runs: the cores actually free to it, not the machine's core count.

torch (OpenMP) and numpy (OpenBLAS) start one thread per core of the machine.  When some of those
cores are taken, by a cgroup quota, an affinity mask or other processes, the threads wait for time
slices at every synchronisation: on a 2-core AMD EPYC beside one busy process the demo's training ran
at 0.26x its quiet rate with two threads, at 0.62x with one.

``threads = auto`` (the config key, default) takes, per stage:

1. the cores this process may use: its affinity mask (``os.sched_getaffinity``; a Slurm task's cpus),
   lowered to the cgroup's CPU quota (``cpu.max`` or ``cpu.cfs_quota_us``, rounded down, at least 1)
   and to ``OMP_NUM_THREADS`` where that is set (the cap a user, a launcher or ``--jobs`` gave);
2. on a CPU run, minus the cores other processes are busy on at the start of the stage: the busy time
   of the allowed cores over a short window (``/proc/stat``), less this process's own
   (``/proc/self/stat``), rounded to whole cores;

never fewer than 1.  A GPU run skips the load measurement: its CPU threads feed the GPU and are
few.  ``threads = N`` is N, always.  The decision is a pure function of those readings
(:func:`decide`), so it is tested with readings made up, and :func:`stage_threads` sets it for
torch and every BLAS / OpenMP pool (threadpoolctl) for the stage, logs it to the cell's log, says on
the console when it is below the core count, and puts the previous settings back afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from benchmark.core.errors import ConfigError

log = logging.getLogger("ltgen")

LOAD_WINDOW_S = 0.3  # long enough to see a process that spins, short beside any stage
AUTO = "auto"


def parse_threads(value: str | int) -> int | None:
    """None for ``auto``, else the thread count; anything else is a ConfigError naming the fix."""
    text = str(value).strip().lower()
    if text == AUTO:
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"threads={value!r} is neither 'auto' nor a whole number of threads >= 1; "
                          "use --set threads=auto (the cores free at each stage) or e.g. --set threads=4")
    return n


@dataclass(frozen=True)
class Decision:
    threads: int
    cores: int  # cores this process may use (affinity, quota, OMP_NUM_THREADS)
    busy: int  # of them, busy with other processes (0 when not measured)
    auto: bool  # decided from the readings (threads=auto), not given
    how: str  # the readings behind it, for the cell's log

    def line(self) -> str:
        """What the console is told when fewer threads than cores are used."""
        plural = "s" if self.threads > 1 else ""
        return f"{self.cores} cores, {self.busy} busy: using {self.threads} thread{plural}"


def usable_cores(affinity: int, quota: float | None, omp: int | None) -> int:
    """The cores this process may use: the affinity mask, lowered to the cgroup quota and the OMP cap."""
    cores = max(1, affinity)
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    if omp is not None:
        cores = min(cores, max(1, omp))
    return cores


def decide(setting: str | int, *, affinity: int, quota: float | None = None, omp: int | None = None,
           busy: float | None = None) -> Decision:
    """Threads for a stage from the readings; ``busy`` is None when the load was not measured (a GPU
    run, or a fixed setting).  Busy cores round to the nearest whole core: a process spinning on one
    core reads about 1.0, the short jobs of a desktop under 0.5."""
    cores = usable_cores(affinity, quota, omp)
    how = f"affinity {affinity}, quota {'none' if quota is None else f'{quota:g}'}, OMP_NUM_THREADS " \
          f"{'unset' if omp is None else omp}, busy {'not measured' if busy is None else f'{busy:.2f}'}"
    fixed = parse_threads(setting)
    if fixed is not None:
        return Decision(fixed, cores, 0, False, f"threads={fixed} as set ({how})")
    taken = 0 if busy is None else min(cores, max(0, math.floor(busy + 0.5)))
    return Decision(max(1, cores - taken), cores, taken, True, f"threads=auto ({how})")


# ---------------------------------------------------------------- the readings


def affinity_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None
    when unlimited or unreadable."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: "max 100000" or "200000 100000"
            text = _read(root / path.lstrip("/") / "cpu.max") or _read(root / "cpu.max")
            if text:
                quota, _, period = text.partition(" ")
                if quota != "max" and period:
                    return int(quota) / int(period)
        elif "cpu" in controllers.split(","):
            for base in (root / controllers / path.lstrip("/"), root / "cpu" / path.lstrip("/"), root / "cpu"):
                quota, period = _read(base / "cpu.cfs_quota_us"), _read(base / "cpu.cfs_period_us")
                if quota and period:
                    return int(quota) / int(period) if int(quota) > 0 else None
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def omp_cap() -> int | None:
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return n if n >= 1 else None


def _cpu_times(cpus: set[int]) -> tuple[int, int]:
    """(busy, total) jiffies of the given cpus from /proc/stat."""
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(values)
        busy += sum(values) - values[3] - values[4]
    return busy, total


def _own_jiffies() -> int:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (of every thread of this process)


def busy_cores(window: float = LOAD_WINDOW_S) -> float | None:
    """Cores of this process's affinity mask that other processes kept busy over ``window`` seconds;
    None where /proc cannot tell (not Linux)."""
    try:
        cpus = os.sched_getaffinity(0)
        b0, t0, o0 = *_cpu_times(cpus), _own_jiffies()
        time.sleep(window)
        b1, t1, o1 = *_cpu_times(cpus), _own_jiffies()
    except (AttributeError, OSError, ValueError, IndexError):
        return None
    if t1 <= t0:
        return None
    per_cpu = (t1 - t0) / len(cpus)  # jiffies one core had in the window
    return max(0.0, ((b1 - b0) - (o1 - o0)) / per_cpu)


def measure(setting: str | int, device: torch.device | str) -> Decision:
    """:func:`decide` on this process's readings now; the load only on a CPU run with ``auto``."""
    affinity, quota, omp = affinity_count(), cgroup_quota(), omp_cap()
    # one usable core leaves nothing to decide: no window to wait
    measured = torch.device(device).type == "cpu" and parse_threads(setting) is None and \
        usable_cores(affinity, quota, omp) > 1
    return decide(setting, affinity=affinity, quota=quota, omp=omp, busy=busy_cores() if measured else None)


def per_worker(decision: Decision, workers: int) -> int:
    """Threads each of ``workers`` processes started together gets: the decided threads split between
    them, at least 1 (a fixed ``threads = N`` is each worker's own)."""
    if decision.auto:
        return max(1, decision.threads // max(1, workers))
    return decision.threads


def cap_workers(n: int) -> None:
    """In a worker process: ``n`` threads now, and the cap its stages' ``auto`` decisions keep to
    (``OMP_NUM_THREADS``, which OpenMP libraries started later read as well)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    threadpool_limits(limits=n)


@contextlib.contextmanager
def use_threads(n: int):
    """torch's intra-op threads and every BLAS / OpenMP pool at ``n`` inside, as before outside."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def stage_threads(setting: str | int, device: torch.device | str, stage: str, *, say=print):
    """Decide the threads of ``stage`` now, run it with them, log the decision; yields the Decision."""
    decision = measure(setting, device)
    log.info("stage %s: %d CPU thread%s (%s)", stage, decision.threads, "s" if decision.threads > 1 else "",
             decision.how)
    if decision.auto and decision.threads < decision.cores and say is not None:  # a count set by hand is not news
        say(f"  {stage}: {decision.line()}", flush=True)
    with use_threads(decision.threads):
        yield decision
