"""The performance script (``python -m benchmark.devtools.perf``): its reference loop optimises the same
objective as the methods, and the script runs end to end and prints every figure it promises.
No timing is asserted here (timings belong to the script's output, not to tests)."""

import re

import pytest
import torch
from engine_helpers import TINY_MODEL

from benchmark.devtools import perf
from benchmark.devtools.perf_loops import harness_seconds, reference_loss
from benchmark.engine.backbone import build_unet
from benchmark.engine.diffusion import GaussianDiffusion
from methods import cbdm_loss
from methods.base import ddpm_loss

DIFF = GaussianDiffusion(T=50)
TINY = ["--device", "cpu", "--size", "tiny", "--resolution", "8", "--channels", "1", "--classes", "3", "--batch", "4",
        "--rounds", "2", "--steps", "2", "--warmup-steps", "1"]


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("name", ["ddpm", "cbdm"])
def test_reference_loss_is_the_methods_objective(name):
    """Two separate forwards (reference) and one batched forward (harness) give the same loss and gradients."""
    torch.manual_seed(0)
    model = build_unet(TINY_MODEL, channels=1, resolution=8, num_classes=3).eval()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 1, 8, 8, generator=g)
    t = torch.randint(DIFF.T, (6,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    y, y_prime = torch.tensor([0, 0, 1, 2, 2, 1]), torch.tensor([2, 1, 0, 0, 1, 2])
    tau, gamma = 1.0, 0.25

    if name == "cbdm":
        terms = cbdm_loss(model, DIFF, x0, y, t, noise, y_prime, tau=tau, gamma=gamma)
        ours = sum(v.mean() for v in terms.values())
        assert terms["reg"].abs().sum() > 0 and terms["com"].abs().sum() > 0  # the regulariser is really there
    else:
        ours = ddpm_loss(model, DIFF, x0, y, t, noise)["ddpm"].mean()
    ours.backward()
    g_ours = _grads(model).clone()
    model.zero_grad(set_to_none=True)

    ab = DIFF.alphas_bar.float()
    ref = reference_loss(model, x0, t, y, noise, y_prime if name == "cbdm" else None, sqrt_ab=ab.sqrt(),
                         sqrt_1m_ab=(1 - ab).sqrt(), T=DIFF.T, tau=tau, gamma=gamma)
    ref.backward()
    torch.testing.assert_close(ref, ours, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_grads(model), g_ours, rtol=1e-4, atol=1e-6)


def test_perf_script_prints_every_figure(capsys):
    perf.main(TINY + ["--ddpm-timed-steps", "2", "--sample-steps", "2", "--eval-classes", "3",
                      "--eval-per-class", "6", "--eval-dim", "8", "--eval-kid-subsets", "2"])
    out = capsys.readouterr().out
    assert "cpu convolutions: oneDNN" in out
    gemm = re.search(r"fp32 GEMM .* on this CPU: (\d+\.\d+) TFLOP/s", out)
    assert gemm and float(gemm.group(1)) > 0
    header = re.search(r"^# bf16 on this device: cpu .*: bf16 (native|emulated|none); precision auto resolves to "
                       r"(fp32|bf16); arms at (.*)$", out, re.M)
    assert header, out
    precisions = header.group(3).split(", ")
    assert precisions == (["fp32", "bf16"] if header.group(1) == "native" else ["fp32"])  # auto: bf16 iff native
    num = r"(\d+\.\d+) \[(\d+\.\d+)-(\d+\.\d+)\]"
    for name in ("ddpm", "cbdm"):
        for prec in precisions:
            m = re.search(rf"^{name}\s+{prec}\s+{num}\s+{num}\s+{num}\s+(\d+\.\d+)x\s+(\d+\.\d+)x\s+(\d+\.\d+)\s+"
                          rf"(\d+)/(\d+)/(\d+)", out, re.M)
            assert m, f"no {prec} training row for {name} in:\n{out}"
            v = [float(x) for x in m.groups()]
            for i in (0, 3, 6):  # median inside [min, max], all positive
                assert 0 < v[i + 1] <= v[i] <= v[i + 2]
            assert v[9] > 0 and v[10] > 0
            assert re.search(rf"^{name}\s+{prec}\s.*\((\d+\.\d)% of this CPU's fp32 GEMM rate\)$", out, re.M)
        both = re.search(rf"^{name}\s+bf16/fp32 in the same rounds: harness (\d+\.\d+)x, bare (\d+\.\d+)x", out, re.M)
        assert bool(both) == (len(precisions) == 2)
    for prec in precisions:
        assert re.search(rf"ddpm-1000\s+{prec}\s+\d+\.\d+ images/s .*EXTRAPOLATED from 2 of 1000 steps", out)
        assert re.search(rf"ddim-2\s+{prec}\s+\d+\.\d+ images/s .*measured", out)
    assert bool(re.search(r"ddim-2\s+bf16/fp32 in the same rounds: \d+\.\d+x", out)) == (len(precisions) == 2)
    assert re.search(r"overall \+ 3 groups \+ 3 classes \(\d+ rows\)", out)
    bound = re.search(r"k-NN lower bound: 3 distance passes, each distance once = (\S+) FLOP = (\d+\.\d+) s at the fp32 "
                      r"GEMM rate measured now \(\S+ TFLOP/s\); every ordered pair: \d+\.\d+ s", out)
    assert bound and float(bound.group(1)) == pytest.approx(8 * 4 * 18**2, rel=1e-2)  # d (2 n^2) + 2 d n^2
    assert re.search(r"k-NN pass alone .* \d+\.\d+ s = \d+\.\d+x the bound \(\d+\.\d+x the ordered-pairs bound\)", out)
    assert re.search(r"overall pass lower bound: the k-NN bound \+ FID's and KID's float64 products \(\S+ FLOP = "
                     r"\d+\.\d+ s at numpy's float64 GEMM rate measured now, \d+\.\d+ TFLOP/s\) = \d+\.\d+ s", out)
    assert re.search(r"one overall pass \(k-NN \+ FID, KID\) +\d+\.\d+ s = \d+\.\d+x its bound \(\d+\.\d+x the k-NN "
                     r"bound alone\)", out)
    div = re.search(r"diversity rows .*; (\d+) rows; (\d+) long-tailed training images, IR 100\) +(\d+\.\d+) s", out)
    # 3 classes: (overall + 3 groups + 3 classes) x (3 Vendi + 3 in-manifold + memorisation in 2 spaces)
    assert div and int(div.group(1)) == 7 * 8 and int(div.group(2)) == 6 + 1 + 1, out


def test_perf_native_convolutions_switch_back(capsys):
    assert torch.backends.mkldnn.enabled
    perf.main(TINY + ["--methods", "ddpm", "--rounds", "1", "--skip", "sample,eval", "--mkldnn", "off",
                      "--peak-tflops", "0.1"])
    out = capsys.readouterr().out
    assert "cpu convolutions: native (oneDNN off)" in out and "% of the given peak" in out
    assert torch.backends.mkldnn.enabled  # restored for whatever runs next in the process


def test_perf_rejects_methods_without_a_reference_loop(capsys):
    with pytest.raises(SystemExit):
        perf.main(["--methods", "t2h"])
    assert "no reference loop for ['t2h']" in capsys.readouterr().err


def test_harness_window_must_divide_the_timed_steps(tmp_path):
    with pytest.raises(ValueError, match="multiple of the warm-up steps"):
        harness_seconds(None, None, "ddpm", steps=3, warm=2, device=torch.device("cpu"), tmp=tmp_path, tag="x")


def test_steps_that_the_warm_up_window_does_not_divide_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        perf.main(["--steps", "7", "--warmup-steps", "2"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--steps 7 must be a positive multiple of --warmup-steps 2" in err
    assert "e.g. --steps 8" in err and "Traceback" not in err


def test_perf_preset_measures_the_presets_model_and_data_shape(capsys):
    from benchmark.core.presets import get_preset

    smoke = get_preset("smoke")
    perf.main(["--device", "cpu", "--preset", "smoke", "--methods", "ddpm", "--rounds", "1", "--steps", "2",
               "--warmup-steps", "1", "--skip", "sample,eval", "--precision", "fp32"])
    out = capsys.readouterr().out
    # digits: 1x8x8, 10 classes; the preset's batch and memory format, not --size small's defaults
    assert re.search(rf"^# model of preset smoke: \d+\.\d+M params, 1x8x8, 10 classes, batch {smoke.train.batch_size}; "
                     rf"harness and bare: channels_last={smoke.train.channels_last},", out, re.M), out
    assert re.search(r"^ddpm\s+fp32\s+\d+\.\d+", out, re.M)
    # an explicit memory format still wins over the preset's
    perf.main(["--device", "cpu", "--preset", "smoke", "--methods", "ddpm", "--rounds", "1", "--steps", "2",
               "--warmup-steps", "1", "--skip", "sample,eval", "--precision", "fp32", "--channels-last", "on"])
    assert "harness and bare: channels_last=True," in capsys.readouterr().out


def test_perf_preset_bad_name_or_unreadable_data_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit):
        perf.main(["--device", "cpu", "--preset", "nope"])
    assert "--preset nope: unknown preset 'nope'. Valid presets:" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # listfile data that is not there: the dataset's own error, naming the fix
        perf.main(["--device", "cpu", "--preset", "imagenetlt64", "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert "--preset imagenetlt64:" in err and "Traceback" not in err


@pytest.mark.parametrize("flag", ["--rounds", "--eval-per-class"])
def test_a_count_below_one_is_a_usage_error_naming_the_flag(capsys, flag):
    with pytest.raises(SystemExit) as info:
        perf.main(["--skip", "train,sample", flag, "0"])
    assert info.value.code == 2 and f"{flag} 0 must be at least 1" in capsys.readouterr().err


def test_perf_busy_times_the_harness_quiet_and_beside_busy_processes(capsys):
    perf.main(["--device", "cpu", "--preset", "smoke", "--methods", "ddpm", "--rounds", "2", "--steps", "2",
               "--warmup-steps", "1", "--skip", "sample,eval", "--precision", "fp32", "--busy", "1",
               "--threads", "1"])
    out = capsys.readouterr().out
    assert "train beside 1 busy process" in out and "threads=1:" in out
    row = re.search(r"^ddpm\s+fp32\s+(\d+\.\d+) \[.*\]\s+(\d+\.\d+) \[.*\]\s+(\d+\.\d+)x\s+threads quiet 1 \(as set\), "
                    r"1 \(as set\); busy 1 \(as set\), 1 \(as set\)$", out, re.M)
    assert row, out
    assert float(row.group(1)) > 0 and float(row.group(2)) > 0 and float(row.group(3)) > 0


def test_busy_processes_spin_inside_the_block_and_are_gone_after(monkeypatch):
    from benchmark.devtools import perf_busy

    monkeypatch.setattr(perf_busy, "SETTLE_S", 0.0)
    started = []
    real = perf_busy.subprocess.Popen
    monkeypatch.setattr(perf_busy.subprocess, "Popen", lambda *a, **k: started.append(real(*a, **k)) or started[-1])
    with perf_busy.busy_processes(2):
        assert len(started) == 2 and all(p.poll() is None for p in started)
    assert all(p.poll() is not None for p in started)


@pytest.mark.parametrize("argv, says", [(["--busy", "-1"], "--busy -1 must be 0 or more"),
                                        (["--threads", "0"], "--threads: threads='0' is neither")])
def test_bad_busy_or_threads_is_a_usage_error(capsys, argv, says):
    with pytest.raises(SystemExit) as info:
        perf.main(["--skip", "train,sample,eval"] + argv)
    assert info.value.code == 2 and says in capsys.readouterr().err


def test_rows_memory_traces_the_metric_rows_and_leaves_the_modules_as_they_were(capsys):
    from benchmark.devtools import rows_memory
    from benchmark.eval import fidkid, metrics

    before = (metrics.knn_slices, metrics.slice_rows, fidkid.mmd2_slices)
    rows_memory.main(["--classes", "6", "--per-class", "40", "--dim", "16", "--kid-subsets", "3"])
    out = capsys.readouterr().out
    assert re.search(r"^inputs \d+ MiB; peak \d+ MiB, -?\d+ MiB above the inputs$", out, re.M), out
    assert "compute_rows" in out
    assert (metrics.knn_slices, metrics.slice_rows, fidkid.mmd2_slices) == before
