import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.core.presets import PRESETS, PROTOCOLS
from benchmark.data import DATASETS
from benchmark.eval.features import FEATURE_SPACES
from benchmark.harness.launch import LAUNCHERS
from methods import METHODS

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_prints_config_and_grid(capsys, tmp_path):
    code = main(["run", "--preset", "smoke", "--methods", "ddpm,cbdm+resample", "--seeds", "0,1",
                 "--imbalance", "0.1,0.5", "--out", str(tmp_path), "--set", "train.steps=7", "--dry-run"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    config = json.loads(out[: out.index("\n\n")])
    assert config["train"]["steps"] == 7
    assert config["grid"]["methods"] == ["ddpm", "cbdm+resample"]
    # (real + 2 methods) x 2 seeds x 2 imbalances
    assert "12 cells" in out
    assert "runs/digits/exp-0.5/cbdm_resample/seed1" in out
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run", "--preset", "smoke", "--set", "train.stepss=3", "--dry-run"], "Did you mean train.steps"),
        (["run", "--preset", "smoke", "--set", "train.steps=many", "--dry-run"], "expects int"),
        (["run", "--preset", "nosuch", "--dry-run"], "Valid presets"),
        (["run", "--preset", "smoke", "--methods", "ddpmm", "--dry-run"], "ddpm"),
        (["run", "--preset", "smoke", "--imbalance", "1.5", "--dry-run"], "must be in (0, 1]"),
        (["run", "--preset", "smoke", "--set", "sample.sampler=dpm", "--dry-run"], "--set sample.sampler=ddim"),
        (["run", "--preset", "smoke", "--set", "train.precision=fp16", "--dry-run"],
         "train.precision='fp16' is not a valid value"),
        (["data", "--dataset", "nosuchdata"], "digits"),
        (["data", "--dataset", "digits", "--imbalance", "0"], "imbalance"),
        (["data", "--dataset", "digits", "--profile", "expo"], "data.profile='expo' is not a valid value"),
    ],
)
def test_bad_input_is_one_clear_line(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "pair, valid",
    [
        ("train.label_drop_mode=wholebatch", ["batch", "sample"]),  # was silently per-sample dropping
        ("train.precision=fp16", ["auto", "fp32", "bf16"]),  # train.amp=fp16 was silently fp32
        ("eval.fid_backend=tf", ["torch-fidelity", "clean-fid"]),  # was a NaN for every FID
    ],
)
def test_a_value_outside_an_options_choices_is_refused_naming_them(pair, valid, capsys, tmp_path):
    assert main(["run", "--preset", "smoke", "--out", str(tmp_path), "--set", pair, "--no-progress"]) == 2
    err = capsys.readouterr().err
    key, value = pair.split("=")
    assert err.startswith(f"error: {key}={value!r} is not a valid value") and "Traceback" not in err
    assert all(f"{v} (" in err for v in valid)
    assert not (tmp_path / "runs").exists()  # refused before any cell


def test_help_takes_its_lists_from_the_registries():
    from benchmark.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    text = " ".join(sub["run"].format_help().split())
    for name in [*LAUNCHERS.names(), *METHODS.names(), *(n for n in DATASETS.names() if n != "imagefolder")]:
        assert name in text
    data = " ".join(sub["data"].format_help().split())
    assert "exp | step | none | file (default exp)" in data and "auto | thresholds | thirds (default auto)" in data


def test_unknown_launcher_lists_the_registered_ones(capsys):
    assert main(["run", "--preset", "smoke", "--launcher", "pbs"]) == 2
    assert "Valid launchers: local, slurm, submitit-local" in capsys.readouterr().err


def test_list_names_every_registered_name_in_its_own_section(capsys):
    assert main(["list"]) == 0
    sections: dict[str, list[str]] = {}
    for line in capsys.readouterr().out.splitlines():
        if not line.startswith(" "):
            current = sections.setdefault(line.split(" (")[0].rstrip(":"), [])
        else:
            current.append(line.split()[0].split(":")[0])  # the name (imagefolder is listed as imagefolder:PATH)
    expected = {"presets": PRESETS, "protocols": PROTOCOLS, "methods": METHODS, "datasets": DATASETS,
                "feature spaces": FEATURE_SPACES, "launchers": LAUNCHERS}  # fmt: skip
    options = sections.pop("options with a fixed set of values")
    method_options = sections.pop("method options")
    ranges = sections.pop("numeric options and their ranges")
    assert {"train.ema_decay", "eval.pr_k", "sample.steps", "grid.seeds"} <= set(ranges)
    assert sorted(sections) == sorted(expected)
    assert {"method.cbdm.tau", "method.resample.schedule", "method.cbdm_ft.start"} <= set(method_options)
    assert {"train.label_drop_mode", "train.precision", "eval.fid_backend", "bf16", "clean-fid"} <= set(options)
    for section, registry in expected.items():
        assert sorted(sections[section]) == sorted(registry.names()), section


def test_data_command_csv(capsys):
    assert main(["data", "--dataset", "digits", "--imbalance", "0.1", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "class,name,count,group,reference,ref_from,eval_train,eval_val,eval_test"
    assert lines[1].split(",")[4:] == ["30", "test split", "133", "15", "30"]  # digits: 30 held out per class
    assert len(lines) == 11


def test_console_entry_runs_as_script():
    proc = subprocess.run([sys.executable, str(ROOT / "run_benchmark.py"), "run", "--help"], capture_output=True,
                          text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0
    for option in ("--preset", "--methods", "--imbalance", "--seeds", "--out", "--set", "--dry-run", "--force"):
        assert option in proc.stdout


def test_docs_cli_reference_is_in_step_with_help():
    from benchmark.devtools.clidoc import current_block, render

    page = (ROOT / "docs" / "cli.md").read_text()
    assert current_block(page) == render(), "docs/cli.md is stale: run `python -m benchmark.devtools.clidoc`"


def test_clidoc_names_a_page_without_its_block_and_takes_help(tmp_path, capsys):
    from benchmark.devtools.clidoc import main as clidoc

    page = tmp_path / "notes.md"
    page.write_text("no generated block here\n")
    with pytest.raises(SystemExit) as info:
        clidoc([str(page)])
    assert info.value.code == 2 and "is not a page with the generated block" in capsys.readouterr().err
    assert page.read_text() == "no generated block here\n"  # left as it was
    with pytest.raises(SystemExit) as info:
        clidoc(["--help"])
    assert info.value.code == 0 and "usage:" in capsys.readouterr().out
