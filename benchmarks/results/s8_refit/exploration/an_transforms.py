"""How the two margins are put on one scale before the sum (session 8): the kept MAD units against
rank-normal scores (Phi^-1 of the rank), a clipped MAD unit, and a per-signal logistic transform;
AUROC is where a transform could matter (F1 also shown); `aum_val` + the kept forest, selection seeds.

usage: python an_transforms.py   (run from the worktree root; reads /tmp/s7/{A,B,GA,GB}.pkl)
"""

import pickle
import sys
from collections import defaultdict

import numpy as np
from scipy.stats import norm, rankdata

sys.path.insert(0, "benchmarks/results/s8_refit/exploration")
from an_refit import EIGHT, OUTSIDE, cal, col, unit  # noqa: E402

from lightning_dv.metrics import detection_auroc, kmeans_f1  # noqa: E402


def rn(v):
    return norm.ppf((rankdata(v) - 0.5) / len(v))


if __name__ == "__main__":
    rec, grid = {}, {}
    for p in ("/tmp/s7/A.pkl", "/tmp/s7/B.pkl"):
        rec.update(pickle.load(open(p, "rb")))
    for p in ("/tmp/s7/GA.pkl", "/tmp/s7/GB.pkl"):
        grid.update(pickle.load(open(p, "rb")))
    sc = defaultdict(lambda: defaultdict(dict))
    for key, g in grid.items():
        r = rec[key]
        d, rate, seed = key.split("|")
        f, a = g["margins"][(1.0, 3)], np.nanmean(r["m"][: int(r["window"])], 0)
        ua, uf = unit(a), unit(f)
        cands = {
            "kept: a/s + 0.5 f/s": cal(ua + 0.5 * uf),
            "rank-normal sum 0.5": rn(a) + 0.5 * rn(f),
            "rank-normal sum 1": rn(a) + rn(f),
            "clip units at +-3, 0.5": cal(np.clip(ua, -3, 3) + 0.5 * np.clip(uf, -3, 3)),
            "clip units at +3 only, 0.5": cal(np.minimum(ua, 3) + 0.5 * np.minimum(uf, 3)),
            "tanh units, 0.5": cal(np.tanh(ua) + 0.5 * np.tanh(uf)),
            "min(ua, uf)": cal(np.minimum(ua, uf)),
            "a + 0.5 f, f as log-odds": cal(ua + 0.5 * unit(np.log((1 + f + 1e-3) / (1 - f + 1e-3)))),
        }
        for n, v in cands.items():
            sc[n][rate][(d, seed)] = (kmeans_f1(v, r["noisy"]), detection_auroc(v, r["noisy"]))
    for n in sc:
        print(
            f"{n:28s}",
            " | ".join(
                "{:.3f} / {:.3f}".format(*col(sc, n, rate, sets))
                for rate in ("0.1", "0.2")
                for sets in (EIGHT, OUTSIDE)
            ),
        )
