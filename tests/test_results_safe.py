"""results.csv is never half written: atomic updates, a full disk named as such, a damaged table named
with its line and repaired by `report --repair`, a writer killed at any moment leaves a readable table."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_report import cell_rows

from benchmark.cli import main
from benchmark.core.errors import BenchmarkError, DiskFullError
from benchmark.harness.results import put_cell, read_results

ROOT = Path(__file__).resolve().parents[1]


def _table(folder: Path) -> Path:
    path = folder / "results.csv"
    for seed in (0, 1):
        put_cell(path, cell_rows("ddpm", seed, 10.0 + seed, 0.5))
    return path


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_named_and_leaves_the_table_as_it_was(tmp_path, monkeypatch):
    path = _table(tmp_path)
    before = path.read_bytes()
    monkeypatch.setattr("benchmark.core.files.os.fsync", _no_space)
    with pytest.raises(DiskFullError, match=f"no space left on device: {path}"):
        put_cell(path, cell_rows("cbdm", 0, 5.0, 0.6))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.csv.lock"]  # no stray parts


def test_a_full_disk_ends_the_command_with_exit_1(tmp_path, monkeypatch, capsys):
    _table(tmp_path)
    monkeypatch.setattr("benchmark.core.files.os.fsync", _no_space)
    assert main(["report", str(tmp_path), "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on device: ") and "Traceback" not in err


def test_a_writer_that_hides_enospc_is_still_named_from_the_free_space(tmp_path, monkeypatch):
    """torch.save on a full disk raises RuntimeError('... unexpected pos ...'), not ENOSPC."""
    from benchmark.core import files

    def torch_like(tmp):
        tmp.write_bytes(b"part")
        raise RuntimeError("[enforce fail at inline_container.cc] . unexpected pos 128 vs 64")

    monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(DiskFullError, match="no space left on device: .*model.pt"):
        files.write_atomic(tmp_path / "model.pt", torch_like)
    assert not list(tmp_path.iterdir())


def test_a_small_tmpfs_fills_up_and_the_earlier_files_stay(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        path = _table(mount)
        before = path.read_bytes()
        with pytest.raises(DiskFullError, match=f"no space left on device: {path}"):
            for seed in range(2, 2000):
                put_cell(path, cell_rows("ddpm", seed, 10.0, 0.5))
                before = path.read_bytes()
        assert path.read_bytes() == before
        read_results(path)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_damaged_table_is_named_with_its_line_and_repaired(tmp_path, capsys):
    path = _table(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    rows_per_cell = (len(lines) - 1) // 2
    cell = tmp_path / "runs" / "digits" / "exp-0.1" / "ddpm" / "seed1"
    cell.mkdir(parents=True)
    cell_rows("ddpm", 1, 11.0, 0.5).to_csv(cell / "metrics.csv", index=False)
    # a half row at the end (what an in-place append left on a full disk) and a word where a number goes
    damaged = lines[:-1] + [lines[-1][:30]]
    damaged[3] = damaged[3].replace(",10,", ",ten,", 1)
    path.write_text("".join(damaged))
    with pytest.raises(BenchmarkError, match=rf"{path} is damaged: line 4: .* not a number.*report {tmp_path} --repair"):
        read_results(path)
    assert main(["report", str(tmp_path), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "line 4" in err and "--repair" in err and "Traceback" not in err
    assert main(["report", str(tmp_path), "--no-plots", "--repair"]) == 0
    out = capsys.readouterr().out
    assert "dropped 2 damaged line(s) (4, " in out
    table = read_results(path)
    assert (tmp_path / "results.csv.damaged").read_text() == "".join(damaged)
    # seed 1 came back whole from its cell's metrics.csv; seed 0 lost the one damaged row (no metrics.csv)
    assert (table["seed"] == 1).sum() == rows_per_cell
    assert (table["seed"] == 0).sum() == rows_per_cell - 1


WRITER = """
import sys
from pathlib import Path
import pandas as pd
from benchmark.harness.results import put_cell
path = Path(sys.argv[1])
rows = pd.read_csv(path, dtype={"split_fingerprint": str, "note": str}).fillna({"note": ""})
rows = rows[rows["seed"] == 0]
print("writing", flush=True)
seed = int(sys.argv[2])  # each round its own cells, so the table grows
while True:
    seed += 1
    put_cell(path, rows.assign(seed=seed))
"""


def test_killing_a_writer_mid_write_never_leaves_an_unreadable_table(tmp_path):
    path = _table(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = uuid.uuid4().int
    grown = []
    for round_ in range(8):
        argv = [sys.executable, "-c", WRITER, str(path), str(1000 * (round_ + 1))]
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"writing"
        time.sleep(0.2 + ((rng >> (4 * round_)) % 16) / 20)  # anywhere in a write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        table = read_results(path)  # never a half row, never a traceback
        grown.append(len(table))
    assert grown[-1] > grown[0]  # the writers did write between the kills
