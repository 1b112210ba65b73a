"""Where the metric rows' memory peak is set: resident memory per function, the k-NN pass left out.

    python -m benchmark.devtools.rows_memory --classes 100 --per-class 500 --dim 2048

Builds ``perf``'s synthetic features (float64, class-clustered, three groups), then runs
``benchmark.eval.metrics.compute_rows`` for every row (overall, groups, classes) while a thread reads
the process's resident set (``VmRSS``) every few milliseconds and charges it to the innermost traced
function running at that moment.  The resident set sees numpy's, BLAS's and torch's allocations alike
(``tracemalloc`` sees only Python's).  The k-NN pass is replaced by a stub: it is timed and its peak
measured by ``perf`` itself, and it takes most of the time at paper scale; what remains is the FID /
KID work and the slicing.  Prints the peak of each traced function in MiB, highest first.
"""

from __future__ import annotations

import argparse
import functools
import threading
import time

import numpy as np

from benchmark.core.names import GROUPS
from benchmark.devtools.machine import cpu_name
from benchmark.eval import fidkid, metrics
from benchmark.eval.knn import KnnMetrics

TRACED = {metrics: ("slice_statistics", "content_key", "_shared_kid", "_take", "slice_rows", "fid", "kid",
                    "class_mean_rows"),
          fidkid: ("mmd2_subsets", "mmd2_slices")}  # fmt: skip


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Tracer:
    """Peak resident memory per stack of traced functions (``compute_rows/slice_rows/fid``)."""

    def __init__(self, every: float = 0.003) -> None:
        self.stack, self.peaks, self.every = ["outside"], {}, every
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            where, now = "/".join(self.stack), rss_mib()
            self.peaks[where] = max(self.peaks.get(where, 0.0), now)
            time.sleep(self.every)

    def wrap(self, module, name: str) -> None:
        fn = getattr(module, name)

        @functools.wraps(fn)
        def traced(*args, **kwargs):
            self.stack.append(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.stack.pop()

        setattr(module, name, traced)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--kid-subsets", type=int, default=100)
    args = p.parse_args(argv)
    originals = [(m, name, getattr(m, name)) for m, names in TRACED.items() for name in names if hasattr(m, name)]
    originals.append((metrics, "knn_slices", metrics.knn_slices))
    tracer = Tracer()
    try:
        for module, name, _ in originals[:-1]:
            tracer.wrap(module, name)
        metrics.knn_slices = lambda gen, ref, slices, **kw: [KnnMetrics(1.0, 1.0, 1.0, 1.0)] * len(slices)
        _trace(args, tracer)
    finally:  # the modules as they were: a caller in the same process (a test) gets the real functions
        for module, name, fn in originals:
            setattr(module, name, fn)


def _trace(args: argparse.Namespace, tracer: Tracer) -> None:
    c, n, d = args.classes, args.per_class, args.dim
    rng = np.random.default_rng(0)  # perf's features: the same draws
    labels = np.repeat(np.arange(c), n)
    centres = rng.normal(size=(c, d))
    gen, ref = rng.normal(size=(len(labels), d)), rng.normal(size=(len(labels), d))
    for k in range(c):
        gen[k * n : (k + 1) * n] += centres[k]
        ref[k * n : (k + 1) * n] += centres[k]
    groups = [GROUPS[min(2, 3 * k // c)] for k in range(c)]
    time.sleep(0.05)
    inputs = rss_mib()
    tracer.stack[:] = ["compute_rows"]
    t0 = time.perf_counter()
    rows = metrics.compute_rows(gen, labels, ref, labels, groups=groups, kid_subsets=args.kid_subsets)
    seconds = time.perf_counter() - t0
    tracer.stack[:] = ["outside"]
    time.sleep(0.05)
    peak = max(tracer.peaks.values())
    print(f"# {cpu_name()}; {len(labels)} vs {len(labels)} features x {d} (float64), {len(rows)} rows "
          f"in {seconds:.1f} s, the k-NN pass left out")
    print(f"inputs {inputs:.0f} MiB; peak {peak:.0f} MiB, {peak - inputs:.0f} MiB above the inputs")
    for where, mib in sorted(tracer.peaks.items(), key=lambda kv: -kv[1]):
        print(f"{mib:8.0f}  {where}")


if __name__ == "__main__":
    main()
