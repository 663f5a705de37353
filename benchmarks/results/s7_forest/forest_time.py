"""Time of the forest's opinion (`forest_margins`, 300 trees, one job) against the number of rows.

Two Gaussian classes in 20 features, 10% of the labels flipped. Above FOREST_MAX_ROWS (100,000)
each tree draws 100,000 rows, so a tree's training stops growing; the out-of-bag prediction still
visits every row once per tree that left it out.

usage: OMP_NUM_THREADS=1 python benchmarks/results/s7_forest/forest_time.py [N ...]   (PYTHONPATH=.)
"""

import sys
import time

import numpy as np

from lightning_dv.methods.aum.forest import forest_margins


def time_margins(margins_fn, sizes) -> None:
    """Print the seconds ``margins_fn(x, y, seed=0)`` takes at each size (shared with s8_mixture/mixture_time.py)."""
    for n in sizes:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 2, n)
        x = (rng.normal(size=(n, 20)) + 0.5 * y[:, None]).astype(np.float32)
        flip = rng.random(n) < 0.1
        y = np.where(flip, 1 - y, y)
        start = time.perf_counter()
        margins = margins_fn(x, y, seed=0)
        seconds = time.perf_counter() - start
        auc = float(np.mean(margins[flip][:, None] < margins[~flip][None, :2000]))
        print(
            f"N={n:>9,}: {seconds:7.1f} s, {seconds / n * 1e6:6.1f} us per row, flipped rows below clean (AUROC on a sample) {auc:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    time_margins(forest_margins, [int(float(n)) for n in sys.argv[1:]] or [1_000, 10_000, 100_000, 1_000_000])
