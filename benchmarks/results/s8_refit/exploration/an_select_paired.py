"""A paired margin for the switch away from the forest (session 8): a challenger (MDA, or MDA and the
logistic) replaces the forest only if it misclassifies fewer given labels by more than z standard
errors of the paired difference (McNemar: b, c = rows only the forest / only the challenger gets
wrong; difference (b - c) / n, standard error sqrt(b + c) / n); z = 0 is the kept rule. F1 / AUROC as
an_select.py, selection seeds.

usage: python an_select_paired.py PA.pkl PB.pkl   (run from the worktree root; also reads /tmp/s7/{A,B}.pkl)
"""

import pickle
import sys
from collections import Counter, defaultdict

import numpy as np

sys.path.insert(0, "benchmarks/results/s8_refit/exploration")
from an_refit import EIGHT, OUTSIDE, cal, col, unit  # noqa: E402
from collect_refit import margin_of  # noqa: E402

from lightning_dv.metrics import detection_auroc, kmeans_f1  # noqa: E402


def pick(g, y, pool, z):
    wrong = {n: g["p"][n].argmax(1) != y for n in pool}
    best, best_gain = "et", 0.0
    for n in pool[1:]:
        b = float((wrong["et"] & ~wrong[n]).sum())
        c = float((~wrong["et"] & wrong[n]).sum())
        gain = b - c - z * np.sqrt(b + c)
        if gain > best_gain:
            best, best_gain = n, gain
    return best


if __name__ == "__main__":
    rec, res = {}, {}
    for p in ("/tmp/s7/A.pkl", "/tmp/s7/B.pkl"):
        rec.update(pickle.load(open(p, "rb")))
    for p in sys.argv[1:]:
        res.update(pickle.load(open(p, "rb")))
    sc = defaultdict(lambda: defaultdict(dict))
    picks = defaultdict(Counter)
    for key, g in res.items():
        r = rec[key]
        d, rate, seed = key.split("|")
        y, k = g["y"], g["p"]["et"].shape[1]
        ua = unit(np.nanmean(r["m"][: int(r["window"])], 0))
        for pool in (("et", "mda"), ("et", "mda", "logit")):
            for z in (0.0, 0.5, 1.0, 2.0):
                n = pick(g, y, pool, z)
                name = f"{'+'.join(pool)} z={z}"
                picks[name][(d, n)] += 1
                v = cal(ua + 0.5 * unit(margin_of(g["p"][n], np.arange(k), y)))
                sc[name][rate][(d, seed)] = (kmeans_f1(v, r["noisy"]), detection_auroc(v, r["noisy"]))
    for n in sc:
        print(
            f"{n:24s}",
            " | ".join(
                "{:.3f} / {:.3f}".format(*col(sc, n, rate, sets))
                for rate in ("0.1", "0.2")
                for sets in (EIGHT, OUTSIDE)
            ),
        )
    for n in ("et+mda z=1.0", "et+mda+logit z=1.0", "et+mda+logit z=2.0"):
        print("picks,", n)
        for ds in EIGHT + OUTSIDE:
            print(f"  {ds:15s}", {m: c for (dd, m), c in picks[n].items() if dd == ds})
