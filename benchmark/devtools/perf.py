"""Throughput of the engine, against a plain reference loop and against the bare model (issue 7).

    python -m benchmark.devtools.perf --size small --resolution 32 --batch 64 --device cpu

One run prints, for one backbone size, resolution, batch and device:

* train: images/s of the harness loop (``benchmark.engine.trainer.train``, what a grid cell pays) for
  ddpm and cbdm; of a reference loop written the straightforward way (fp32, DataLoader over a
  TensorDataset with shuffle, CBDM's two evaluations as two forward passes, EMA by a state_dict
  copy loop, ``.item()`` every step); of the bare model's forward+backward+Adam step on one
  fixed batch (the limit: for cbdm one forward over the doubled batch); the ratios; peak memory;
* sample: images/s of DDPM-1000 ancestral and DDIM-50, both with guidance (cond + uncond);
* eval: seconds of the fused k-NN pass against the k-NN lower bound (3 distance passes, each
  distance formed once, FLOP at the fp32 GEMM rate measured in the same run; the every-ordered-pair
  bound beside it), of one overall pass against its own bound (that plus FID's covariances and KID's
  kernels, float64 FLOP at numpy's float64 GEMM rate measured in the run), and of every
  per-class + group metric row against one overall pass, on synthetic features (rounds in alternating
  order, the ratio the median of per-round ratios, as for training); then the diversity rows
  (Vendi, in-manifold Vendi, memorisation in features and pixels) against a synthetic long-tailed
  training set (IR 100), as a fraction of the metric rows' time.

The training arms (``benchmark.devtools.perf_loops``) run in rounds, in alternating order, each after its
own untimed warm-up steps; a figure is the median over rounds and a ratio the median of per-round
ratios, so drift on a shared machine hits all arms alike.  Every batch is conditional (``--label-drop 0``) unless
asked otherwise, so CBDM always pays its regulariser.  A yardstick, not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmark.core.config import MODEL_SIZES, Config, TrainConfig
from benchmark.core.device import bf16_support, resolve_device, resolve_precision
from benchmark.core.errors import BenchmarkError
from benchmark.core.names import ALL, GROUPS
from benchmark.core.presets import get_preset
from benchmark.core.threads import Decision, measure, parse_threads, use_threads
from benchmark.data import build_dataset
from benchmark.devtools.machine import cpu_name
from benchmark.devtools.perf_busy import busy_vs_quiet, header, report
from benchmark.devtools.perf_loops import (
    METHODS,
    cpu_gemm_tflops,
    fake_dataset,
    fid_kid_flops,
    gemm_tflops,
    measure_training,
    numpy_gemm_tflops,
    peak_mib,
    peak_start,
    sync,
    train_flops_per_image,
)
from benchmark.engine.backbone import build_unet, count_parameters
from benchmark.engine.diffusion import GaussianDiffusion
from benchmark.engine.sampling import balanced_labels, sample_images, sample_seeds
from benchmark.eval.fidkid import clear_reference_cache
from benchmark.eval.knn import knn_flops, knn_metrics
from benchmark.eval.metrics import compute_rows

BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}  # dense, per GPU

# ---------------------------------------------------------------- sampling and evaluation


class _Stop(Exception):
    pass


class _StopAfter(torch.nn.Module):
    """Wraps the model: stamps the start of every forward and stops the sampler before call k+1."""

    def __init__(self, model: torch.nn.Module, k: int, device: torch.device) -> None:
        super().__init__()
        self.model, self.k, self.device, self.stamps = model, k, device, []
        self.in_channels, self.resolution, self.num_classes = model.in_channels, model.resolution, model.num_classes

    def forward(self, *args, **kwargs):
        sync(self.device)
        self.stamps.append(time.perf_counter())
        if len(self.stamps) > self.k:
            raise _Stop
        return self.model(*args, **kwargs)


def sample_rate(model, diffusion, *, sampler: str, steps: int, n: int, guidance: float, device,
                precision: str = "fp32", timed_steps: int | None = None) -> float:
    """images/s of ``sample_images``; with ``timed_steps`` only that many steps are run and the
    full count is extrapolated from their mean (setup + steps x mean step)."""
    labels = balanced_labels(model.num_classes, -(-n // model.num_classes))[:n]
    kw = dict(labels=labels, seeds=sample_seeds(0, n), sampler=sampler, steps=steps, guidance=guidance,
              batch_size=n, device=device, precision=precision)
    sample_images(model, diffusion, **{**kw, "sampler": "ddim", "steps": 2})  # warm-up at the same shape
    sync(device)
    t0 = time.perf_counter()
    if timed_steps:
        wrapped = _StopAfter(model, timed_steps, device)
        try:
            sample_images(wrapped, diffusion, **kw)
        except _Stop:
            pass
        s = wrapped.stamps
        total = (s[0] - t0) + steps * (s[-1] - s[0]) / timed_steps
    else:
        sample_images(model, diffusion, **kw)
        sync(device)
        total = time.perf_counter() - t0
    return n / total


def _long_tailed_train(centres: np.ndarray, per_class: int, rng: np.random.Generator, imbalance: float = 0.01):
    """Synthetic training set for the memorisation rows: exponential profile from ``per_class`` down to
    ``imbalance * per_class`` (at least 1), features around the class centres, uint8 3x32x32 pixels."""
    c = len(centres)
    counts = [max(1, round(per_class * imbalance ** (i / max(c - 1, 1)))) for i in range(c)]
    labels = np.repeat(np.arange(c), counts)
    feats = rng.normal(size=(len(labels), centres.shape[1]))
    feats += centres[labels]
    return feats, labels, rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8)


def diversity_seconds(gen, gen_labels, ref, ref_labels, train, train_labels, gen_pixels, train_pixels, *,
                      groups: list[str], device: torch.device) -> tuple[float, int]:
    """Wall seconds and row count of what ``eval.diversity`` adds to a cell's evaluation."""
    from types import SimpleNamespace

    from benchmark.eval.evaluate import _diversity_rows

    dataset = SimpleNamespace(groups=groups, num_classes=len(groups))
    sync(device)
    t0 = time.perf_counter()
    frame, _, _ = _diversity_rows({"features": gen}, gen_labels, gen_pixels, {"features": ref}, ref_labels,
                                  {"features": train}, train_labels, train_pixels, dataset=dataset, k=3, seed=0,
                                  space_id="synthetic", extra_note="", device=device)  # fmt: skip
    sync(device)
    return time.perf_counter() - t0, len(frame)


def eval_seconds(*, num_classes: int, per_class: int, dim: int, kid_subsets: int, device: torch.device,
                 rounds: int = 1, diversity: bool = True) -> dict:
    """Seconds of the k-NN pass alone, of one overall pass and of overall + groups + every class, on
    synthetic class-clustered features (float64 like the cached features the harness scores), per round.

    The two passes alternate in order from round to round (drift on a shared machine hits both alike)
    and both start cold: the reference statistics kept between calls (``benchmark.eval.fidkid``) are
    cleared before each, so the full pass pays for its own reference covariances.  ``diversity``: each
    round then times the diversity rows (``diversity_seconds``) on the same features."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(num_classes), per_class)
    centres = rng.normal(size=(num_classes, dim))
    gen, ref = rng.normal(size=(len(labels), dim)), rng.normal(size=(len(labels), dim))
    for c in range(num_classes):  # in place: no second copy of 50k x 2048 float64 features
        gen[c * per_class : (c + 1) * per_class] += centres[c]
        ref[c * per_class : (c + 1) * per_class] += centres[c]
    groups = [GROUPS[min(2, 3 * c // num_classes)] for c in range(num_classes)]
    passes = {"overall": dict(groups=[ALL] * num_classes, per_class=False), "full": dict(groups=groups)}
    out: dict = {"knn": [], "overall": [], "full": [], "diversity": []}
    if diversity:
        train, train_labels, train_pixels = _long_tailed_train(centres, per_class, rng)
        gen_pixels = rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8)
        out["train_n"] = len(train_labels)
    base = peak_start(device)
    out["inputs_mib"] = peak_mib(device, base)
    print(f"  eval inputs ready ({len(labels)} vs {len(labels)} x {dim}): peak so far {out['inputs_mib']:.0f} MiB", flush=True)
    for r in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        knn_metrics(gen, ref, k=3, dc_k=5, device=device)
        sync(device)
        out["knn"].append(time.perf_counter() - t0)
        phases = {"inputs": out.pop("inputs_mib", None), "k-NN pass": peak_mib(device, base)} if r == 0 else None
        _progress(r, "k-NN pass", out["knn"][-1], peak_mib(device, base))
        for name in (("overall", "full") if r % 2 == 0 else ("full", "overall")):
            clear_reference_cache()
            t0 = time.perf_counter()
            rows = compute_rows(gen, labels, ref, labels, kid_subsets=kid_subsets, device=device, **passes[name])
            out[name].append(time.perf_counter() - t0)
            if name == "full":
                out["rows"] = len(rows)
            _progress(r, "overall pass" if name == "overall" else "all metric rows", out[name][-1], peak_mib(device, base))
        if phases is not None:
            phases["metric rows"] = peak_mib(device, base)
        if diversity:
            seconds, out["diversity_rows"] = diversity_seconds(gen, labels, ref, labels, train, train_labels,
                                                               gen_pixels, train_pixels, groups=groups, device=device)
            out["diversity"].append(seconds)
            _progress(r, "diversity rows", seconds, peak_mib(device, base))
            if phases is not None:
                phases["diversity rows"] = peak_mib(device, base)
        if phases is not None:
            out["phases"] = phases
    clear_reference_cache()
    out["ratio"] = [f / o for f, o in zip(out["full"], out["overall"])]
    return dict(out, n=len(labels), peak_mib=peak_mib(device, base))


def _progress(r: int, phase: str, seconds: float, peak: float) -> None:
    """One line as each phase ends, so a run stopped early (a time limit) still says what it measured."""
    print(f"  eval round {r + 1}: {phase} {seconds:.1f} s, peak so far {peak:.0f} MiB", flush=True)


# ---------------------------------------------------------------- the report


def _environment(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = cpu_name()
    try:
        # --dirty: figures from a tree with uncommitted changes say so
        rev = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        rev = "?"
    return (f"torch {torch.__version__} (cuda {torch.version.cuda}), python {platform.python_version()}, "
            f"device {device} ({name}), {os.cpu_count()} cpus, torch threads {torch.get_num_threads()} "
            f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, OPENBLAS_NUM_THREADS="
            f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}), git {rev}")


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):8.1f} [{min(xs):.1f}-{max(xs):.1f}]"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=sorted(MODEL_SIZES))
    p.add_argument("--preset", default=None,
                   help="take the model, batch, memory format, resolution, channels and classes of this preset "
                        "(e.g. demo; its dataset must be readable) instead of --size/--resolution/--channels/"
                        "--classes/--batch/--channels-last")
    p.add_argument("--data-root", default=None, help="where the preset's dataset lies (its data.data_root)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", default="auto",
                   help="CPU threads: auto (the cores free now, as a grid cell's stage decides) or N")
    p.add_argument("--busy", type=int, default=0,
                   help="time the harness arm quiet and beside N busy processes, alternating, instead of the three "
                        "arms; prints busy/quiet (threads decided before each timing)")
    p.add_argument("--methods", default="ddpm,cbdm", help=f"comma list from {', '.join(METHODS)}")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of (harness, reference, bare) and of the two eval passes, alternating order")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per arm and round")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps per arm and round (divides --steps)")
    p.add_argument("--label-drop", type=float, default=0.0, help="unconditional-batch probability (0: all conditional)")
    p.add_argument("--channels-last", choices=("default", "on", "off"), default="default",
                   help="harness and bare model memory format (default: TrainConfig's)")
    p.add_argument("--precision", choices=("both", "auto", "fp32", "bf16"), default="both",
                   help="harness, bare and sampling arms: both = fp32 and what auto resolves to on this device "
                        "(one arm when that is fp32); the reference loop is fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the harness and bare model")
    p.add_argument("--mkldnn", choices=("on", "off"), default="on",
                   help="CPU convolutions through oneDNN (torch's default) or torch's native im2col + GEMM, all arms")
    p.add_argument("--sample-n", type=int, default=None, help="images per sampling run, one batch (default: --batch)")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--ddpm-timed-steps", type=int, default=20,
                   help="time this many of DDPM's 1000 steps and extrapolate (0: run all of them)")
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--eval-classes", type=int, default=100)
    p.add_argument("--eval-per-class", type=int, default=20)
    p.add_argument("--eval-dim", type=int, default=2048)
    p.add_argument("--eval-kid-subsets", type=int, default=100)
    p.add_argument("--eval-diversity", choices=("on", "off"), default="on",
                   help="also time the diversity rows (Vendi, in-manifold Vendi, memorisation) on the same features")
    p.add_argument("--skip", default="", help="comma list of parts to skip: train, sample, eval")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak TFLOP/s to report a fraction of "
                   "(default on CUDA: the GPU's bf16 peak from a table; on the CPU: a measured fp32 GEMM rate)")
    args = p.parse_args(argv)
    try:
        parse_threads(args.threads)
    except BenchmarkError as e:
        p.error(f"--threads: {e}")
    if args.busy < 0:
        p.error(f"--busy {args.busy} must be 0 or more (busy processes beside the measurement)")
    for flag in ("rounds", "eval_classes", "eval_per_class", "eval_dim"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be at least 1 (a figure needs one "
                    "measured round of at least one image)")
    if "train" not in args.skip.split(",") and (args.steps < 1 or args.warmup_steps < 1
                                                 or args.steps % args.warmup_steps):
        fit = max(args.warmup_steps, 1) * max(1, round(args.steps / max(args.warmup_steps, 1)))
        p.error(f"--steps {args.steps} must be a positive multiple of --warmup-steps {args.warmup_steps} (the loops log "
                f"one row per warm-up window): e.g. --steps {fit}")
    methods = [m for m in args.methods.split(",") if m]
    if unknown := [m for m in methods if m not in METHODS]:
        p.error(f"no reference loop for {unknown}; choose from {', '.join(METHODS)}")
    if args.preset:  # resolved here so that an unknown name or unreadable data is a usage error, not a traceback
        try:
            preset = get_preset(args.preset)
            data_cfg = preset.data if args.data_root is None else replace(preset.data, data_root=args.data_root)
            args.preset_shape = preset, build_dataset(data_cfg)
        except BenchmarkError as e:
            p.error(f"--preset {args.preset}: {e.args[0] if e.args else e} (perf reads the preset's dataset only "
                    "for its shape: make it readable, or give --size/--resolution/--channels/--classes/--batch instead)")
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = args.mkldnn == "on"
    decision = measure(args.threads, resolve_device(args.device))
    try:
        with use_threads(decision.threads):
            _run(args, methods, argv, decision)
    finally:
        torch.backends.mkldnn.enabled = before


def _run(args: argparse.Namespace, methods: list[str], argv: list[str] | None, threads: Decision) -> None:
    skip = {s for s in args.skip.split(",") if s}

    device = resolve_device(args.device)
    support = bf16_support(device)
    auto = resolve_precision("auto", device)
    if args.precision == "both":
        precisions = ("fp32", auto) if auto != "fp32" else ("fp32",)
    else:
        precisions = (resolve_precision(args.precision, device),)
    model_cfg, channels_last = MODEL_SIZES[args.size], TrainConfig().channels_last
    if args.preset:
        preset, real = args.preset_shape
        model_cfg, channels_last = preset.model, preset.train.channels_last
        args.size, args.batch, args.resolution = f"of preset {args.preset}", preset.train.batch_size, real.resolution
        args.channels, args.classes = real.channels, real.num_classes
    tc = TrainConfig(batch_size=args.batch, warmup=10, label_drop=args.label_drop, compile=args.compile,
                     channels_last=channels_last if args.channels_last == "default" else args.channels_last == "on")
    cfg = Config(model=model_cfg, train=tc)
    data = fake_dataset(channels=args.channels, resolution=args.resolution, num_classes=args.classes)
    model = build_unet(cfg.model, channels=args.channels, resolution=args.resolution, num_classes=args.classes)
    print("$ python -m benchmark.devtools.perf " + shlex.join(sys.argv[1:] if argv is None else argv))
    print("# " + _environment(device) + f"; threads={args.threads}: {threads.threads} ({threads.how})")
    print(f"# bf16 on this device: {support.report}; precision auto resolves to {auto}; arms at "
          f"{', '.join(precisions)}")
    print(f"# model {args.size}: {count_parameters(model) / 1e6:.2f}M params, {args.channels}x{args.resolution}x"
          f"{args.resolution}, {args.classes} classes, batch {args.batch}; harness and bare: channels_last="
          f"{tc.channels_last}, compile={tc.compile}; reference: fp32, contiguous, eager"
          + ("" if device.type == "cuda" else f"; cpu convolutions: "
          f"{'oneDNN' if torch.backends.mkldnn.enabled else 'native (oneDNN off)'}"))

    if "train" not in skip and args.busy:
        header(busy=args.busy, rounds=args.rounds, steps=args.steps, warm=args.warmup_steps, threads=args.threads)
        for name in methods:
            m = busy_vs_quiet(cfg, data, name, busy=args.busy, rounds=args.rounds, steps=args.steps,
                              warm=args.warmup_steps, device=device, precision=precisions[-1], threads=args.threads)
            report(name, precisions[-1], m, busy=args.busy, threads=args.threads)
    elif "train" not in skip:
        flops = train_flops_per_image(cfg, data, device=device)
        peak = args.peak_tflops or next((v for k, v in BF16_PEAK_TFLOPS.items()
                                         if device.type == "cuda" and k in torch.cuda.get_device_name(device)), None)
        kind = "the given peak" if args.peak_tflops else "bf16 peak"
        if peak is None and device.type == "cpu":
            peak = cpu_gemm_tflops()
            kind = "this CPU's fp32 GEMM rate"
            print(f"\n# fp32 GEMM (2048x2048 @ 2048x2048, torch.mm) on this CPU: {peak:.3f} TFLOP/s, "
                  f"measured now; the practical compute limit the training rates are compared with")
        print(f"\ntrain: images/s, median [min-max] of {args.rounds} rounds x {args.steps} timed steps "
              f"(+{args.warmup_steps} warm-up) per arm; label_drop={args.label_drop}; "
              f"model forward+backward {flops / 1e9:.3f} GFLOP per image (cbdm: two per image)")
        print(f"{'method':<7}{'prec':<6}{'harness':>24}{'reference':>24}{'bare (limit)':>24}{'harness/ref':>13}"
              f"{'harness/bare':>14}{'harness TFLOP/s':>17}  peak MiB harness/ref/bare")
        for name in methods:
            m = measure_training(cfg, data, name, rounds=args.rounds, steps=args.steps, warm=args.warmup_steps,
                                 device=device, precisions=precisions)
            ips = m["ips"]
            for prec in precisions:
                h, b = f"harness {prec}", f"bare {prec}"
                tflops = statistics.median(ips[h]) * flops * (2 if name == "cbdm" else 1) / 1e12
                frac = f" ({100 * tflops / peak:.1f}% of {kind})" if peak else ""
                mem = "/".join(f"{m['peak'][a]:.0f}" for a in (h, "reference", b))
                print(f"{name:<7}{prec:<6}{_spread(ips[h]):>24}{_spread(ips['reference']):>24}{_spread(ips[b]):>24}"
                      f"{m['vs_ref'][prec]:>12.2f}x{m['vs_bare'][prec]:>13.2f}x{tflops:>17.3f}  {mem}{frac}")
            if "bf16_vs_fp32" in m:
                r = m["bf16_vs_fp32"]
                print(f"{name:<7}bf16/fp32 in the same rounds: harness {r['harness']:.2f}x, bare {r['bare']:.2f}x")
        if device.type != "cuda":
            print("  (peak memory on the CPU is the process's peak RSS so far, not per arm)")

    if "sample" not in skip:
        n = args.sample_n or args.batch
        torch.manual_seed(0)
        net = build_unet(cfg.model, channels=args.channels, resolution=args.resolution,
                         num_classes=args.classes).to(device)
        diffusion = GaussianDiffusion.from_config(cfg.diffusion)
        print(f"\nsample: {n} images in one batch, guidance w={args.guidance} (cond + uncond in one forward of "
              f"{2 * n}), random weights, eval mode; median [min-max] of {args.rounds} rounds, precisions "
              f"alternating")
        for sampler, steps, timed in (("ddpm", diffusion.T, args.ddpm_timed_steps), ("ddim", args.sample_steps, 0)):
            rates: dict[str, list[float]] = {p: [] for p in precisions}
            peaks = dict.fromkeys(precisions, 0.0)
            for r in range(args.rounds):
                for prec in (precisions if r % 2 == 0 else precisions[::-1]):
                    base = peak_start(device)
                    rates[prec].append(sample_rate(net, diffusion, sampler=sampler, steps=steps, n=n,
                                                   guidance=args.guidance, device=device, precision=prec,
                                                   timed_steps=timed if timed and timed < steps else None))
                    peaks[prec] = max(peaks[prec], peak_mib(device, base))
            how = f"EXTRAPOLATED from {timed} of {steps} steps" if timed and timed < steps else "measured"
            for prec in precisions:
                med = statistics.median(rates[prec])
                print(f"  {sampler}-{steps:<5} {prec:<5} {med:10.3f} images/s [{min(rates[prec]):.3f}-"
                      f"{max(rates[prec]):.3f}] ({med * steps:9.1f} image-steps/s, {how}; peak {peaks[prec]:.0f} MiB)")
            if len(precisions) == 2:
                ratio = statistics.median(b / a for a, b in zip(rates["fp32"], rates["bf16"]))
                print(f"  {sampler}-{steps:<5} bf16/fp32 in the same rounds: {ratio:.2f}x")

    if "eval" not in skip:
        e = eval_seconds(num_classes=args.eval_classes, per_class=args.eval_per_class, dim=args.eval_dim,
                         kid_subsets=args.eval_kid_subsets, device=device, rounds=args.rounds,
                         diversity=args.eval_diversity == "on")
        flops = knn_flops(e["n"], e["n"], args.eval_dim)
        rate = gemm_tflops(device)
        bound = flops / (rate * 1e12)
        knn, overall, full = (statistics.median(e[k]) for k in ("knn", "overall", "full"))
        print(f"\neval: {args.eval_classes} classes x {args.eval_per_class} images per class ({e['n']} generated vs "
              f"{e['n']} reference), features dim {args.eval_dim}, {args.eval_kid_subsets} KID subsets (synthetic "
              f"features; metrics on {device}); median [min-max] of {args.rounds} rounds, the overall and the "
              f"full pass alternating in order, both cold")
        ordered = knn_flops(e["n"], e["n"], args.eval_dim, ordered=True) / (rate * 1e12)
        print(f"  k-NN lower bound: 3 distance passes, each distance once = {flops:.3g} FLOP = {bound:.2f} s at the fp32 "
              f"GEMM rate measured now ({rate:.3f} TFLOP/s); every ordered pair: {ordered:.2f} s")
        print(f"  k-NN pass alone (precision, recall, density, coverage) {knn:8.2f} s = "
              f"{knn / bound:.2f}x the bound ({knn / ordered:.2f}x the ordered-pairs bound)")
        fk = fid_kid_flops(e["n"], e["n"], args.eval_dim, args.eval_kid_subsets, 1000)  # compute_rows' subset size
        rate64 = numpy_gemm_tflops()
        whole = bound + fk / (rate64 * 1e12)
        print(f"  overall pass lower bound: the k-NN bound + FID's and KID's float64 products ({fk:.3g} FLOP = "
              f"{fk / (rate64 * 1e12):.2f} s at numpy's float64 GEMM rate measured now, {rate64:.3f} TFLOP/s) = "
              f"{whole:.2f} s")
        print(f"  one overall pass (k-NN + FID, KID) {overall:8.2f} s = {overall / whole:.2f}x its bound "
              f"({overall / bound:.2f}x the k-NN bound alone) "
              f"[{min(e['overall']):.2f}-{max(e['overall']):.2f} s]; overall + 3 groups + {args.eval_classes} classes "
              f"({e['rows']} rows) {full:8.2f} s [{min(e['full']):.2f}-{max(e['full']):.2f} s] = "
              f"{statistics.median(e['ratio']):.2f}x the overall pass (median of the rounds' ratios "
              f"{', '.join(f'{x:.2f}' for x in e['ratio'])})")
        if e["diversity"]:
            div = statistics.median(e["diversity"])
            print(f"  diversity rows (Vendi, in-manifold Vendi, memorisation in features and 3x32x32 pixels; "
                  f"{e['diversity_rows']} rows; {e['train_n']} long-tailed training images, IR 100) {div:8.2f} s "
                  f"[{min(e['diversity']):.2f}-{max(e['diversity']):.2f} s]: metric rows + diversity rows = "
                  f"{(full + div) / full:.2f}x the metric rows alone")
        steps = ", ".join(f"{k} {v:.0f}" for k, v in e["phases"].items())
        print(f"  peak memory {e['peak_mib']:.0f} MiB ({'CUDA max allocated' if device.type == 'cuda' else 'process peak RSS'}"
              f"; the peak so far after each phase of the first round, MiB: {steps})")


if __name__ == "__main__":
    main()
