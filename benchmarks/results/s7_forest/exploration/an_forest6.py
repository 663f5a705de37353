"""Sixth read (session 7): AUM's gate tolerance re-read on the sum with the kept forest (session 5 chose 0.1 on AUM
alone as the largest tolerance not below the previous rule in any column).

usage: python an_forest6.py   (run from the worktree root; reads /tmp/s7/{A,B,GA,GB}.pkl)
"""

import importlib.util
import pickle
import sys
from collections import defaultdict

import numpy as np
import torch

from lightning_dv.methods.calibration import calibrate
from lightning_dv.metrics import detection_auroc, kmeans_f1

sys.path.insert(0, "benchmarks/results/s6_oof/exploration")
_spec = importlib.util.spec_from_file_location("an7", "benchmarks/results/s7_forest/exploration/an_forest.py")
an7 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(an7)
EIGHT, OUTSIDE, col, unit = an7.EIGHT, an7.OUTSIDE, an7.col, an7.unit
rec, grid = {}, {}
for p in ("/tmp/s7/A.pkl", "/tmp/s7/B.pkl"):
    rec.update(pickle.load(open(p, "rb")))
for p in ("/tmp/s7/GA.pkl", "/tmp/s7/GB.pkl"):
    grid.update(pickle.load(open(p, "rb")))
sc = defaultdict(lambda: defaultdict(dict))
for key, g in grid.items():
    r = rec[key]
    d, rate, seed = key.split("|")
    av = np.nanmean(r["m"][: int(r["window"])], 0)
    f = g["margins"][(1.0, 3)]
    raw = torch.as_tensor(unit(av) + 0.5 * unit(f), dtype=torch.float64)
    for tol in (0.0, 0.1, 0.2, 0.3, 0.5, 0.75):
        v = calibrate(raw, gate=0.0, gate_tolerance=tol).numpy()
        sc[f"tol {tol}"][rate][(d, seed)] = (kmeans_f1(v, r["noisy"]), detection_auroc(v, r["noisy"]))
for n in sc:
    print(
        n,
        " | ".join(
            "{:.3f} / {:.3f}".format(*col(sc, n, rate, sets))
            for rate in ("0.1", "0.2")
            for sets in (EIGHT, OUTSIDE)
        ),
    )
for n in ("tol 0.1", "tol 0.3", "tol 0.5"):
    print(
        n,
        "gaussian",
        ["{:.3f}".format(col(sc, n, rate, ("gaussian",))[0]) for rate in ("0.1", "0.2")],
        "overlap",
        ["{:.3f}".format(col(sc, n, rate, ("overlap",))[0]) for rate in ("0.1", "0.2")],
    )
