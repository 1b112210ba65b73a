"""bf16 against fp32 on the demo configuration: training loss and the features of sampled images.

    python -m benchmark.devtools.parity --steps 200 --n-per-class 20

* train: the demo's ddpm cell (same data, seed, batches, t and noise) for ``--steps`` steps in
  fp32 and in bf16; prints both logged loss curves' final windows, their difference, and the
  yardstick it is judged by: the spread (std) of the fp32 loss over its last logged windows,
  i.e. how much the loss moves from one batch draw to the next.  bf16 is as good as fp32 for
  training when its difference is well inside that spread.
* sample: the fp32 model's images for the same labels and per-image seeds, sampled in fp32 and
  in bf16 (the demo's DDIM-20, guidance 1.0); their evaluator features (the demo's classifier
  space) are compared pairwise: mean ||f_bf16(i) - f_fp32(i)|| against the spread of real
  images, the mean distance from a real reference image to its nearest other real image of the
  same class (the scale of the k-NN balls behind precision, recall, density and coverage).

Reduced sizes are fine: the comparison is paired, the same images in both precisions.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmark.core.device import bf16_support, resolve_precision
from benchmark.core.presets import get_preset
from benchmark.data import build_dataset
from benchmark.engine.diffusion import GaussianDiffusion
from benchmark.engine.sampling import balanced_labels, sample_images, sample_seeds
from benchmark.engine.trainer import load_model, train
from benchmark.eval.evaluate import reference_set
from benchmark.eval.features import get_feature_space
from methods import get_method


def _losses(run_dir: Path) -> list[float]:
    with open(run_dir / "train_log.csv") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def _nearest_real(feats: np.ndarray, labels: np.ndarray) -> float:
    """Mean distance from each real image to its nearest other real image of the same class."""
    out = []
    for c in np.unique(labels):
        f = torch.from_numpy(feats[labels == c]).float()
        d = torch.cdist(f, f)
        d.fill_diagonal_(float("inf"))
        out.append(d.min(1).values)
    return float(torch.cat(out).mean())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="training steps per precision")
    p.add_argument("--n-per-class", type=int, default=20, help="images per class sampled in each precision")
    p.add_argument("--ref-per-class", type=int, default=200, help="real reference images per class for the spread")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache", default=None, help="folder for the evaluator (default: a temporary one)")
    p.add_argument("--evaluator-per-class", type=int, default=None,
                   help="cap the evaluator's balanced training pool (default: the demo's, all of it)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    support = bf16_support(device)
    resolve_precision("bf16", device, key="precision")  # a clear error where bf16 cannot run at all
    cfg = get_preset("demo")
    if args.evaluator_per_class:
        cfg = replace(cfg, eval=replace(cfg.eval, classifier_per_class=args.evaluator_per_class))
    cfg = replace(cfg, train=replace(cfg.train, steps=args.steps, log_every=max(1, args.steps // 20),
                                     ckpt_every=args.steps))
    dataset = build_dataset(cfg.data)
    print(f"# demo configuration, ddpm seed 0, {args.steps} steps per precision, device {device}: {support.report}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        losses, models = {}, {}
        for prec in ("fp32", "bf16"):
            pcfg = replace(cfg, train=replace(cfg.train, precision=prec))
            method = get_method("ddpm", class_counts=dataset.counts, options=pcfg.method)
            models[prec] = train(cfg=pcfg, dataset=dataset, method=method, run_dir=tmp / prec, seed=0,
                                 device=device, progress=False)
            losses[prec] = _losses(tmp / prec)
        k = max(3, len(losses["fp32"]) // 4)  # the last quarter of the logged windows
        last = {p: statistics.mean(v[-k:]) for p, v in losses.items()}
        spread = statistics.stdev(losses["fp32"][-k:])
        worst = max(abs(a - b) / a for a, b in zip(losses["fp32"], losses["bf16"]))
        print(f"train: mean loss of the last {k} logged windows: fp32 {last['fp32']:.5f}, bf16 {last['bf16']:.5f}; "
              f"difference {last['bf16'] - last['fp32']:+.5f} = {abs(last['bf16'] - last['fp32']) / spread:.2f}x the "
              f"fp32 loss's window-to-window spread ({spread:.5f}); largest per-window relative difference "
              f"{100 * worst:.2f}%")

        model, _ = load_model(models["fp32"], device)
        diffusion = GaussianDiffusion.from_config(cfg.diffusion)
        labels = balanced_labels(dataset.num_classes, args.n_per_class)
        kw = dict(labels=labels, seeds=sample_seeds(0, len(labels)), sampler=cfg.sample.sampler, steps=cfg.sample.steps,
                  eta=cfg.sample.eta, guidance=cfg.sample.guidance[0], batch_size=cfg.sample.batch_size, device=device)
        images = {p: sample_images(model, diffusion, precision=p, **kw) for p in ("fp32", "bf16")}
        space = get_feature_space(cfg.eval.feature_space, dataset=dataset, cfg=cfg.eval,
                                  cache_dir=Path(args.cache) if args.cache else tmp / "cache", device=device)
        feats = {p: space.extract(v)["features"] for p, v in images.items()}
        ref_images, ref_labels = reference_set(dataset, cfg.eval.reference)
        keep = np.concatenate([np.flatnonzero(ref_labels.numpy() == c)[: args.ref_per_class]
                               for c in range(dataset.num_classes)])
        ref = space.extract(ref_images[keep])["features"]
        pair = np.linalg.norm(feats["bf16"] - feats["fp32"], axis=1)
        floor = _nearest_real(ref, ref_labels.numpy()[keep])
        grey = (images["bf16"].int() - images["fp32"].int()).abs().float().mean().item()
        same = float((images["bf16"] == images["fp32"]).all(dim=(1, 2, 3)).float().mean())
        print(f"sample: {len(labels)} images ({args.n_per_class} per class), {cfg.sample.sampler}-{cfg.sample.steps} "
              f"guidance {cfg.sample.guidance[0]:g}, fp32 model, same seeds: mean |bf16 - fp32| {grey:.3f} grey levels, "
              f"{100 * same:.1f}% of images identical")
        print(f"  features ({space.identity}): mean ||f_bf16 - f_fp32|| {pair.mean():.4f} (max {pair.max():.4f}) vs "
              f"the real-data spread {floor:.4f} (mean distance of a real image to its nearest real neighbour of the "
              f"same class, {args.ref_per_class} per class) = {pair.mean() / floor:.3f}x")


if __name__ == "__main__":
    main()
