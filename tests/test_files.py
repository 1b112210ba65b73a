"""The atomic writers: content round-trips, no temporary file is left, a failed write keeps the old file."""

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.core.files import save_npz_atomic, write_atomic, write_csv_atomic, write_text_atomic
from benchmark.engine.checkpoint import atomic_save, load


def test_each_writer_round_trips_into_a_new_folder(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    write_csv_atomic(tmp_path / "new" / "t.csv", frame)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "new" / "t.csv"), frame)
    save_npz_atomic(tmp_path / "a.npz", images=np.arange(6, dtype=np.uint8), key=np.array("k"))
    with np.load(tmp_path / "a.npz") as z:  # no second .npz suffix: the file is where it was asked for
        assert z["images"].tolist() == list(range(6)) and str(z["key"]) == "k"
    atomic_save({"w": torch.ones(2)}, tmp_path / "deep" / "m.pt")
    assert torch.equal(load(tmp_path / "deep" / "m.pt")["w"], torch.ones(2))
    assert write_text_atomic(tmp_path / "x.json", "{}").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.npz", "m.pt", "t.csv", "x.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "r.csv", "old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.csv"]
