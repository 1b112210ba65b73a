"""A resumed training run says so, on the console and in the cell's log."""

import logging

import pytest
from engine_helpers import Interrupting, tiny_config, tiny_data

from benchmark.engine.trainer import train
from methods import get_method

DATA = tiny_data()


def test_a_resumed_run_says_resuming_from_step_n(tmp_path, capsys, caplog):
    cfg = tiny_config()
    kw = dict(cfg=cfg, dataset=DATA, run_dir=tmp_path, seed=0, device="cpu", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(method=Interrupting(get_method("ddpm", class_counts=DATA.counts), at=4), **kw)
    assert "resuming" not in capsys.readouterr().out  # a fresh start says nothing of the kind
    with caplog.at_level(logging.INFO, logger="ltgen"):
        train(method=get_method("ddpm", class_counts=DATA.counts), **kw)
    said = "resuming from step 3 of 6"
    assert said in capsys.readouterr().out
    assert any(said in r.getMessage() for r in caplog.records)  # the record cell.log's handler writes
