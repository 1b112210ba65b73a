"""One writer per results folder.

Two processes writing into the same ``--out`` would both train every cell (double work) and
interleave each cell's logs.  The process that starts a run (``run``; ``evaluate``) takes the
folder's lock file before any work and keeps it to the end; a second one exits at once naming the
holder.  The workers of that one run (``--jobs`` processes, the other ranks of a torchrun job, the
Slurm jobs it submitted) never take it: they belong to the run that holds it, and each writes its
own cells only.

The lock is an ``flock`` on ``OUT/.ltgen-writer.lock``: the system drops it when its holder dies,
however it dies, so a lock can never outlive its process.  The file also says who holds it (pid,
host, command, start time); a file still naming a process when the lock is free was left by a run
that was killed, and the new run takes it over and says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from benchmark.core.errors import ConfigError

LOCK_NAME = ".ltgen-writer.lock"


class FolderBusy(ConfigError):
    """Another process is writing into this results folder."""


def _holder(text: str) -> dict:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def describe(holder: dict) -> str:
    if not holder:
        return "a process that has not yet said who it is"
    command = f", `{holder['command']}`" if holder.get("command") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('started')}{command}"


@contextlib.contextmanager
def one_writer(out: Path, *, main: bool = True, say=print) -> Iterator[None]:
    """Hold ``out``'s lock while the block runs; raise :class:`FolderBusy` (exit 2) at once when another
    process holds it.  ``main=False`` (a rank other than 0 of a torchrun job) takes nothing."""
    if not main:
        yield
        return
    out = Path(out)
    path = out / LOCK_NAME
    made = out  # the topmost folder this call makes: removed again when the run leaves nothing in it
    while not made.parent.exists() and made.parent != made:
        made = made.parent
    made = None if made.exists() else made
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a folder that cannot be made holds nothing to guard: the preflight names the problem
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(path.read_text(errors="replace"))
            for _ in range(20):  # the holder writes who it is right after taking the lock
                if holder:
                    break
                time.sleep(0.05)
                holder = _holder(path.read_text(errors="replace"))
            raise FolderBusy(
                f"{out} is being written by another run ({describe(holder)}); wait for it to end or pass another "
                f"--out. Workers of one run share its lock: add cells to that run with --jobs, not a second command"
            ) from None
        left = _holder(os.pread(fd, 65536, 0).decode(errors="replace"))
        if left:
            say(f"note: took over the lock of {out}: the run that held it ({describe(left)}) is no longer running",
                flush=True)  # fmt: skip
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(mine).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # an empty file: the run ended cleanly, nothing to take over
    finally:
        empty = made is not None and [p.name for p in out.iterdir()] == [LOCK_NAME]  # nothing was run: no trace
        if empty:
            path.unlink()  # while still holding it: no other process can hold the removed file
        os.close(fd)  # closing the descriptor drops the flock
        if empty:
            with contextlib.suppress(OSError):  # another run may have made it again meanwhile
                for folder in (out, *out.parents):
                    folder.rmdir()
                    if folder == made:
                        break
