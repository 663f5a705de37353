"""Read of collect_views.py (session 8): `aum_val` (`val`) and AUM (`a10`) plus each view's margin,
alone, in place of the kept forest (f1) or beside it; F1 / AUROC as an_refit.py.

usage: python an_views.py VA.pkl VB.pkl  (or SA.pkl SB.pkl: collect_svm.py)   (run from the worktree root; also reads /tmp/s7/{A,B,GA,GB}.pkl)
"""

import pickle
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, "benchmarks/results/s8_refit/exploration")
from an_refit import EIGHT, OUTSIDE, cal, col, unit  # noqa: E402

from lightning_dv.metrics import detection_auroc, kmeans_f1  # noqa: E402

if __name__ == "__main__":
    rec, grid, res = {}, {}, {}
    for p in ("/tmp/s7/A.pkl", "/tmp/s7/B.pkl"):
        rec.update(pickle.load(open(p, "rb")))
    for p in ("/tmp/s7/GA.pkl", "/tmp/s7/GB.pkl"):
        grid.update(pickle.load(open(p, "rb")))
    for p in sys.argv[1:]:
        res.update(pickle.load(open(p, "rb")))
    sc = defaultdict(lambda: defaultdict(dict))
    for key, g in res.items():
        r = rec[key]
        d, rate, seed = key.split("|")
        f1 = grid[key]["margins"][(1.0, 3)]
        views = dict(g["out"], f1=f1)
        cands = {}
        for b, am in (
            ("val", np.nanmean(r["m"][: int(r["window"])], 0)),
            ("a10", np.nanmean(r["m"][:10], 0)),
        ):
            for n, o in views.items():
                if b == "val":
                    cands[n] = cal(o)
                for w in (0.5, 1.0):
                    cands[f"{b}+{w}{n}"] = cal(unit(am) + w * unit(o))
                if n != "f1":
                    for w in (0.25, 0.5):
                        cands[f"{b}+0.5f1+{w}{n}"] = cal(unit(am) + 0.5 * unit(f1) + w * unit(o))
            if {"pca", "knn"} <= set(views):
                cands[f"{b}+0.5f1+0.5pca+0.5knn"] = cal(
                    unit(am) + 0.5 * unit(f1) + 0.5 * unit(views["pca"]) + 0.5 * unit(views["knn"])
                )
        for n, v in cands.items():
            sc[n][rate][(d, seed)] = (kmeans_f1(v, r["noisy"]), detection_auroc(v, r["noisy"]))
    print(f"{len(res)} splits; cells: F1 / AUROC, 10% 8 sets | 10% outside | 20% 8 sets | 20% outside")
    for n in sc:
        print(
            f"{n:24s}",
            " | ".join(
                "{:.3f} / {:.3f}".format(*col(sc, n, rate, sets))
                for rate in ("0.1", "0.2")
                for sets in (EIGHT, OUTSIDE)
            ),
        )
    show = ["val+0.5f1"] + [f"val+0.5f1+0.5{n}" for n in sorted(views) if n != "f1"]
    for rate in ("0.1", "0.2"):
        print("per set, rate", rate, show)
        for ds in EIGHT + OUTSIDE:
            print(f"{ds:15s}", "  ".join("{:.3f}/{:.3f}".format(*col(sc, n, rate, (ds,))) for n in show))
