"""Evaluation under torchrun: the ranks split feature extraction and get rank 0's one-process answer;
a cell that fails on one rank stops the job at once instead of leaving the others at a collective."""

import os
import socket
import sys
import time

import numpy as np
import pytest
import torch
from digits_samples import digits_samples
from torch.multiprocessing import ProcessExitedException

from benchmark.cli import main
from benchmark.eval.features import shard_bounds
from benchmark.harness.results import read_results


@pytest.mark.parametrize("n,batch,world", [(100, 16, 2), (100, 16, 3), (7, 16, 2), (0, 4, 2), (64, 16, 4)])
def test_shards_are_whole_batches_covering_every_image_once(n, batch, world):
    bounds = [shard_bounds(n, batch, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (lo, hi), (lo2, _) in zip(bounds, bounds[1:]):
        assert hi == lo2 and lo % batch == 0 and lo <= hi
    assert sum(hi - lo for lo, hi in bounds) == n


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LTGEN_DIST_TIMEOUT_MIN="5")  # fmt: skip
    torch.set_num_threads(1)


def _main_rank(rank, world, port, argv):
    import torch.distributed as dist

    _env(rank, world, port)
    try:
        assert main(argv) == 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


EVAL = ["evaluate", "--preset", "smoke", "--name", "outside", "--no-progress", "--set", "eval.batch_size=32",
        "--set", "eval.downstream=false"]  # fmt: skip


def _features(out):
    found = {}
    for f in sorted((out / "cache" / "features").glob("*.npz")):
        with np.load(f) as z:
            found[f.name] = {k: z[k] for k in z.files}
    return found


def test_evaluate_on_two_processes_equals_one(tmp_path, capfd):
    samples = digits_samples(tmp_path / "samples.npz")
    one, two = tmp_path / "one", tmp_path / "two"
    argv = EVAL + ["--samples", str(samples)]
    assert main(argv + ["--out", str(one)]) == 0
    capfd.readouterr()
    assert main(argv + ["--out", str(one)]) == 0  # again: rows kept, features from the cache
    assert "were already in" in capfd.readouterr().out
    torch.multiprocessing.spawn(_main_rank, args=(2, _port(), argv + ["--out", str(two)]), nprocs=2, join=True)
    a, b = read_results(one), read_results(two)
    assert len(a) == len(b) > 0 and set(a.metric) >= {"fid", "kid", "precision", "recall", "label_acc"}
    keys = ["metric", "group", "class"]
    a, b = (t.sort_values(keys, na_position="first").reset_index(drop=True) for t in (a, b))
    assert a.drop(columns="value").equals(b.drop(columns="value"))
    np.testing.assert_array_equal(a.value.to_numpy(float), b.value.to_numpy(float))
    fa, fb = _features(one), _features(two)
    assert fa.keys() == fb.keys() and len(fa) == 3  # the samples, the reference set and the training images, once each
    for name in fa:
        for k in fa[name]:
            np.testing.assert_array_equal(fa[name][k], fb[name][k])


RUN = ["run", "--preset", "smoke", "--methods", "ddpm", "--no-progress", "--no-report", "--set", "train.steps=4",
       "--set", "eval.batch_size=32", "--set", "eval.downstream=false"]  # fmt: skip


def _run_rank(rank, world, port, out, bad=None):
    import benchmark.harness.stages

    _env(rank, world, port)
    if rank == bad:
        def boom(**_):
            raise RuntimeError("out of memory on this rank (simulated)")

        benchmark.harness.stages.train = boom  # the name the stages call
    rc = main(RUN + ["--out", str(out)])
    import torch.distributed as dist

    # a finished command leaves the group it joined (exiting with it alive can abort the process in gloo's
    # teardown, SIGABRT after the work is done); a rank that failed inside a cell exits with it up
    if rc == 0:
        assert not dist.is_initialized()
    elif rank == bad:
        assert dist.is_initialized()
    if rc:
        sys.exit(rc)  # what run_benchmark.py does; torchrun (here spawn) then stops the other ranks


def test_a_grid_on_two_processes_runs_to_the_end_and_resumes(tmp_path, capfd):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(RUN + ["--out", str(one)]) == 0
    capfd.readouterr()
    torch.multiprocessing.spawn(_run_rank, args=(2, _port(), two), nprocs=2, join=True)
    assert capfd.readouterr().out.count(": done in") == 2  # rank 0 speaks: real and ddpm ran
    torch.multiprocessing.spawn(_run_rank, args=(2, _port(), two), nprocs=2, join=True)  # resume
    out = capfd.readouterr().out
    assert out.count(": skipped in") == 2 and "2 already finished (skipped)" in out
    a, b = read_results(one), read_results(two)
    keys = ["method", "metric", "group", "class"]
    a, b = (t.sort_values(keys, na_position="first").reset_index(drop=True) for t in (a, b))
    assert a[keys].equals(b[keys]) and set(a.method) == {"ddpm", "real"}
    # two half-batch gradients against one full batch: the models differ by float rounding, which the
    # uint8 samples nearly always absorb (identical on the machine this was written on); the tolerance
    # allows a pixel to round the other way.  The real cell (rank 0 alone) is identical by construction
    real = (a.method == "real").to_numpy()
    np.testing.assert_array_equal(a.value[real].to_numpy(float), b.value[real].to_numpy(float))
    np.testing.assert_allclose(b.value[~real].to_numpy(float), a.value[~real].to_numpy(float), rtol=0.05, atol=0.02)


@pytest.mark.parametrize("bad", [0, 1])
def test_a_rank_failing_inside_a_cell_stops_the_job(tmp_path, capfd, bad):
    start = time.time()
    with pytest.raises(ProcessExitedException) as info:
        torch.multiprocessing.spawn(_run_rank, args=(2, _port(), tmp_path, bad), nprocs=2, join=True)
    assert time.time() - start < 120  # not the process-group timeout
    assert info.value.error_index == bad and info.value.exit_code == 2
    assert f"failed on rank {bad}: RuntimeError: out of memory on this rank (simulated)" in capfd.readouterr().err
    cell = tmp_path / "runs" / "digits" / "exp-0.1" / "ddpm" / "seed0"
    assert "simulated" in (cell / ("cell.log" if bad == 0 else f"cell.rank{bad}.log")).read_text()
    assert not (cell / "done.json").exists()
