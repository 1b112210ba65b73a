"""train.logger: TensorBoard / W&B receive every loss term, lr, images/s and a sample grid per class group;
a resumed run continues the same run without a duplicate step. Read back with the trackers' own readers."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from engine_helpers import Interrupting, tiny_config, tiny_data

from benchmark.core.config import Config, apply_overrides
from benchmark.core.errors import ConfigError
from benchmark.engine.trackers import GRID_IMAGES, grid_classes, make_tracker, tile
from benchmark.engine.trainer import train
from methods import get_method

DATA = replace(tiny_data(), groups=("many", "medium", "few"))
NO_TB = importlib.util.find_spec("tensorboard") is None


def _train(run_dir, cfg, method):
    return train(cfg=cfg, dataset=DATA, method=method, run_dir=run_dir, seed=0, device="cpu", progress=False)


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.skipif(NO_TB, reason="TensorBoard is not installed: pip install -e '.[tensorboard]'")
def test_tensorboard_gets_every_term_and_grids_and_a_resume_adds_no_duplicate_step(tmp_path):
    cfg = tiny_config(logger="tensorboard")  # 6 steps, log every 2, checkpoint every 3
    method = get_method("cbdm", class_counts=DATA.counts, options=cfg.method)
    full = tmp_path / "full"
    _train(full, cfg, method)
    acc = _events(full)
    scalars = set(acc.Tags()["scalars"])
    assert {f"loss/{t}" for t in method.term_names} | {"loss/total", "train/lr", "train/images_per_s"} <= scalars
    assert [e.step for e in acc.Scalars("loss/total")] == [2, 3, 4, 6]
    assert set(acc.Tags()["images"]) == {"samples/many", "samples/medium", "samples/few"}
    image = acc.Images("samples/few")
    assert [e.step for e in image] == [3, 6]
    assert image[0].width == GRID_IMAGES * 9 - 1 and image[0].height == 8  # one class, four images, 1-pixel gaps

    # killed after logging step 4 (past the checkpoint at 3): the resumed run re-logs 4 and the reader keeps one
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        _train(cut, cfg, Interrupting(method, at=5))
    assert [e.step for e in _events(cut).Scalars("loss/total")] == [2, 3, 4]
    _train(cut, cfg, method)
    acc = _events(cut)
    assert [e.step for e in acc.Scalars("loss/total")] == [2, 3, 4, 6]
    assert [e.step for e in acc.Images("samples/many")] == [3, 6]
    full_loss = [e.value for e in _events(full).Scalars("loss/total")]
    assert np.allclose([e.value for e in acc.Scalars("loss/total")], full_loss)  # the same run, continued


def test_csv_default_writes_no_tracker_files(tmp_path):
    cfg = tiny_config()
    assert cfg.train.logger == "csv"
    _train(tmp_path, cfg, get_method("ddpm", class_counts=DATA.counts, options=cfg.method))
    assert not (tmp_path / "tensorboard").exists() and (tmp_path / "train_log.csv").exists()


def test_unknown_logger_and_missing_package_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="csv.*tensorboard.*wandb"):
        apply_overrides(Config(), ["train.logger=mlflow"])
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"pip install 'ltgen-bench\[tensorboard\]'"):
        make_tracker("tensorboard", tmp_path, resume_step=0, config={}, config_json="{}", name="x")
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"pip install 'ltgen-bench\[wandb\]'"):
        make_tracker("wandb", tmp_path, resume_step=0, config={}, config_json="{}", name="x")


def test_grid_classes_spread_over_each_group_and_tile_lays_rows():
    groups = ["many"] * 3 + ["medium"] * 20 + ["few"] * 2
    chosen = grid_classes(groups)
    assert chosen["many"] == [0, 1, 2] and chosen["few"] == [23, 24]
    assert len(chosen["medium"]) == 8 and chosen["medium"][0] == 3 and chosen["medium"][-1] == 22
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    grid = tile(images, rows=2)
    assert grid.shape == (5, 8, 3) and grid[0, 0, 0] == 0 and grid[3, 0, 0] == 3 and grid[3, 6, 0] == 5


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="W&B is not installed: pip install -e '.[wandb]'")
def test_wandb_runs_offline_and_resumes_its_run_id(tmp_path, monkeypatch):
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(logger="wandb")
    method = get_method("ddpm", class_counts=DATA.counts, options=cfg.method)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, cfg, Interrupting(method, at=5))
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    _train(tmp_path, cfg, method)
    assert (tmp_path / "wandb_id.txt").read_text().strip() == run_id
    runs = sorted((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert runs, os.listdir(tmp_path / "wandb")  # offline: nothing left the machine
