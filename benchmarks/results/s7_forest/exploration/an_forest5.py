"""Fifth read (session 7): a noise-aware forest weight: 1 instead of 0.5 where the 0.5-sum flags more than a
share of the rows (a step at 15%, or linear ramps), with the kept trees.

usage: python an_forest5.py   (run from the worktree root; reads /tmp/s7/{A,B,GA,GB}.pkl)
"""

import importlib.util
import pickle
import sys
from collections import defaultdict

import numpy as np
import torch

from lightning_dv.metrics import detection_auroc, kmeans_f1, two_means_split

sys.path.insert(0, "benchmarks/results/s6_oof/exploration")
_spec = importlib.util.spec_from_file_location("an7", "benchmarks/results/s7_forest/exploration/an_forest.py")
an7 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(an7)
EIGHT, OUTSIDE, cal, col, unit = an7.EIGHT, an7.OUTSIDE, an7.cal, an7.col, an7.unit

rec, grid = {}, {}
for p in ("/tmp/s7/A.pkl", "/tmp/s7/B.pkl"):
    rec.update(pickle.load(open(p, "rb")))
for p in ("/tmp/s7/GA.pkl", "/tmp/s7/GB.pkl"):
    grid.update(pickle.load(open(p, "rb")))
sc = defaultdict(lambda: defaultdict(dict))
share = defaultdict(list)
for key, g in grid.items():
    r = rec[key]
    d, rate, seed = key.split("|")
    av = np.nanmean(r["m"][: int(r["window"])], 0)
    f = g["margins"][(1.0, 3)]
    base = cal(unit(av) + 0.5 * unit(f))
    p_hat = float(two_means_split(torch.as_tensor(base)).numpy().mean())
    share[(d, rate)].append(p_hat)
    c = {"w0.5": base, "w1": cal(unit(av) + 1.0 * unit(f))}
    for lo, hi in ((0.10, 0.20), (0.12, 0.18), (0.08, 0.22)):
        w = 0.5 + 0.5 * float(np.clip((p_hat - lo) / (hi - lo), 0, 1))
        c[f"adapt {lo}-{hi}"] = cal(unit(av) + w * unit(f))
    c["step 0.15"] = c["w1"] if p_hat > 0.15 else base
    for n, v in c.items():
        sc[n][rate][(d, seed)] = (kmeans_f1(v, r["noisy"]), detection_auroc(v, r["noisy"]))
for n in sc:
    print(
        n,
        " | ".join(
            "{:.3f} / {:.3f}".format(*col(sc, n, rate, sets))
            for rate in ("0.1", "0.2")
            for sets in (EIGHT, OUTSIDE)
        ),
    )
for k, v in sorted(share.items()):
    print(k, round(np.mean(v), 3))
