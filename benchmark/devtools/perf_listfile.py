"""Time and memory of loading a ``listfile:`` dataset: first load (decoding) and the cached load.

    python -m benchmark.devtools.perf_listfile --images 100000 --size 36 --resolution 32

Writes a synthetic list of small PNGs (``--classes`` classes, an exp long tail) into a temporary
folder, loads it twice through ``get_source`` in fresh processes (so each figure has its own
peak RSS), prints wall time and peak RSS of both, and deletes the folder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.devtools.machine import cpu_name


def write_dataset(root: Path, *, images: int, classes: int, size: int, seed: int = 0) -> Path:
    """``images`` PNGs of size x size (smooth colour noise) in class folders; returns the list file."""
    weights = 0.01 ** (np.arange(classes) / max(1, classes - 1))
    counts = np.maximum(2, np.floor(images * weights / weights.sum())).astype(int)  # >= 2: one is held out
    counts[0] += images - counts.sum()
    labels = np.repeat(np.arange(classes), counts)
    rng = np.random.RandomState(seed)
    base = rng.randint(0, 256, (64, size // 4 + 1, size // 4 + 1, 3), dtype=np.uint8)

    def save(i: int) -> str:
        c = int(labels[i])
        img = Image.fromarray(base[i % 64]).resize((size, size), Image.BILINEAR).rotate(i % 360)
        rel = f"train/c{c:04d}/{i:07d}.png"
        img.save(root / rel)
        return f"{rel} {c}"

    for c in range(classes):
        (root / "train" / f"c{c:04d}").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        lines = list(pool.map(save, range(images)))
    lst = root / "train.txt"
    lst.write_text("\n".join(lines) + "\n")
    return lst


def _load(lst: str, cache: str, resolution: int) -> None:
    """Child process: one load, then print seconds and peak RSS as JSON."""
    t0 = time.perf_counter()
    from benchmark.data import get_source

    t_import = time.perf_counter() - t0
    t1 = time.perf_counter()
    src = get_source(f"listfile:{lst}", data_root=cache, resolution=resolution)
    seconds = time.perf_counter() - t1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    nbytes = src.train.images.numel() + src.test.images.numel()
    print(json.dumps({"seconds": seconds, "import_s": t_import, "peak_rss_mib": rss, "array_mib": nbytes / 2**20,
                      "shape": list(src.train.images.shape)}))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--size", type=int, default=36, help="side of the PNGs written")
    p.add_argument("--resolution", type=int, default=32, help="data.resolution of the load")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ltgen-listfile-", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        lst = write_dataset(tmp, images=args.images, classes=args.classes, size=args.size)
        written = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in (tmp / "train").rglob("*.png")) / 2**20
        print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); {args.images} PNGs {args.size}x{args.size} "
              f"({disk:.0f} MiB) in {args.classes} classes written in {written:.1f} s")  # fmt: skip
        call = f"_load({str(lst)!r}, {str(tmp / 'cache')!r}, {args.resolution})"
        code = f"from benchmark.devtools.perf_listfile import _load; {call}"
        for label in ("first load (decode + write cache)", "second load (cache)"):
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if done.returncode:
                sys.stderr.write(done.stderr)
                return done.returncode
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{label}: {r['seconds']:.2f} s (+ {r['import_s']:.2f} s imports), peak RSS {r['peak_rss_mib']:.0f} MiB, "
                  f"arrays {r['array_mib']:.0f} MiB, train {r['shape']}")  # fmt: skip
        cache = sum(f.stat().st_size for f in (tmp / "cache").rglob("*.npz")) / 2**20
        print(f"cache file: {cache:.0f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
