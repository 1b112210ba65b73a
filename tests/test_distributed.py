"""One run on two processes (gloo on the CPU) equals one process; the launchers' contracts.

Tolerance of the DDP comparison: the global batch (indices, flips, label drops, t, noise, y') is
drawn exactly as in one process, so only the order of float additions differs (two half-batch
gradients averaged by all-reduce against one full-batch gradient).  Logged losses agree to a
relative 1e-4 and the final EMA weights to 1e-5 absolute; the evaluation set, drawn from one
model, is identical bit for bit.
"""

import csv
import os
import socket
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from engine_helpers import TINY_MODEL, tiny_config, tiny_data

from benchmark.cli import main
from benchmark.core.distributed import Dist, ShardDraws, gather_batch
from benchmark.core.errors import ConfigError, TrainingError
from benchmark.engine.diffusion import GaussianDiffusion
from benchmark.engine.sampling import generate_eval_set
from benchmark.engine.trainer import load_model, train
from benchmark.harness.results import read_results
from methods import METHODS, contracts, get_method

METHOD = "cbdm+reweight"  # per-sample t, noise and y' draws; per-sample weights


def _cfg(method_name=METHOD):
    cfg = tiny_config(label_drop_mode="sample", label_drop=0.3)  # per-sample drops: a per-sample draw too
    cfg = replace(cfg, model=replace(TINY_MODEL, dropout=0.0))  # dropout streams differ per rank by design
    if method_name == "t2h":  # T = 1000 reaches the noise levels where the swap posterior leaves the sample itself
        cfg = replace(cfg, diffusion=replace(cfg.diffusion, T=1000))
    return cfg


def _train(run_dir, method_name=METHOD):
    cfg, data = _cfg(method_name), tiny_data()
    method = get_method(method_name, class_counts=data.counts, options=cfg.method)
    return train(cfg=cfg, dataset=data, method=method, run_dir=run_dir, seed=0, device="cpu", progress=False)


def _run(run_dir, sample_from=None, method_name=METHOD):
    cfg = _cfg(method_name)
    path = _train(run_dir, method_name)
    model, _ = load_model(sample_from or path, "cpu")
    generate_eval_set(model, GaussianDiffusion.from_config(cfg.diffusion), num_classes=3, n_per_class=4,
                      cfg=replace(cfg.sample, guidance=1.5), seed=0, out_path=run_dir / "samples.npz", device="cpu",
                      progress=False, chunk_size=4)  # fmt: skip


def _rank(rank, world, port, run_dir, sample_from, method_name):
    import torch.distributed as dist

    from benchmark.core.distributed import init_from_env

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    init_from_env("cpu")
    try:
        _run(run_dir, sample_from, method_name)
        # batch-global terms: the gathered batch, and gradients that reach the rank owning each sample
        x = torch.arange(2.0 * rank, 2.0 * rank + 2, requires_grad=True)
        full = gather_batch(x)
        assert torch.equal(full.detach(), torch.arange(4.0))
        assert torch.equal(gather_batch(torch.tensor([rank == 0, True])), torch.tensor([True, True, False, True]))
        (full * torch.arange(1.0, 5.0)).sum().backward()  # the same loss on both ranks
        assert torch.equal(x.grad, 2 * torch.arange(1.0, 5.0)[2 * rank : 2 * rank + 2])
        # resume from the last checkpoint: every rank restores its own RNG stream, rank 0 rewrites model.pt
        dist.barrier()
        if rank == 0:
            (run_dir / "model.pt").unlink()
        dist.barrier()
        _train(run_dir, method_name)
    finally:
        dist.destroy_process_group()


def _losses(run_dir):
    with open(run_dir / "train_log.csv") as fh:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(fh)]


@pytest.mark.parametrize("method_name", [METHOD])  # every other method: the test below
def test_two_gloo_processes_match_one_process(tmp_path, method_name):
    one, two = tmp_path / "one", tmp_path / "two"
    _run(one, method_name=method_name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_rank, args=(2, port, two, one / "model.pt", method_name), nprocs=2, join=True)
    a, b = _losses(one), _losses(two)
    assert [s for s, _ in a] == [s for s, _ in b] and len(a) == 4
    np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=1e-4)
    ema1, ema2 = (torch.load(p / "model.pt", weights_only=True)["ema"] for p in (one, two))
    for k in ema1:
        torch.testing.assert_close(ema2[k], ema1[k], atol=1e-5, rtol=0)
    with np.load(one / "samples.npz") as x, np.load(two / "samples.npz") as y:
        assert np.array_equal(x["images"], y["images"]) and np.array_equal(x["labels"], y["labels"])
    ckpt = torch.load(next((two / "checkpoints").glob("ckpt_*.pt")), weights_only=True)
    assert ckpt["rng_cpu_ranks"].shape[0] == 2  # every rank's dropout stream, for an exact resume


def test_every_method_gives_the_one_process_objective_on_two_processes(tmp_path):
    """Every registered method, those whose loss couples the samples of a batch included (CORAL's
    SupCon over the batch with lambda from the batch's t, T2H's targets swapped between batch
    images): the same logged objective and final weights as one process.  One spawn for all; the
    check is methods/contracts.py's, which `ltgen-bench check-method` runs on any method."""
    assert contracts.two_processes_match_one(METHODS.names(), tmp_path) == {}


@pytest.mark.parametrize("rank", [0, 1])
def test_shard_draws_slice_the_global_draws(rank):
    probs = torch.tensor([0.2, 0.5, 0.3])

    def draws(gen, n):
        return [torch.randint(0, 50, (n,), generator=gen), torch.randn(n, 1, 2, 2, generator=gen),
                torch.multinomial(probs, n, replacement=True, generator=gen), torch.rand((), generator=gen),
                torch.rand(size=(n,), generator=gen)]  # fmt: skip

    full = draws(torch.Generator().manual_seed(3), 6)
    gen = torch.Generator().manual_seed(3)
    with ShardDraws(gen, local=3, d=Dist(rank, 2, rank)):
        part = draws(gen, 3)
    for f, p in zip(full, part):
        assert torch.equal(p, f if f.dim() == 0 else f[rank * 3 : rank * 3 + 3])
    with pytest.raises(TrainingError, match="cannot be split exactly"), ShardDraws(gen, local=3, d=Dist(rank, 2, rank)):
        torch.bernoulli(torch.full((3,), 0.5), generator=gen)


def test_global_batch_must_divide():
    assert Dist(0, 4, 0).local_batch(64) == 16
    with pytest.raises(ConfigError, match="divisible by the 3 processes"):
        Dist(0, 3, 0).local_batch(64)


SMOKE = ["run", "--preset", "smoke", "--no-progress", "--no-report", "--methods", "ddpm,reweight",
         "--set", "train.steps=3", "--set", "eval.downstream=false", "--set", "eval.real_floor=false"]  # fmt: skip


def _table(out):
    keys = ["method", "seed", "metric", "group", "class", "feature_space"]
    return read_results(out).sort_values(keys, na_position="first").reset_index(drop=True)


@pytest.fixture(scope="module")
def local_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    assert main(SMOKE + ["--out", str(out)]) == 0
    return _table(out)


def _same_table(ta, tb):
    pd.testing.assert_frame_equal(ta.drop(columns="value"), tb.drop(columns="value"))
    np.testing.assert_allclose(tb.value.to_numpy(float), ta.value.to_numpy(float), rtol=1e-5, atol=1e-8)


def test_local_jobs_give_the_sequential_table(tmp_path, local_table):
    assert main(SMOKE + ["--out", str(tmp_path), "--jobs", "2"]) == 0
    _same_table(local_table, _table(tmp_path))


def test_submitit_local_executor_gives_the_local_table(tmp_path, capsys, local_table):
    pytest.importorskip("submitit")
    b = tmp_path / "submitit"
    assert main(SMOKE + ["--out", str(b), "--launcher", "submitit-local"]) == 0
    _same_table(local_table, _table(b))
    cell = b / "runs" / "digits" / "exp-0.1" / "ddpm" / "seed0"
    record = pd.read_json(cell / "slurm.json", typ="series")
    assert record["launcher"] == "submitit-local" and (cell / "submitit").is_dir()
    capsys.readouterr()
    assert main(SMOKE + ["--out", str(b), "--launcher", "submitit-local"]) == 0  # finished: nothing resubmitted
    assert capsys.readouterr().out.count("finished, not submitted") == 2
    model = (cell / "model.pt").stat().st_mtime_ns
    # a changed evaluation key: the finished cells are submitted again, and only re-evaluated
    assert main(SMOKE + ["--out", str(b), "--launcher", "submitit-local", "--set", "eval.kid_subsets=4"]) == 0
    assert "finished, not submitted" not in capsys.readouterr().out
    kid = read_results(b).query("metric == 'kid'")
    assert len(kid) and kid.note.str.contains("kid_subsets=4").all() and (cell / "model.pt").stat().st_mtime_ns == model
    # a changed training key: refused here, before a job is submitted
    assert main(SMOKE + ["--out", str(b), "--launcher", "submitit-local", "--set", "train.lr=0.5"]) == 1
    assert capsys.readouterr().out.count("not submitted: ") == 2


def test_slurm_without_submitit_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    assert main(SMOKE + ["--out", str(tmp_path), "--launcher", "slurm"]) == 2
    assert "pip install 'ltgen-bench[slurm]'" in capsys.readouterr().err


def test_slurm_options_reach_sbatch(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here
    from benchmark.harness.launch import SlurmOptions, _executor, minutes

    assert [minutes(t) for t in ("90", "1:30:00", "2-00:00:00", "45:30")] == [90, 90, 2880, 46]
    opts = SlurmOptions(partition="gpu", time="2-00:00:00", gpus=4, cpus=8, mem="64G", extra=("account=proj",))
    ex = _executor(submitit, "slurm", tmp_path, opts, name="ltgen x", after=["123"])
    text = ex._make_submission_file_text("python -m x", "123")
    for line in ("--partition=gpu", "--time=2880", "--gpus-per-node=4", "--ntasks-per-node=4", "--cpus-per-task=8",
                 "--mem=64G", "--account=proj", "--dependency=afterany:123"):  # fmt: skip
        assert line in text


class _FakeSubmitit:
    """submitit as seen by the resubmission check: sacct's answer is ``state``."""

    def __init__(self, state):
        self.SlurmJob = lambda folder, job_id: type("Job", (), {"state": state})()


@pytest.mark.parametrize("sacct,squeue,expect", [
    ("RUNNING", None, ("7", "RUNNING")),  # sacct knows
    ("COMPLETED", None, (None, "")),
    ("UNKNOWN", "echo PENDING", ("7", "PENDING")),  # no accounting: squeue decides
    ("UNKNOWN", "true", (None, "")),  # squeue lists it no more: ended
    ("UNKNOWN", "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1", (None, "")),
    ("UNKNOWN", "exit 1", ("7", "UNKNOWN")),  # nobody can tell: not resubmitted
    ("UNKNOWN", "missing", ("7", "UNKNOWN")),
])  # fmt: skip
def test_a_job_slurm_may_still_run_is_not_resubmitted(tmp_path, monkeypatch, sacct, squeue, expect):
    from benchmark.harness.launch import _active_job

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if squeue != "missing":
        script = bin_dir / "squeue"
        script.write_text(f"#!/bin/sh\n{squeue or 'exit 1'}\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    (tmp_path / "slurm.json").write_text('{"launcher": "slurm", "job_id": "7"}')
    assert _active_job(_FakeSubmitit(sacct), tmp_path) == expect


def test_a_local_worker_limits_numpy_blas_threads_too(monkeypatch):
    """numpy's BLAS is loaded before the worker initialiser sets OMP_NUM_THREADS: the limit must be applied
    to the loaded library, or every --jobs worker runs one BLAS thread per core."""
    import queue

    from threadpoolctl import threadpool_info, threadpool_limits

    from benchmark.harness.launch import _init_worker

    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    if not blas or blas[0]["num_threads"] < 2:
        pytest.skip("numpy reports no BLAS library running on more than one thread to limit")
    before_blas, before_torch = blas[0]["num_threads"], torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(before_torch))
    slots = queue.Queue()
    slots.put(None)
    try:
        _init_worker(slots, 1)
        assert {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"} == {1}
        assert torch.get_num_threads() == 1
    finally:
        threadpool_limits(limits=before_blas, user_api="blas")
        torch.set_num_threads(before_torch)
