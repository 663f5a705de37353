"""Read of collect_refit.py (session 8): AUM (`a10`, window 10) or `aum_val` (`val`) plus the second
forest pass f2 (grown on the rows the first-pass sum keeps) at several weights, against the kept
first pass (f1, weight 0.5); 2-means F1 / AUROC, mean over sets of the mean over the selection seeds.

usage: python an_refit.py RA.pkl RB.pkl   (run from the worktree root; also reads /tmp/s7/{A,B}.pkl)
"""

import pickle
import sys
from collections import defaultdict

import numpy as np
import torch

sys.path.insert(0, "benchmarks/results/s6_oof/exploration")
from an import EIGHT, OUTSIDE, scale  # noqa: E402

from lightning_dv.methods.calibration import calibrate  # noqa: E402
from lightning_dv.metrics import detection_auroc, kmeans_f1  # noqa: E402


def unit(v):
    s = scale(v)
    return v / s if s > 0 else v


def cal(c):
    return calibrate(torch.as_tensor(c, dtype=torch.float64), gate=0.0).numpy()


def col(sc, n, rate, sets):
    per = [np.mean([v for (d, _), v in sc[n][rate].items() if d == ds], 0) for ds in sets]
    return np.mean(per, 0)


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
        out = g["out"]
        bases = {"val": np.nanmean(r["m"][: int(r["window"])], 0), "a10": np.nanmean(r["m"][:10], 0)}
        cands = {"forest1": cal(out["f1"])}
        for b, am in bases.items():
            cands[f"{b}+0.5f1"] = cal(unit(am) + 0.5 * unit(out["f1"]))
            for rule in ("neg", "negf", "flag", "q0.1", "q0.2", "q0.3"):
                f2 = out[(b, rule)]
                if b == "val":
                    cands[f"forest2 {rule}"] = cal(f2)
                for w in (0.5, 0.75, 1.0):
                    cands[f"{b}+{w}f2 {rule}"] = cal(unit(am) + w * unit(f2))
        for n, v in cands.items():
            sc[n][rate][(d, seed)] = (kmeans_f1(v, r["noisy"]), detection_auroc(v, r["noisy"]))
    print(f"{len(res)} splits; cells: F1 / AUROC, 10% 8 sets | 10% outside | 20% 8 sets | 20% outside")
    for n in sc:
        print(
            f"{n:22s}",
            " | ".join(
                "{:.3f} / {:.3f}".format(*col(sc, n, rate, sets))
                for rate in ("0.1", "0.2")
                for sets in (EIGHT, OUTSIDE)
            ),
        )
    show = [a for a in ("val+0.5f1", "val+0.5f2 neg", "val+0.75f2 neg", "val+0.5f2 flag") if a in sc]
    for rate in ("0.1", "0.2"):
        print("per set, rate", rate, show)
        for ds in EIGHT + OUTSIDE:
            print(f"{ds:15s}", "  ".join("{:.3f}/{:.3f}".format(*col(sc, n, rate, (ds,))) for n in show))
