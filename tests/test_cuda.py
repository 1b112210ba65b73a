"""The CUDA path: bf16 autocast, fused Adam, cudnn autotuning and TF32 (for training only: the caller's
settings come back, and feature extraction pins its own), the dataset held on the GPU, sampling and a
whole grid on the GPU, and the perf script's CUDA branches.

Skipped where torch sees no GPU (CI has none). On a CUDA machine run them, with the GPU
throughput figures, by ``.ci/gpu-checks``. GPU kernels are not bitwise reproducible (cudnn
autotuning, atomics), so where a CPU test asks for equality these ask for closeness and say how close.
"""

import csv
import re

import numpy as np
import pytest
import torch
from engine_helpers import TINY_MODEL, Interrupting, tiny_config, tiny_data

from benchmark.engine.backbone import build_unet
from benchmark.engine.checkpoint import latest_checkpoint, load
from benchmark.engine.diffusion import GaussianDiffusion
from benchmark.engine.sampling import balanced_labels, sample_images, sample_seeds
from benchmark.engine.trainer import load_model, train
from methods import get_method

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run .ci/gpu-checks there)")

DATA = tiny_data()


def _train(run_dir, name="ddpm", cfg=None, method=None):
    cfg = cfg or tiny_config()
    method = method or get_method(name, class_counts=DATA.counts, options=cfg.method)
    return train(cfg=cfg, dataset=DATA, method=method, run_dir=run_dir, seed=0, device="cuda", progress=False)


@pytest.mark.parametrize("name", ["ddpm", "cbdm", "reweight", "resample", "t2h", "coral", "cm", "cm+t2h"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_trains_on_cuda_in_bf16(tmp_path, name, channels_last):
    cfg = tiny_config(precision="bf16", channels_last=channels_last)
    path = _train(tmp_path, name, cfg)
    model, info = load_model(path, "cuda")
    assert info["steps"] == 6 and next(model.parameters()).device.type == "cuda"
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps fp32 weights
    torch.manual_seed(0)
    init = build_unet(TINY_MODEL, channels=1, resolution=8, num_classes=3).state_dict()
    assert any(not torch.equal(v.cpu(), init[k]) for k, v in model.state_dict().items())
    with open(tmp_path / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [2, 3, 4, 6]
    assert all(torch.isfinite(torch.tensor([float(r["loss"]), float(r["grad_norm"])])).all() for r in rows)


def test_resume_on_cuda_continues_the_same_run(tmp_path):
    cfg = tiny_config(precision="bf16")
    method = get_method("cbdm", class_counts=DATA.counts, options=cfg.method)
    full = _train(tmp_path / "full", "cbdm", cfg)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", cfg=cfg, method=Interrupting(method, at=4))
    assert latest_checkpoint(tmp_path / "cut" / "checkpoints").name == "ckpt_00000003.pt"
    resumed = _train(tmp_path / "cut", "cbdm", cfg)
    a, b = load(full), load(resumed)
    # the random streams are restored exactly (same batches, t, noise, y'); the arithmetic only closely
    ca, cb = (load(latest_checkpoint(p / "checkpoints")) for p in (tmp_path / "full", tmp_path / "cut"))
    assert torch.equal(ca["gen_device"], cb["gen_device"]) and torch.equal(ca["rng_cuda"], cb["rng_cuda"])
    for k in a["ema"]:
        torch.testing.assert_close(a["ema"][k], b["ema"][k], rtol=1e-3, atol=1e-4)


def _cuda_flags():
    b = torch.backends
    return b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark


def test_training_on_cuda_gives_back_the_processes_tf32_and_autotuning(tmp_path):
    before = _cuda_flags()
    _train(tmp_path, cfg=tiny_config(tf32=not before[0]))  # the run switches TF32 to the other value...
    assert _cuda_flags() == before  # ...and puts the caller's back: sampling and evaluation run under their own


def test_feature_extraction_on_cuda_is_the_same_whatever_tf32_the_caller_left_on(tmp_path):
    from benchmark.core.device import kept_numerics
    from benchmark.eval.features import FeatureSpace, extract_cached

    class ConvSpace(FeatureSpace):
        name, identity, device = "conv", "conv:v1", torch.device("cuda")

        def __init__(self):
            with torch.random.fork_rng(devices=[0]):
                torch.manual_seed(0)
                self.conv = torch.nn.Conv2d(3, 64, 3).cuda()
                self.proj = torch.randn(64, 256, device="cuda")

        @torch.no_grad()
        def extract(self, images, *, progress=False):
            x = self.conv(images.cuda().float() / 255).mean((2, 3))
            return {"features": (x @ self.proj).double().cpu().numpy()}

    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    space, out = ConvSpace(), []
    with kept_numerics():
        for i, tf32 in enumerate((True, False)):  # after training (TF32, autotuning) and in a fresh process
            b = torch.backends
            b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = b.cudnn.benchmark = tf32
            out.append(extract_cached(space, images, cache_dir=tmp_path / str(i))["features"])
            assert _cuda_flags() == (tf32, tf32, tf32)
    np.testing.assert_allclose(out[0], out[1], rtol=1e-6, atol=1e-7)  # TF32 would differ by ~1e-3 relative


def test_sampling_on_cuda_is_the_cpu_computation(tmp_path):
    """bf16 sampling on the GPU against fp32 on the CPU, same model, labels and per-image seeds:
    within a few grey levels on average (a wrong computation is tens of levels away), and
    repeatable on the GPU."""
    torch.manual_seed(0)
    model = build_unet(TINY_MODEL, channels=1, resolution=8, num_classes=3).eval()
    diff = GaussianDiffusion(T=50)
    kw = dict(labels=balanced_labels(3, 4), seeds=sample_seeds(3, 12), sampler="ddim", steps=10, guidance=1.5,
              batch_size=12)
    cpu = sample_images(model, diff, device="cpu", **kw)
    gpu = sample_images(model.cuda(), diff, device="cuda", precision="bf16", **kw)
    again = sample_images(model, diff, device="cuda", precision="bf16", **kw)
    gpu32 = sample_images(model, diff, device="cuda", precision="fp32", **kw)
    assert (gpu32.int() - cpu.int()).abs().float().mean() < 1  # fp32 on the GPU: the CPU's computation
    assert gpu.shape == cpu.shape and gpu.dtype == torch.uint8 and gpu.device.type == "cpu"
    diff_levels = (gpu.int() - cpu.int()).abs().float()
    assert diff_levels.mean() < 4, f"mean |cuda - cpu| = {diff_levels.mean():.2f} grey levels"
    assert (gpu.int() - again.int()).abs().max() <= 1
    other = sample_images(model, diff, device="cuda", precision="bf16", **{**kw, "seeds": sample_seeds(4, 12)})
    assert (other.int() - gpu.int()).abs().float().mean() > 4  # the seeds matter


def test_smoke_grid_on_cuda_finishes_and_resumes(tmp_path, capsys):
    from benchmark.cli import main
    from benchmark.harness.results import read_results

    args = ["run", "--preset", "smoke", "--out", str(tmp_path), "--no-progress", "--set", "device=cuda"]
    assert main(args) == 0
    table = read_results(tmp_path)
    assert {"ddpm", "cbdm", "reweight", "resample", "real"} <= set(table["method"])
    assert table["value"].notna().any()
    capsys.readouterr()
    assert main(args) == 0
    assert len(re.findall(r": skipped in", capsys.readouterr().out)) == 5


def test_perf_script_on_cuda(capsys):
    from benchmark.devtools import perf

    perf.main(["--device", "cuda", "--size", "tiny", "--resolution", "8", "--channels", "1", "--classes", "3",
               "--batch", "8", "--rounds", "2", "--steps", "2", "--warmup-steps", "1", "--ddpm-timed-steps", "2",
               "--sample-steps", "2", "--eval-classes", "3", "--eval-per-class", "6", "--eval-dim", "8",
               "--eval-kid-subsets", "2", "--peak-tflops", "100"])
    out = capsys.readouterr().out
    assert "precision auto resolves to bf16; arms at fp32, bf16" in out
    assert re.search(r"^ddpm\s+bf16/fp32 in the same rounds: harness \d+\.\d+x", out, re.M), out
    for name in ("ddpm", "cbdm"):
        assert re.search(rf"^{name}\s.*\(\d+\.\d+% of the given peak\)$", out, re.M), out
    assert re.search(r"ddim-2\s+\d+\.\d+ images/s", out)
