"""Where grid cells run: here one after another, here N at a time, or one Slurm job each (submitit).

No scheduler of ours: ``--jobs N`` is a process pool on one machine (one GPU per worker when
GPUs are present, else ``cores // N`` torch threads per worker: oversubscribed OpenMP threads
slow every worker several-fold), and ``--launcher slurm`` hands one job per cell to submitit.
Every cell still resumes from its own folder and appends to ``results.csv`` under a file lock,
so ``report`` can be drawn at any time.  Cells that fine-tune another cell's model wait for it
(a second wave; on Slurm a job dependency).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.core.config import Config
from benchmark.core.device import resolve_device
from benchmark.core.distributed import init_from_env, shutdown
from benchmark.core.errors import ConfigError
from benchmark.core.files import write_text_atomic
from benchmark.core.names import REAL
from benchmark.core.registry import Registry
from benchmark.core.threads import cap_workers, measure, per_worker
from benchmark.harness.cells import (
    Cell,
    cell_config,
    check_or_write_config,
    expand_grid,
    parent_cell,
    resolve_precisions,
)
from benchmark.harness.grid import CellOutcome, run_cell, run_grid
from benchmark.harness.points import pending
from benchmark.harness.preflight import preflight

INSTALL_HINT = "pip install 'ltgen-bench[slurm]'  (or: pip install submitit)"
_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING"}


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time: str = "24:00:00"  # minutes or [D-]HH:MM[:SS]
    gpus: int = 1  # per job; more than one trains the cell with DDP across them
    cpus: int | None = None  # per task
    mem: str | None = None  # e.g. 64G
    extra: tuple[str, ...] = ()  # further sbatch options, key=value
    wait: bool = False  # block until every job ended, then write the report


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"--launcher slurm needs submitit, which is not installed; {INSTALL_HINT}") from None
    return submitit


def minutes(text: str) -> int:
    """'90' -> 90; '1:30:00' -> 90; '2-00:00:00' -> 2880 (Slurm's time formats)."""
    text = str(text).strip()
    try:
        days, _, clock = text.rpartition("-")
        p = [int(x) for x in clock.split(":")]
        if days:
            h, m, s = (p + [0, 0])[:3]
        elif len(p) == 1:
            return p[0]
        elif len(p) == 2:
            h, m, s = 0, p[0], p[1]
        else:
            h, m, s = p[:3]
        return int(days or 0) * 1440 + h * 60 + m + (1 if s else 0)
    except ValueError:
        raise ConfigError(f"--slurm-time {text!r} is not a time; use minutes (90) or [D-]HH:MM:SS") from None


def waves(cells: list[Cell]) -> list[list[Cell]]:
    """Cells that fine-tune another cell's model (cbdm-ft) go after the cells they start from."""
    first = [c for c in cells if parent_cell(c) is None]
    second = [c for c in cells if parent_cell(c) is not None]
    return [w for w in (first, second) if w]


def _say(i: int, n: int, outcome: CellOutcome) -> None:
    print(f"[{i}/{n}] {outcome.cell.name}: {outcome.status} in {outcome.seconds:.0f}s"
          + (f"  ERROR: {outcome.error}" if outcome.error else ""), flush=True)  # fmt: skip


# ----------------------------------------------------------------------------------------- --jobs N


def _init_worker(slots, threads: int) -> None:
    slot = slots.get()
    if slot is not None:  # before this process touches CUDA (torch initialises it lazily): its one GPU is cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = slot
    # numpy's BLAS read OMP_NUM_THREADS when the worker imported it, before this ran: limited now as well,
    # or each of the --jobs workers runs as many BLAS threads as the machine has cores; the variable then
    # caps what the worker's stages decide for themselves (threads=auto)
    cap_workers(threads)


def _worker_cell(cfg: Config, cell: Cell, out: Path, force: bool) -> CellOutcome:
    name = cfg.device
    if os.environ.get("CUDA_VISIBLE_DEVICES") and name.startswith("cuda"):
        name = "cuda"  # the worker's one visible GPU
    return run_cell(cfg, cell, out, device=resolve_device(name), force=force, progress=False)


def run_parallel(cfg: Config, out: Path, *, jobs: int, force: bool = False) -> list[CellOutcome]:
    """``jobs`` cells at a time in worker processes; one GPU each when the run uses GPUs."""
    device = resolve_device(cfg.device)
    out = Path(out)
    preflight(cfg, out, force=force)
    out.mkdir(parents=True, exist_ok=True)
    gpus: list[str | None] = [None]
    if device.type == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        if jobs > len(gpus):
            print(f"note: {jobs} jobs share {len(gpus)} GPUs", flush=True)
    decision = measure(cfg.threads, device)  # the cores free now, split between the workers
    threads = per_worker(decision, jobs)
    print(f"note: {jobs} jobs, {threads} CPU thread{'s' if threads > 1 else ''} each ({decision.line()})", flush=True)
    cells = expand_grid(cfg)
    ctx = mp.get_context("spawn")  # fresh workers: CUDA_VISIBLE_DEVICES and threads apply
    slots = ctx.Queue()
    for i in range(jobs):
        slots.put(gpus[i % len(gpus)])
    results: dict[Cell, CellOutcome] = {}
    done = 0
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(slots, threads)) as pool:
        for wave in waves(cells):
            futures = {pool.submit(_worker_cell, cfg, cell, out, force): cell for cell in wave}
            for fut in as_completed(futures):
                cell = futures[fut]
                try:
                    results[cell] = fut.result()
                except Exception as exc:  # a worker that died (out of memory, killed)
                    results[cell] = CellOutcome(cell, cell.folder(out), "failed", 0.0, f"{type(exc).__name__}: {exc}")
                done += 1
                _say(done, len(cells), results[cell])
    return [results[c] for c in cells]


# ----------------------------------------------------------------------------------- Slurm / submitit


def _cell_job(cfg: Config, cell: Cell, out: Path, force: bool, threads: int | None) -> CellOutcome:
    """What one submitit job runs: the cell, across the job's tasks with DDP when it has several."""
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:  # one task per GPU: the variables torchrun would set
        os.environ.update(
            RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank),
            MASTER_ADDR=env.hostnames[0], MASTER_PORT=str(20000 + int(str(env.job_id).split("_")[0]) % 20000),
        )  # fmt: skip
        init_from_env(cfg.device)
    if threads:
        cap_workers(threads)
    outcome = run_cell(cfg, cell, out, device=resolve_device(cfg.device), force=force, progress=False)
    shutdown()  # after a finished cell only: a rank that failed inside it exits with the group up (see cli.main)
    return outcome


def _executor(submitit, kind: str, folder: Path, opts: SlurmOptions, *, name: str, after: list[str]):
    if kind == "submitit-local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=minutes(opts.time))
        return ex
    extra = {}
    for item in opts.extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--slurm-extra {item!r} must be key=value, e.g. account=myproject or qos=high")
        extra[key.strip().replace("-", "_")] = value.strip()
    if after:
        extra["dependency"] = "afterany:" + ":".join(after)
    ex = submitit.SlurmExecutor(folder=folder)
    params = {"job_name": name, "time": minutes(opts.time), "nodes": 1}
    if opts.gpus:
        params.update(gpus_per_node=opts.gpus, ntasks_per_node=opts.gpus)
    for key, value in (("partition", opts.partition), ("cpus_per_task", opts.cpus), ("mem", opts.mem)):
        if value is not None:
            params[key] = value
    ex.update_parameters(**params, additional_parameters=extra)
    return ex


def _active_job(submitit, folder: Path) -> tuple[str | None, str]:
    """(job id, state) of a job recorded for this cell that Slurm may still run or queue, else (None, "").

    The state comes from submitit (``sacct``); where accounting is off or ``sacct`` fails it says
    UNKNOWN, and ``squeue`` (which lists the queued and running jobs) decides.  When neither can
    tell, the state is UNKNOWN and the cell is not submitted again: two jobs in one folder would
    waste the allocation and interleave their checkpoints.
    """
    record = folder / "slurm.json"
    if not record.exists():
        return None, ""
    info = json.loads(record.read_text())
    if info.get("launcher") != "slurm":
        return None, ""
    job_id = str(info["job_id"])
    try:
        state = str(submitit.SlurmJob(folder=folder / "submitit", job_id=job_id).state).upper()
    except Exception:
        state = "UNKNOWN"
    if state == "UNKNOWN":
        state = _squeue_state(job_id)
    return (job_id, state) if state in _ACTIVE or state == "UNKNOWN" else (None, "")


def _squeue_state(job_id: str) -> str:
    """The job's state from squeue: its state while queued or running, ENDED once Slurm forgot it."""
    try:
        res = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "UNKNOWN"
    lines = res.stdout.split()
    if res.returncode == 0:
        return lines[0].upper() if lines else "ENDED"
    return "ENDED" if "invalid job id" in res.stderr.lower() else "UNKNOWN"


def submit(
    cfg: Config, out: Path, *, kind: str = "slurm", opts: SlurmOptions = SlurmOptions(), force: bool = False
) -> list[CellOutcome] | None:
    """One job per unfinished cell; returns the outcomes when it waits (submitit-local or --wait), else None."""
    submitit = import_submitit()
    out = Path(out).resolve()
    preflight(cfg, out, force=force)  # here, not once per job on the cluster
    out.mkdir(parents=True, exist_ok=True)
    cells = expand_grid(cfg)
    wait = opts.wait or kind == "submitit-local"
    # a Slurm task's affinity is its --cpus-per-task, which threads=auto reads in the job itself; the
    # local executor runs every cell on this machine at once, so they split the cores free now
    threads = opts.cpus or (per_worker(measure(cfg.threads, resolve_device(cfg.device)), len(cells))
                            if kind == "submitit-local" else None)
    outcomes: dict[Cell, CellOutcome] = {}
    job_of: dict[Cell, str] = {}
    for wave in waves(cells):
        running = {}
        for cell in wave:
            folder = cell.folder(out)
            if (folder / "done.json").exists() and not force:
                try:  # a changed sampling or evaluation key makes a finished cell's job redo those stages
                    # as the job will: 'auto' precision keeps what the finished cell recorded (no device needed)
                    ccfg = resolve_precisions(cell_config(cfg, cell, out), folder, torch.device("cpu"))
                    change = check_or_write_config(folder, ccfg, cell)
                except ConfigError as exc:  # a changed training key: refused, as the job itself would
                    outcomes[cell] = CellOutcome(cell, folder, "failed", 0.0, str(exc))
                    print(f"{cell.name}: not submitted: {exc}", flush=True)
                    continue
                if (change is None or change.redo is None) and (cell.method == REAL or not pending(ccfg, folder)):
                    outcomes[cell] = CellOutcome(cell, folder, "skipped", 0.0)
                    print(f"{cell.name}: finished, not submitted", flush=True)
                    continue
            active, state = _active_job(submitit, folder) if kind == "slurm" else (None, "")
            if active and state == "UNKNOWN":
                print(f"{cell.name}: cannot tell whether job {active} still runs (sacct and squeue gave no state), "
                      f"so it is not submitted again; once it has ended, delete {folder / 'slurm.json'} and rerun",
                      flush=True)  # fmt: skip
                job_of[cell] = active
                continue
            if active:
                job_of[cell] = active
                print(f"{cell.name}: job {active} still {state.lower()}, not submitted again", flush=True)
                continue
            parent = parent_cell(cell)
            after = [job_of[parent]] if parent in job_of else []
            folder.mkdir(parents=True, exist_ok=True)
            ex = _executor(submitit, kind, folder / "submitit", opts, name=f"ltgen {cell.name}", after=after)
            job = ex.submit(_cell_job, cfg, cell, out, force, threads)
            job_of[cell] = str(job.job_id)
            record = {"launcher": kind, "job_id": str(job.job_id), "submitted": time.ctime(), "cell": cell.name,
                      "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr), "after": after}  # fmt: skip
            write_text_atomic(folder / "slurm.json", json.dumps(record, indent=2))
            print(f"{cell.name}: job {job.job_id}  (log {job.paths.stdout})", flush=True)
            running[cell] = job
        if not wait:
            continue
        for cell, job in running.items():
            try:
                outcomes[cell] = job.result()
            except Exception as exc:  # the job itself died (time limit, node failure, out of memory)
                outcomes[cell] = CellOutcome(cell, cell.folder(out), "failed", 0.0, f"job {job.job_id}: {exc}")
    if not wait:
        return None
    for i, cell in enumerate(cells, 1):
        if cell in outcomes:
            _say(i, len(cells), outcomes[cell])
    return [outcomes[c] for c in cells if c in outcomes]


# ----------------------------------------------------------------------------------- the launchers

# name -> launch(cfg, out, *, force, progress, jobs, opts): the outcomes, or None when the jobs run on
LAUNCHERS: Registry = Registry("launcher")


@LAUNCHERS.register("local")
def launch_local(cfg: Config, out: Path, *, force: bool, progress: bool, jobs: int, opts: SlurmOptions):
    """cells on this machine, one after another or --jobs N at once"""
    if jobs > 1:
        return run_parallel(cfg, out, jobs=jobs, force=force)
    return run_grid(cfg, out, force=force, progress=progress)


@LAUNCHERS.register("slurm")
def launch_slurm(cfg: Config, out: Path, *, force: bool, progress: bool, jobs: int, opts: SlurmOptions):
    """one submitit job per cell on a Slurm cluster (--slurm-* options)"""
    return submit(cfg, out, kind="slurm", opts=opts, force=force)


@LAUNCHERS.register("submitit-local")
def launch_submitit_local(cfg: Config, out: Path, *, force: bool, progress: bool, jobs: int, opts: SlurmOptions):
    """one process per cell through submitit's local executor, as Slurm would run it (for tests)"""
    return submit(cfg, out, kind="submitit-local", opts=opts, force=force)
