"""Read of collect_select.py (session 8): `aum_val` + 0.5 x the margin of ONE learner per split, the
learner picked by its out-of-sample fit to the noisy labels (log-loss with probabilities clipped at
1e-3, Brier, or the error rate), from several pools; against the kept forest and against the per-split best pick
known only to an oracle (how much any selection rule could gain).

usage: python an_select.py PA.pkl PB.pkl   (run from the worktree root; also reads /tmp/s7/{A,B}.pkl)
"""

import pickle
import sys
from collections import Counter, defaultdict

import numpy as np

sys.path.insert(0, "benchmarks/results/s8_refit/exploration")
from an_refit import EIGHT, OUTSIDE, cal, col, unit  # noqa: E402
from collect_refit import margin_of  # noqa: E402

from lightning_dv.metrics import detection_auroc, kmeans_f1  # noqa: E402


def logloss(p, y):
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-3, 1)).mean())


def brier(p, y):
    t = np.zeros_like(p)
    t[np.arange(len(y)), y] = 1
    return float(((p - t) ** 2).sum(1).mean())


def error(p, y):
    return float((p.argmax(1) != y).mean())


POOLS = {
    "et+mda": ("et", "mda"),
    "et+mda+logit": ("et", "mda", "logit"),
    "et+mda+svm": ("et", "mda", "svm"),
    "all5": ("et", "mda", "svm", "logit", "knn"),
}

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
        marg = {n: margin_of(p, np.arange(k), y) for n, p in g["p"].items()}
        summed = {n: cal(ua + 0.5 * unit(m)) for n, m in marg.items()}
        cands = {f"val+0.5{n}": v for n, v in summed.items()}
        for pool_name, pool in POOLS.items():
            for crit_name, crit in (("logloss", logloss), ("brier", brier), ("error", error)):
                best = min(pool, key=lambda n: crit(g["p"][n], y))
                picks[f"{pool_name} {crit_name}"][(d, best)] += 1
                cands[f"pick {pool_name} by {crit_name}"] = summed[best]
        for n, v in cands.items():
            sc[n][rate][(d, seed)] = (kmeans_f1(v, r["noisy"]), detection_auroc(v, r["noisy"]))
        for pool_name, pool in POOLS.items():
            sc[f"oracle pick {pool_name} (AUROC)"][rate][(d, seed)] = max(
                (sc[f"val+0.5{n}"][rate][(d, seed)] for n in pool), key=lambda fa: fa[1]
            )
    print(f"{len(res)} splits; cells: F1 / AUROC, 10% 8 sets | 10% outside | 20% 8 sets | 20% outside")
    for n in sc:
        print(
            f"{n:32s}",
            " | ".join(
                "{:.3f} / {:.3f}".format(*col(sc, n, rate, sets))
                for rate in ("0.1", "0.2")
                for sets in (EIGHT, OUTSIDE)
            ),
        )
    for rule in ("et+mda logloss", "et+mda brier", "et+mda error", "et+mda+logit error", "all5 error"):
        print("picks,", rule)
        for ds in EIGHT + OUTSIDE:
            print(f"  {ds:15s}", {n: c for (dd, n), c in picks[rule].items() if dd == ds})
    show = ["val+0.5et", "pick et+mda by error", "pick et+mda+logit by error", "pick all5 by error"]
    for rate in ("0.1", "0.2"):
        print("per set, rate", rate, show)
        for ds in EIGHT + OUTSIDE:
            print(f"{ds:15s}", "  ".join("{:.3f}/{:.3f}".format(*col(sc, n, rate, (ds,))) for n in show))
