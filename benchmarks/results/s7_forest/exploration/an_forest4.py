"""Fourth read (session 7): with the kept trees (all features / leaves >= 3), forest weights 0.5 / 0.6 / 0.75 and the
logistic opinion added where its 5-fold accuracy is within 0.01 of the forest's out-of-bag accuracy.

usage: python an_forest4.py   (run from the worktree root; reads /tmp/s7/{A,B,GA,GB}.pkl)
"""

import importlib.util
import pickle
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, "benchmarks/results/s6_oof/exploration")
_spec = importlib.util.spec_from_file_location("an7", "benchmarks/results/s7_forest/exploration/an_forest.py")
an7 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(an7)
EIGHT, OUTSIDE, cal, col, unit, pmargin = an7.EIGHT, an7.OUTSIDE, an7.cal, an7.col, an7.unit, an7.pmargin
from lightning_dv.metrics import detection_auroc, kmeans_f1

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
    a = np.nanmean(r["m"][:10], 0)
    f = g["margins"][(1.0, 3)]
    y = r["y"]
    lg = pmargin(r["ops"]["logit"], y)
    acc = lambda p: float((p.argmax(1) == y).mean())
    a_lg = acc(r["ops"]["logit"])
    a_f = float((f > 0).mean())
    c = {}
    for w in (0.5, 0.6, 0.75):
        c[f"aumval+{w}f"] = cal(unit(av) + w * unit(f))
        c[f"aum+{w}f"] = cal(unit(a) + w * unit(f))
    wl = 0.5 if a_lg >= a_f - 0.01 else 0.0
    c["aumval+0.5f+logit_if"] = cal(unit(av) + 0.5 * unit(f) + wl * unit(lg))
    c["aum+0.5f+logit_if"] = cal(unit(a) + 0.5 * unit(f) + wl * unit(lg))
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
for n in ("aumval+0.5f", "aumval+0.5f+logit_if"):
    print(
        n,
        "gaussian",
        ["{:.3f}/{:.3f}".format(*col(sc, n, rate, ("gaussian",))) for rate in ("0.1", "0.2")],
        "circles",
        ["{:.3f}".format(col(sc, n, rate, ("circles",))[0]) for rate in ("0.1", "0.2")],
    )
