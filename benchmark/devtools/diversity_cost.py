"""What the diversity and memorisation rows add to the evaluation of one finished cell.

    python -m benchmark.devtools.diversity_cost RESULTS_DIR [--cell ddpm/seed0] [--rounds 3]

Re-evaluates the cell's stored ``samples.npz`` with its own ``config.json``, alternating rounds
with ``eval.diversity`` off and on.  Each round starts from a copy of the results folder's cache
without the features of the samples and of the training images, so both arms pay for what a
fresh cell pays (feature extraction of its samples, every metric row, the downstream
classifiers) and the diversity arm also extracts the training images' features, which a real
run does once per split and then shares between cells.  A second ratio excludes that one-time
extraction.  Prints medians with [min-max] of the wall times and of the ratio on-time / off-time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmark.core.config import Config, from_dict
from benchmark.data import build_dataset
from benchmark.devtools.machine import cpu_name
from benchmark.eval.evaluate import evaluate_set
from benchmark.eval.features import content_hash, extract_cached, feature_cache_path, get_feature_space


def _fresh_cache(base: Path, drop: list[str], into: Path) -> Path:
    cache = into / "cache"
    shutil.copytree(base, cache)
    for path in (cache / "features").glob("*.npz"):
        if any(path.name.startswith(d) for d in drop):
            path.unlink()
    return cache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--cell", default=None, help="METHOD/seedK (default: the first cell with samples)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    cells = sorted(p.parent for p in (args.results / "runs").glob("*/*/*/seed*/samples.npz"))
    if args.cell:
        cells = [c for c in cells if str(c).endswith(args.cell)]
    if not cells:
        raise SystemExit(f"no cell with samples.npz under {args.results / 'runs'}")
    folder = cells[0]
    cfg = from_dict(Config, json.loads((folder / "config.json").read_text())["config"])
    with np.load(folder / "samples.npz") as z:
        images, labels = torch.from_numpy(z["images"]), torch.from_numpy(z["labels"])
    dataset = build_dataset(cfg.data)
    device = torch.device("cpu")
    base = args.results / "cache"
    space = get_feature_space(cfg.eval.feature_space, dataset=dataset, cfg=cfg.eval, cache_dir=base, device=device)
    def feature_file(imgs) -> str:
        return feature_cache_path(space, content_hash(imgs), base).stem

    gen_file, train_file = feature_file(images), feature_file(dataset.train_images)
    times = {"off": [], "on": [], "train_features": []}
    for r in range(args.rounds):
        for arm in (("off", "on") if r % 2 == 0 else ("on", "off")):
            with tempfile.TemporaryDirectory() as tmp:
                cache = _fresh_cache(base, [gen_file, train_file], Path(tmp))
                if arm == "on":  # time the one-time training-set extraction apart
                    t0 = time.perf_counter()
                    extract_cached(space, dataset.train_images, cache_dir=cache)
                    times["train_features"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                evaluate_set(images, labels, dataset=dataset, cfg=replace(cfg.eval, diversity=arm == "on"),
                             cache_dir=cache, device=device, seed=0, progress=False)
                times[arm].append(time.perf_counter() - t0)
    off, on, tf = (np.array(times[k]) for k in ("off", "on", "train_features"))

    def fmt(x: np.ndarray) -> str:
        return f"{np.median(x):.2f} [{x.min():.2f}-{x.max():.2f}]"

    print(f"cell {folder} | {cpu_name()} | torch threads {torch.get_num_threads()}")
    print(f"evaluation, diversity off (s): {fmt(off)}")
    print(f"evaluation, diversity on  (s): {fmt(on)}   (training features cached, as for every cell after the first)")
    print(f"training-set features, once per split (s): {fmt(tf)}")
    print(f"ratio on / off, per round: {fmt(on / off)}")
    print(f"ratio (on + training features) / off, per round: {fmt((on + tf) / off)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
