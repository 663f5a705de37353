"""Time of the mixture's opinion (`mixture_margins`: 5 folds, per-class Gaussian mixtures of 1-3
components chosen by BIC) against the number of rows; the data of forest_time.py (two Gaussian
classes in 20 features, 10% of the labels flipped). Above MIXTURE_MAX_ROWS (100,000) each fold's
mixtures are fitted on 100,000 rows, so the fitting stops growing; every row is still scored.

usage: OMP_NUM_THREADS=1 python benchmarks/results/s8_mixture/mixture_time.py [N ...]   (PYTHONPATH=.)
"""

import sys
import time

import numpy as np

from lightning_dv.methods.aum.mixture import mixture_margins

if __name__ == "__main__":
    sizes = [int(float(n)) for n in sys.argv[1:]] or [1_000, 10_000, 100_000, 1_000_000]
    for n in sizes:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 2, n)
        x = (rng.normal(size=(n, 20)) + 0.5 * y[:, None]).astype(np.float32)
        flip = rng.random(n) < 0.1
        y = np.where(flip, 1 - y, y)
        start = time.perf_counter()
        margins = mixture_margins(x, y, seed=0)
        seconds = time.perf_counter() - start
        auc = float(np.mean(margins[flip][:, None] < margins[~flip][None, :2000]))
        print(
            f"N={n:>9,}: {seconds:7.1f} s, {seconds / n * 1e6:6.1f} us per row, flipped rows below clean (AUROC on a sample) {auc:.3f}",
            flush=True,
        )
