"""Time of the mixture's opinion (`mixture_margins`: 5 folds, per-class Gaussian mixtures of 1-3
components chosen by BIC) against the number of rows; the data of forest_time.py (two Gaussian
classes in 20 features, 10% of the labels flipped). Above MIXTURE_MAX_ROWS (100,000) each fold's
mixtures are fitted on 100,000 rows, so the fitting stops growing; every row is still scored.

usage: OMP_NUM_THREADS=1 python benchmarks/results/s8_mixture/mixture_time.py [N ...]   (PYTHONPATH=.)
"""

import importlib.util
import sys
from pathlib import Path

from lightning_dv.methods.aum.mixture import mixture_margins

_spec = importlib.util.spec_from_file_location(
    "forest_time", Path(__file__).parents[1] / "s7_forest" / "forest_time.py"
)
forest_time = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(forest_time)

if __name__ == "__main__":
    forest_time.time_margins(
        mixture_margins, [int(float(n)) for n in sys.argv[1:]] or [1_000, 10_000, 100_000, 1_000_000]
    )
