"""What a changed setting redoes in a finished cell folder, and how its rows replace the old ones."""

import json

import numpy as np
import pandas as pd
import pytest

from benchmark.core.config import EVALUATE, SAMPLE, TRAIN, Config, all_keys, apply_overrides, stage_of, to_dict
from benchmark.core.errors import ConfigError
from benchmark.core.presets import get_preset
from benchmark.harness.cells import Cell, cell_config, check_or_write_config, row_key
from benchmark.harness.results import RESULT_COLUMNS, drop_cell, put_cell, read_results


def test_every_config_key_has_a_stage():
    stages = {key: stage_of(key) for key in all_keys(Config())}
    assert set(stages.values()) == {TRAIN, SAMPLE, EVALUATE, None}
    for key, stage in stages.items():
        section = key.split(".")[0]
        if section in ("data", "model", "diffusion", "method"):
            assert stage == TRAIN, key
    assert stages["train.steps"] == stages["train.lr"] == stages["train.precision"] == TRAIN
    assert stages["sample.guidance"] == stages["sample.n_per_class"] == SAMPLE
    assert stages["eval.feature_space"] == stages["eval.reference"] == stages["protocol"] == EVALUATE
    for key in ("device", "preset", "sample.batch_size", "eval.batch_size", "train.ckpt_every", "grid.seeds"):
        assert stages[key] is None, key
    with pytest.raises(KeyError, match="no stage"):
        stage_of("newsection.key")


CELL = Cell("digits", "exp", 0.1, "ddpm", 0)
REAL = Cell("digits", "exp", 0.1, "real", 0)


@pytest.mark.parametrize(
    "cell, pairs, redo",
    [
        (CELL, ["eval.kid_subsets=5"], EVALUATE),
        (CELL, ["eval.reference=train-balanced", "protocol=other"], EVALUATE),
        (CELL, ["sample.guidance=2.0"], SAMPLE),
        (CELL, ["sample.steps=5", "eval.pr_k=2"], SAMPLE),  # the earliest stage wins
        (CELL, ["sample.batch_size=7", "device=cuda", "train.log_every=1"], "same"),  # how fast, not what
        (REAL, ["sample.n_per_class=7"], EVALUATE),  # the real floor's n
        (REAL, ["sample.guidance=2.0", "train.lr=0.5"], None),  # a real cell neither trains nor samples
    ],
)
def test_a_changed_key_redoes_its_stage_and_the_ones_after(tmp_path, cell, pairs, redo):
    cfg = get_preset("smoke")
    folder = tmp_path / "cell"
    assert check_or_write_config(folder, cell_config(cfg, cell), cell) is None  # new folder: record written
    (folder / "model.pt").write_bytes(b"")  # the folder holds work (one that holds none takes any new config)
    change = check_or_write_config(folder, cell_config(apply_overrides(cfg, pairs), cell), cell)
    if redo == "same":
        assert change is None
        return
    assert change.redo == redo
    assert {k for k, _, _ in change.keys} == {p.split("=")[0] for p in pairs}
    # the record still holds the old config: the caller rewrites it once it has removed what the change invalidates
    assert json.loads((folder / "config.json").read_text())["config"] == to_dict(cell_config(cfg, cell))


@pytest.mark.parametrize("cell, pair", [(CELL, "train.steps=31"), (Cell("digits", "exp", 0.1, "cbdm", 0), "method.cbdm.tau=2"),
                                        (REAL, "data.split_seed=1"), (CELL, "data.resolution=6")])  # fmt: skip
def test_a_changed_training_key_is_refused_naming_the_fix(tmp_path, cell, pair):
    cfg = get_preset("smoke")
    folder = tmp_path / "cell"
    check_or_write_config(folder, cell_config(cfg, cell), cell)
    (folder / "model.pt").write_bytes(b"")  # the folder holds work
    with pytest.raises(ConfigError, match=rf"different config \({pair.split('=')[0]}.*--force.*--out"):
        check_or_write_config(folder, cell_config(apply_overrides(cfg, [pair, "eval.pr_k=2"]), cell), cell)


def _rows(method: str, space: str, value: float, n: int = 3, downstream: bool = True) -> pd.DataFrame:
    base = dict(dataset="digits", profile="exp", imbalance=0.1, split_fingerprint="abc", method=method, seed=0,
                train_steps=30, protocol="p", sampler="ddim", sampler_steps=10, guidance=1.0, reference="test",
                group="all", n_gen=12, n_ref=30, note="", train_precision="fp32", sample_precision="fp32",
                point="main")  # fmt: skip
    rows = [dict(base, feature_space=space, metric="fid", **{"class": c}, value=value) for c in range(n)]
    if downstream:
        rows.append(dict(base, feature_space="none", metric="cas_acc", **{"class": None}, value=value / 10))
    return pd.DataFrame(rows)[RESULT_COLUMNS]


def test_put_cell_replaces_the_same_feature_space_and_keeps_others_beside(tmp_path):
    path = tmp_path / "results.csv"
    put_cell(path, _rows("ddpm", "classifier:1", 5.0))
    put_cell(path, _rows("cbdm", "classifier:1", 6.0))
    assert put_cell(path, _rows("ddpm", "classifier:1", 4.0)) == 4  # re-evaluated: same space replaced
    assert put_cell(path, _rows("ddpm", "inception:2", 9.0)) == 1  # another space: only the space-free row goes
    table = read_results(path)
    ddpm = table[table.method == "ddpm"]
    assert sorted(set(ddpm.feature_space)) == ["classifier:1", "inception:2", "none"]
    assert np.allclose(ddpm[ddpm.feature_space == "classifier:1"].value, 4.0)
    assert ddpm[ddpm.feature_space == "none"].value.tolist() == [0.9]
    blocks = table.groupby(["method", "seed", "feature_space", "metric", "group", "class"], dropna=False).size()
    assert (blocks == 1).all()
    assert table[table.method == "cbdm"].value.tolist() == [6.0, 6.0, 6.0, 0.6]  # other cells untouched
    assert drop_cell(path, row_key(Cell("digits", "exp", 0.1, "ddpm", 0))) == 7
    assert set(read_results(path).method) == {"cbdm"}


def test_put_cell_replaces_an_older_tables_classifier_rows_named_without_the_weights_digest(tmp_path):
    path = tmp_path / "results.csv"
    put_cell(path, _rows("ddpm", "classifier:abc", 5.0))  # an older table: the recipe fingerprint alone
    put_cell(path, _rows("ddpm", "classifier:abd", 7.0))  # another recipe: not the same space
    assert put_cell(path, _rows("ddpm", "classifier:abc:w0123456789ab", 4.0)) == 4
    table = read_results(path)
    assert sorted(set(table.feature_space)) == ["classifier:abc:w0123456789ab", "classifier:abd", "none"]


def test_the_closing_line_says_the_wall_time_and_the_cells_sum_apart(tmp_path):
    from benchmark.harness.grid import CellOutcome, summarize

    cells = [Cell("digits", "exp", 0.1, m, 0) for m in ("ddpm", "cbdm")]
    outcomes = [CellOutcome(c, tmp_path, "done", 600.0) for c in cells]  # two cells side by side, 10 min each
    text = summarize(outcomes, tmp_path, wall=630.0)
    assert "2 cells: 2 run, 0 already finished (skipped), 0 failed in 10.5 min (the cells' own times sum to 20.0)" in text
    assert "failed in 20.0 min" in summarize(outcomes, tmp_path)  # without a wall time: the sum, as before
