"""Weight of the chosen opinion in the sum (session 8): `aum_val` / AUM + w x the opinion picked by
Brier score (forest or mixture), w in 0.5..2 applied only where the mixture is picked (the forest's
0.5 stays), or everywhere; F1 / AUROC as an_select.py, selection seeds.

usage: python an_select_weight.py PA.pkl PB.pkl   (run from the worktree root; also reads /tmp/s7/{A,B}.pkl)
"""

import pickle
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, "benchmarks/results/s8_refit/exploration")
from an_refit import EIGHT, OUTSIDE, cal, col, unit  # noqa: E402
from an_select import brier  # noqa: E402
from collect_refit import margin_of  # noqa: E402

from lightning_dv.metrics import detection_auroc, kmeans_f1  # noqa: E402

if __name__ == "__main__":
    rec, res = {}, {}
    for p in ("/tmp/s7/A.pkl", "/tmp/s7/B.pkl"):
        rec.update(pickle.load(open(p, "rb")))
    for p in sys.argv[1:]:
        res.update(pickle.load(open(p, "rb")))
    sc = defaultdict(lambda: defaultdict(dict))
    for key, g in res.items():
        r = rec[key]
        d, rate, seed = key.split("|")
        y, k = g["y"], g["p"]["et"].shape[1]
        best = min(("et", "mda"), key=lambda n: brier(g["p"][n], y))
        o = unit(margin_of(g["p"][best], np.arange(k), y))
        cands = {}
        for b, am in (
            ("val", np.nanmean(r["m"][: int(r["window"])], 0)),
            ("a10", np.nanmean(r["m"][:10], 0)),
        ):
            ua = unit(am)
            for w in (0.5, 0.75, 1.0, 1.5, 2.0):
                cands[f"{b} mixture weight {w}"] = cal(ua + (w if best == "mda" else 0.5) * o)
                cands[f"{b} both weights {w}"] = cal(ua + w * o)
            cands[f"{b} picked opinion alone"] = cal(o)
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
    show = [
        "val mixture weight 0.5",
        "val mixture weight 1.0",
        "val mixture weight 2.0",
        "val picked opinion alone",
    ]
    for rate in ("0.1", "0.2"):
        print("per set, rate", rate, show)
        for ds in EIGHT + OUTSIDE:
            print(f"{ds:15s}", "  ".join("{:.3f}/{:.3f}".format(*col(sc, n, rate, (ds,))) for n in show))
