"""End to end on the smoke preset: the whole pipeline, resume after a kill, reruns, failures."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.core.device import resolve_precision
from benchmark.core.errors import ConfigError
from benchmark.harness.results import RESULT_COLUMNS, read_results

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"ddpm", "cbdm", "reweight", "resample"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    code = main(["run", "--preset", "smoke", "--out", str(out), "--no-progress"])
    return out, code


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    keys = ["method", "seed", "metric", "group", "class", "feature_space"]
    return table.sort_values(keys, na_position="first").reset_index(drop=True)


def test_results_table_has_every_method_group_and_metric(smoke):
    out, code = smoke
    assert code == 0
    table = read_results(out)
    assert list(table.columns) == RESULT_COLUMNS
    assert set(table.method) == METHODS | {"real"}
    gen = table[table.method.isin(METHODS)]
    for method in METHODS:
        rows = gen[gen.method == method]
        fid = rows[rows.metric == "fid"]
        assert set(fid.group) == {"all", "many", "medium", "few", "class"}
        assert sorted(fid[fid.group == "class"]["class"].astype(int)) == list(range(10))
        assert {"kid", "precision", "recall", "density", "coverage", "label_acc", "cas_acc", "aug_acc",
                "train_count"} <= set(rows.metric)  # fmt: skip
        assert (fid.value > 0).all() and np.isfinite(fid.value).all()
        assert (rows.n_gen[rows.metric == "fid"] > 0).all() and (rows.n_ref[rows.metric == "fid"] > 0).all()
        for metric in ("vendi", "vendi_real", "vendi_ratio", "vendi_inlier", "vendi_inlier_real", "vendi_inlier_ratio",
                       "memorization", "memorization_pixel"):
            sel = rows[rows.metric == metric]
            assert set(sel.group) == {"all", "many", "medium", "few", "class"}, metric
            assert sorted(sel[sel.group == "class"]["class"].astype(int)) == list(range(10))
            assert sel.value.notna().all() and ((sel.n_gen > 0) | (sel.n_ref > 0)).all(), metric
    real = table[table.method == "real"]
    assert {"fid", "recall", "real_acc", "vendi_ratio", "vendi_inlier_ratio", "memorization",
            "memorization_pixel"} <= set(real.metric)
    names = table[table.metric == "train_count"].note
    assert names.str.contains("name=").all()  # digits: the names are "0".."9"
    # one split for all: every row carries the same fingerprint
    assert table.split_fingerprint.nunique() == 1
    # the resolved precision of both stages (auto -> what this CPU runs natively), in rows and config.json
    auto = resolve_precision("auto", "cpu")
    assert set(gen.train_precision) == set(gen.sample_precision) == {auto}
    assert set(real.train_precision) == {"none"}
    config = json.loads(next((out / "runs").rglob("ddpm/seed0/config.json")).read_text())["config"]
    assert config["train"]["precision"] == config["sample"]["precision"] == auto


def test_each_stage_logs_the_cpu_threads_it_ran_on(smoke):
    out, _ = smoke
    log = (out / "runs/digits/exp-0.1/cbdm/seed0/cell.log").read_text()
    for stage in ("train", "sample", "evaluate"):
        assert f"stage {stage}: 1 CPU thread (threads=auto (affinity" in log  # capped by the tests' OMP_NUM_THREADS=1
    record = json.loads((out / "runs/digits/exp-0.1/cbdm/seed0/config.json").read_text())
    assert record["config"]["threads"] == "auto"


def test_leaderboards_and_plots_exist(smoke):
    out, _ = smoke
    for name in ("leaderboard.md", "leaderboard.tex", "leaderboard.csv"):
        assert (out / name).stat().st_size > 200
    board = (out / "leaderboard.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in board
    plots = {p.name.split("_")[0] for p in (out / "plots").glob("*.png") if p.stat().st_size > 1000}
    assert {"per", "groups", "samples", "diversity", "neighbours"} <= plots
    assert "Vendi-in/real few" in board and (out / "leaderboard_per_class.csv").stat().st_size > 200


def test_rerun_skips_finished_cells_and_report_is_identical(smoke, capsys):
    out, _ = smoke
    before = (out / "results.csv").read_bytes()
    board = (out / "leaderboard.md").read_bytes()
    assert main(["run", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    assert "5 already finished" in capsys.readouterr().out
    assert (out / "results.csv").read_bytes() == before
    assert main(["report", str(out), "--no-plots"]) == 0
    assert (out / "leaderboard.md").read_bytes() == board


def test_resume_after_kill_matches_uninterrupted_run(smoke, tmp_path):
    out, _ = smoke
    killed = tmp_path / "killed"
    ckpts = killed / "runs" / "digits" / "exp-0.1" / "cbdm" / "seed0" / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LTGEN_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_benchmark.py"), "run", "--preset", "smoke", "--out", str(killed),
         "--no-progress", "--no-report"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(ckpts.glob("*.pt")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.kill()
    proc.wait()
    assert not (ckpts.parent / "model.pt").exists()  # killed mid-training
    assert main(["run", "--preset", "smoke", "--out", str(killed), "--no-progress"]) == 0
    a, b = _sorted(read_results(out)), _sorted(read_results(killed))
    assert len(a) == len(b)
    pd.testing.assert_frame_equal(a.drop(columns="value"), b.drop(columns="value"))
    np.testing.assert_allclose(a.value.to_numpy(float), b.value.to_numpy(float), rtol=1e-6, atol=1e-9)


def test_failing_cell_keeps_the_others_and_changed_config_is_refused(tmp_path, capsys):
    out = tmp_path / "fail"
    base = ["run", "--preset", "smoke", "--out", str(out), "--no-progress", "--no-report", "--methods",
            "ddpm,reweight", "--set", "train.steps=3", "--set", "eval.downstream=false",
            "--set", "eval.real_floor=false"]  # fmt: skip
    # a value the config can refuse fails up front, before any cell
    assert main(base + ["--set", "method.reweight.scheme=nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err and not out.exists()
    # what only a cell can find out (here its own model.pt is unreadable) fails that cell alone
    broken = out / "runs" / "digits" / "exp-0.1" / "reweight" / "seed0" / "model.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a model")
    code = main(base)
    text = capsys.readouterr().out
    assert code == 1
    assert "FAILED" in text and "reweight" in text
    assert set(read_results(out).method) == {"ddpm"}
    # the same folder with a different training budget: refused, with the fix named
    code = main(base[:-6] + ["--methods", "ddpm", "--set", "train.steps=4", "--set", "eval.downstream=false",
                             "--set", "eval.real_floor=false"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 1 and "different config" in text and "--force" in text


def test_config_fields_added_later_do_not_orphan_finished_cells(tmp_path):
    import json

    from benchmark.core.presets import get_preset
    from benchmark.harness.cells import Cell, cell_config, check_or_write_config

    cfg = get_preset("smoke")
    cell = Cell("digits", "exp", 0.1, "ddpm", 0)
    folder = tmp_path / "cell"
    check_or_write_config(folder, cell_config(cfg, cell), cell)
    (folder / "done.json").write_text("{}")  # a finished cell (a folder without work takes a new config)
    record = json.loads((folder / "config.json").read_text())
    del record["config"]["method"]["cbdm"]["tau"]  # as if written before the field existed
    del record["config"]["threads"]
    (folder / "config.json").write_text(json.dumps(record))
    check_or_write_config(folder, cell_config(cfg, cell), cell)  # accepted
    record["config"]["train"]["steps"] = 999
    (folder / "config.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="train.steps"):
        check_or_write_config(folder, cell_config(cfg, cell), cell)


def _stat(folder: Path) -> dict:
    """mtime and bytes of what training and sampling wrote in each cell folder."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.glob("runs/**/*")) if p.is_file()
            and (p.name in ("model.pt", "train_log.csv", "samples.npz") or p.parent.name == "checkpoints")}  # fmt: skip


def _one_block_per_cell_and_setting(table: pd.DataFrame) -> None:
    keys = ["dataset", "profile", "imbalance", "split_fingerprint", "method", "seed", "protocol", "feature_space",
            "metric", "group", "class"]  # fmt: skip
    assert not table.duplicated(subset=keys).any()
    for (_method, _seed), rows in table.groupby(["method", "seed"]):  # one setting per cell, never two mixed
        assert rows[["sampler", "sampler_steps", "guidance", "train_steps", "reference"]].drop_duplicates(
        ).shape[0] == 1  # fmt: skip


def test_changed_evaluation_and_sampling_keys_redo_only_their_stages(smoke, tmp_path, capsys):
    import shutil

    src, _ = smoke
    out = tmp_path / "changed"
    shutil.copytree(src, out)
    base = ["run", "--preset", "smoke", "--out", str(out), "--no-progress", "--no-report"]
    trained = {k: v for k, v in _stat(out).items() if not k.endswith("samples.npz")}
    samples = {k: v for k, v in _stat(out).items() if k.endswith("samples.npz")}
    assert len(samples) == 4 and any(k.endswith("model.pt") for k in trained)

    # evaluation keys: every cell re-evaluates its stored samples; nothing is trained or sampled
    # (without the downstream classifiers, which the test would spend most of its time training)
    evaluation = ["--set", "eval.kid_subsets=4", "--set", "eval.downstream=false"]
    capsys.readouterr()
    assert main(base + evaluation) == 0
    text = capsys.readouterr().out
    assert text.count("re-evaluating from the stored samples") == 5 and "0 already finished" in text
    after = _stat(out)
    assert {k: after[k] for k in trained} == trained and {k: after[k] for k in samples} == samples
    table = read_results(out)
    _one_block_per_cell_and_setting(table)
    kid = table[(table.metric == "kid") & table.value.notna()]  # (NaN rows carry their reason instead)
    assert len(kid) > 0 and kid.note.str.contains("kid_subsets=4").all()
    old = read_results(src)
    # the downstream rows (no feature space) are gone with eval.downstream; the pixel-space memorisation
    # rows stay beside the one evaluation feature space
    assert len(table) == (old.feature_space != "none").sum()
    assert set(table.feature_space) - {"pixel"} == {table.feature_space[0]}
    log = (out / "runs/digits/exp-0.1/cbdm/seed0/cell.log").read_text()
    assert "config changed (eval.downstream: True -> False, eval.kid_subsets: 10 -> 4): re-evaluating" in log

    # a sampling key: the method cells sample again from their stored models; the real cells have nothing to redo
    assert main(base + evaluation + ["--set", "sample.steps=5"]) == 0
    text = capsys.readouterr().out
    assert text.count("resampling from the stored model and re-evaluating; kept model.pt") == 4
    assert "1 already finished" in text
    after = _stat(out)
    assert {k: after[k] for k in trained} == trained  # no training step ran
    assert all(after[k][1] != samples[k][1] for k in samples)  # new samples
    rows = read_results(out)
    _one_block_per_cell_and_setting(rows)
    assert set(rows[rows.method != "real"].sampler_steps) == {5} and len(rows) == len(table)
    assert rows[(rows.metric == "kid") & rows.value.notna()].note.str.contains("kid_subsets=4").all()

    # a training key: refused as before, with the fix named
    assert main(base + evaluation + ["--set", "sample.steps=5", "--set", "train.lr=0.01"]) == 1
    assert "different config (train.lr" in capsys.readouterr().out


def test_stale_rows_are_reported_and_rescore_recomputes_them_without_training(smoke, tmp_path, capsys):
    """A table written by an earlier version (here: group rows without their 'pooled' label and no rows
    at the floor's n) is listed by `report`; `run --rescore` recomputes it from the stored samples."""
    import shutil

    src, _ = smoke
    out = tmp_path / "older"
    shutil.copytree(src, out)
    table = read_results(out)
    assert {"fid_at_floor_n", "kid_at_floor_n"} <= set(table[table.method == "ddpm"].metric)
    older = table[~table.metric.str.endswith("_at_floor_n") | (table.method == "real")].copy()
    groups = older.group.isin(["many", "medium", "few"])
    older.loc[groups, "note"] = older.loc[groups, "note"].str.replace(";pooled", "", regex=False)
    older.to_csv(out / "results.csv", index=False)
    capsys.readouterr()
    assert main(["report", str(out), "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "stale (group-not-pooled)" in text and "stale (no-floor-n)" in text and "--rescore" in text
    assert (out / "stale_rows.csv").exists()

    stored = _stat(out)
    assert main(["run", "--preset", "smoke", "--out", str(out), "--no-progress", "--rescore"]) == 0
    text = capsys.readouterr().out
    assert text.count("re-evaluating from the stored samples") == 5
    assert {k: v for k, v in _stat(out).items() if k in stored} == stored  # no model or sample file was rewritten
    again = read_results(out)
    _one_block_per_cell_and_setting(again)
    assert len(again) == len(table) and not (out / "stale_rows.csv").exists()
    assert main(["run", "--preset", "smoke", "--out", str(out), "--rescore", "--force"]) == 2  # a config error: pick one


def test_intervals_on_the_smoke_preset_bracket_their_estimates(smoke, tmp_path):
    """eval.bootstrap on the smoke preset: every interval row of results.csv brackets its estimate."""
    import shutil

    src, _ = smoke
    out = tmp_path / "intervals"
    shutil.copytree(src, out)
    assert main(["run", "--preset", "smoke", "--out", str(out), "--no-progress", "--no-report", "--methods", "ddpm",
                 "--set", "eval.bootstrap=20", "--set", "eval.downstream=false"]) == 0
    table = read_results(out)
    keys = ["method", "seed", "feature_space", "group", "class"]
    checked = 0
    for metric in ("fid", "kid"):
        est = table[table.metric == metric].set_index(keys).value
        low = table[table.metric == f"{metric}_ci_low"].set_index(keys).value
        high = table[table.metric == f"{metric}_ci_high"].set_index(keys).value
        both = low.notna() & high.reindex(low.index).notna()
        assert both.sum() >= 5, metric  # overall, groups and the larger classes
        for k in low.index[both]:
            assert low[k] <= est[k] <= high[k], (metric, k)
            checked += 1
        nan = table[table.metric.isin([f"{metric}_ci_low", f"{metric}_ci_high"]) & table.value.isna()]
        assert nan.note.str.startswith("skipped:").all()
    assert checked >= 10
