"""`evaluate --name`: a plain name only, never a method's or a trained cell's; scoring a name again keeps
the earlier rows unless --force replaces them, and says which."""

import hashlib
import json

import pytest
from digits_samples import digits_samples

from benchmark.cli import main
from benchmark.core.presets import get_preset
from benchmark.harness.outside import check_outside_name
from benchmark.harness.results import read_results

EVAL = ["evaluate", "--preset", "smoke", "--no-progress", "--set", "eval.downstream=false", "--set", "eval.diversity=false",
        "--set", "eval.classifier_epochs=1"]  # fmt: skip


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name, fragment", [
    ("../x", "not a plain name"), ("a/b", "not a plain name"), ("", "not a plain name"), ("x" * 65, "not a plain name"),
    ("ddpm", "the name of the method 'ddpm'"), ("cbdm_resample", "the name of the method"), ("real", "method 'real'"),
])  # fmt: skip
def test_names_that_are_refused(name, fragment, tmp_path):
    with pytest.raises(Exception, match=fragment):
        check_outside_name(get_preset("smoke"), name, tmp_path / "runs" / name)


def test_a_folder_that_run_made_is_refused(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"preset": "smoke"}))
    with pytest.raises(Exception, match="holds a cell that `run` made"):
        check_outside_name(get_preset("smoke"), "mine", folder)
    (folder / "config.json").write_text(json.dumps({"external_samples": "/a/b.npz"}))
    assert check_outside_name(get_preset("smoke"), "mine", folder) == "/a/b.npz"


def test_evaluate_name_ddpm_into_a_finished_grid_exits_2_and_touches_nothing(tmp_path, capsys):
    cell = tmp_path / "runs" / "digits" / "exp-0.1" / "ddpm" / "seed0"
    cell.mkdir(parents=True)
    for name, text in [("config.json", '{"preset": "smoke"}'), ("metrics.csv", "a,b\n1,2\n"), ("done.json", "{}")]:
        (cell / name).write_text(text)
    before = _digest(cell)
    assert main([*EVAL, "--samples", str(tmp_path / "s.npz"), "--name", "ddpm", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "the name of the method 'ddpm'" in err and "Traceback" not in err
    assert _digest(cell) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ltgen-writer.lock", "runs"]  # and nothing beside it


def test_scoring_a_name_again_keeps_or_says_what_it_replaced(tmp_path, capsys):
    samples = digits_samples(tmp_path / "samples.npz")
    argv = [*EVAL, "--samples", str(samples), "--name", "outside", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    first = capsys.readouterr().out
    n = len(read_results(tmp_path / "o"))
    assert f"{n} rows for 'outside' written" in first
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert f"were already in {tmp_path / 'o' / 'results.csv'} ({n} rows, scored from {samples})" in again
    assert "written" not in again  # nothing was
    assert main([*argv, "--force"]) == 0
    forced = capsys.readouterr().out
    assert f"replaced the {n} earlier rows of 'outside' (seed 0), scored from {samples}" in forced
    assert len(read_results(tmp_path / "o")) == n
