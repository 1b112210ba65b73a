"""Every case of docs/bad-input.md, run as the table says: its exit status and the quoted part of its message."""

import errno
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report import cell_rows

from benchmark.cli import main

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "bad-input.md"
ROW = re.compile(r"^\| (?P<case>[^|]+) \| `(?P<command>ltgen-bench [^`]+)` \| (?P<exit>\d) \| `(?P<says>.+)` \|$")
CASES = [m.groupdict() for m in map(ROW.match, TABLE.read_text().splitlines()) if m]
HOLD = "import sys, time\nfrom benchmark.harness.writer import one_writer\nwith one_writer(sys.argv[1]):\n" \
       "    print('holding', flush=True)\n    time.sleep(60)\n"


def _fixtures(root: Path) -> None:
    """The folders and files the table's commands name."""
    cell = root / "grid" / "runs" / "digits" / "exp-0.1" / "ddpm" / "seed0"
    cell.mkdir(parents=True)
    (cell / "config.json").write_text(json.dumps({"preset": "smoke"}))
    (cell / "done.json").write_text("{}")
    one = cell_rows("ddpm", 0, 10.0, 0.5)
    for name in ("damaged", "words", "full"):
        (root / name).mkdir()
        one.to_csv(root / name / "results.csv", index=False)
    with open(root / "damaged" / "results.csv", "a") as fh:
        fh.write("digits,exp,0.1")  # a row cut short, as an in-place append on a full disk left it
    words = one.astype({"value": object})
    words.loc[0, "value"] = "abc"
    words.to_csv(root / "words" / "results.csv", index=False)
    (root / "notzip.npz").write_text("not a zip")
    np.savez(root / "pickled.npz", images=np.array([object()], dtype=object), labels=np.zeros(1, dtype=np.int64))
    labels = np.repeat(np.arange(10), 2)
    np.savez(root / "rgb.npz", images=np.zeros((20, 3, 8, 8), dtype=np.uint8), labels=labels)
    rng = np.random.RandomState(0)
    for path in ("nested/a/x0.png", "nested/a/x1.png", "nested/a/more/x2.png", "nested/b/y0.png", "nested/b/y1.png",
                 "list/c0/a.png", "list/c0/b.png", "list/c2/a.png", "list/c2/b.png"):  # fmt: skip
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.randint(0, 256, (8, 8), dtype=np.uint8)).save(root / path)
    (root / "gap.txt").write_text("list/c0/a.png 0\nlist/c0/b.png 0\nlist/c2/a.png 2\nlist/c2/b.png 2\n")


def test_the_table_has_the_cases():
    assert len(CASES) >= 30
    assert {c["exit"] for c in CASES} == {"0", "1", "2"}


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_each_case_of_the_table(case, tmp_path, monkeypatch, capsys):
    _fixtures(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LTGEN_OFFLINE", "1")
    argv = shlex.split(case["command"])[1:]
    holder = None
    if "busy" in argv:
        holder = subprocess.Popen([sys.executable, "-c", HOLD, "busy"], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                                  env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})  # fmt: skip
        assert holder.stdout.readline().strip() == "holding"
    if "disk full" in case["case"]:
        def no_space(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr("benchmark.core.files.os.fsync", no_space)
    try:
        code = main(argv)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    said = capsys.readouterr()
    text = said.out + said.err
    assert code == int(case["exit"]), text
    assert case["says"] in text
    assert "Traceback" not in text
    if code == 2:
        assert said.err.startswith("error: ") and len(said.err.strip().splitlines()) == 1, said.err


@pytest.mark.parametrize("argv", [["run", "--preset", "nope"], ["run", "--set", "train.stepz=3"],
                                  ["run", "--set", "train.ema_decay=1.5"], ["data", "--split-seed", "-1"]])
def test_bad_options_are_answered_before_torch_is_imported(argv):
    """A misspelt preset or key, or a value out of range, costs a tenth of a second, not torch's seconds."""
    code = f"import sys\nfrom benchmark.cli import main\nassert main({argv!r}) == 2\nassert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 0, done.stderr
