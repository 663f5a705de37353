"""Fourth read (session 7): with the kept trees (all features / leaves >= 3), forest weights 0.5 / 0.6 / 0.75 and
the logistic opinion added where its 5-fold accuracy is within 0.01 of the forest's out-of-bag accuracy.

usage: python an_forest4.py A.pkl B.pkl -- GA.pkl GB.pkl   (run from the worktree root)
"""

import importlib.util
import pickle
import sys
from collections import defaultdict

import numpy as np

from lightning_dv.metrics import detection_auroc, kmeans_f1

sys.path.insert(0, "benchmarks/results/s6_oof/exploration")
_spec = importlib.util.spec_from_file_location("an7", "benchmarks/results/s7_forest/exploration/an_forest.py")
an7 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(an7)
EIGHT, OUTSIDE, cal, col, unit, pmargin = an7.EIGHT, an7.OUTSIDE, an7.cal, an7.col, an7.unit, an7.pmargin


def accuracy(proba, y):
    return float((proba.argmax(1) == y).mean())


def candidates(r, f):
    y = r["y"]
    av, a = np.nanmean(r["m"][: int(r["window"])], 0), np.nanmean(r["m"][:10], 0)
    lg = pmargin(r["ops"]["logit"], y)
    out = {}
    for w in (0.5, 0.6, 0.75):
        out[f"aumval+{w}f"] = cal(unit(av) + w * unit(f))
        out[f"aum+{w}f"] = cal(unit(a) + w * unit(f))
    w_lg = 0.5 if accuracy(r["ops"]["logit"], y) >= float((f > 0).mean()) - 0.01 else 0.0
    out["aumval+0.5f+logit_if"] = cal(unit(av) + 0.5 * unit(f) + w_lg * unit(lg))
    out["aum+0.5f+logit_if"] = cal(unit(a) + 0.5 * unit(f) + w_lg * unit(lg))
    return out


if __name__ == "__main__":
    cut = sys.argv.index("--")
    rec, grid = {}, {}
    for p in sys.argv[1:cut]:
        rec.update(pickle.load(open(p, "rb")))
    for p in sys.argv[cut + 1 :]:
        grid.update(pickle.load(open(p, "rb")))
    sc = defaultdict(lambda: defaultdict(dict))
    for key, g in grid.items():
        r = rec[key]
        d, rate, seed = key.split("|")
        for n, v in candidates(r, g["margins"][(1.0, 3)]).items():
            sc[n][rate][(d, seed)] = (kmeans_f1(v, r["noisy"]), detection_auroc(v, r["noisy"]))
    print(
        "| candidate | 10%: 8 sets | 10%: 3 outside | 20%: 8 sets | 20%: 3 outside |\n|---|---|---|---|---|"
    )
    for n in sc:
        cells = [
            "{:.3f} / {:.3f}".format(*col(sc, n, rate, sets))
            for rate in ("0.1", "0.2")
            for sets in (EIGHT, OUTSIDE)
        ]
        print(f"| {n} | " + " | ".join(cells) + " |")
    for n in ("aumval+0.5f", "aumval+0.5f+logit_if"):
        cells = ["{:.3f} / {:.3f}".format(*col(sc, n, rate, ("gaussian",))) for rate in ("0.1", "0.2")]
        print(f"{n}: gaussian 10% / 20%: " + ", ".join(cells))
