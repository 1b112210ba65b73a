"""One writer per results folder: a second process on the same --out exits 2 at once naming the holder;
a lock left by a killed run is taken over and said so."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.harness.writer import LOCK_NAME, FolderBusy, one_writer

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from benchmark.harness.writer import one_writer
with one_writer(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(60)
"""


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def holder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "holding"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, holder):
    with pytest.raises(FolderBusy, match=rf"being written by another run \(pid {holder.pid} on host"):
        with one_writer(tmp_path):
            pass


def test_a_second_run_command_exits_2_before_any_work(tmp_path, holder, capsys):
    argv = ["run", "--preset", "smoke", "--methods", "ddpm", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"pid {holder.pid}" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing was run


def test_a_killed_holders_lock_is_taken_over_and_said_so(tmp_path, holder):
    holder.kill()
    holder.wait()
    said = []
    with one_writer(tmp_path, say=lambda *a, **k: said.append(a[0])):
        mine = json.loads((tmp_path / LOCK_NAME).read_text())
        assert mine["pid"] == os.getpid()
    assert len(said) == 1 and f"pid {holder.pid}" in said[0] and "no longer running" in said[0]
    assert (tmp_path / LOCK_NAME).read_text() == ""  # a clean end leaves nothing to take over
    with one_writer(tmp_path, say=lambda *a, **k: said.append(a[0])):
        pass
    assert len(said) == 1


def test_ranks_other_than_0_take_nothing(tmp_path, holder):
    with one_writer(tmp_path, main=False):
        pass


def test_two_run_commands_started_together_one_runs_the_other_exits_2(tmp_path):
    argv = [sys.executable, "run_benchmark.py", "run", "--preset", "smoke", "--methods", "ddpm", "--out", str(tmp_path),
            "--no-progress", "--set", "train.steps=100000"]  # the winner runs far longer than the test waits
    procs = [subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    try:
        deadline = time.time() + 240
        while all(proc.poll() is None for proc in procs) and time.time() < deadline:
            time.sleep(0.05)
        loser = next(proc for proc in procs if proc.poll() is not None)
        winner = next(proc for proc in procs if proc is not loser)
        assert winner.poll() is None  # still running: it holds the folder
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == winner.pid
        out, err = loser.communicate()
        assert loser.returncode == 2, (out, err)
        assert f"pid {winner.pid}" in err and "being written by another run" in err and "Traceback" not in err
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()
