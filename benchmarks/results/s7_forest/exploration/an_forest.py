"""Offline reads of collect_forest.py's recordings: AUM (window 10) and `aum_val` combined with a
feature-space second opinion (c = a / s_a + w * o / s_o, s = 1.4826 MAD, not centred, then AUM's
calibration and gate); 2-means F1 (exported values, the flag) / AUROC, mean over sets of the mean
over seeds, per-set tables and paired differences (session 7).

usage: python an_forest.py A.pkl [B.pkl ...] [--show CAND ...]   (run from the worktree root)
"""

import pickle
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, "benchmarks/results/s6_oof/exploration")
from an import EIGHT, OUTSIDE, cal, scale  # noqa: E402

from lightning_dv.metrics import detection_auroc, kmeans_f1  # noqa: E402

OPS = ("rf", "et", "hgb", "logit")
WEIGHTS = (0.25, 0.5, 1.0, 2.0)


def pmargin(p, y):
    """assigned-label probability margin p_y - max_{k != y} p_k."""
    py = p[np.arange(len(y)), y]
    q = p.copy()
    q[np.arange(len(y)), y] = -np.inf
    return py - q.max(1)


def unit(v):
    s = scale(v)
    return v / s if s > 0 else v


def cands(r):
    y, m = r["y"], r["m"]
    a, av = np.nanmean(m[:10], 0), np.nanmean(m[: int(r["window"])], 0)
    out = {"aum": cal(a), "aum_val": r["aum_val"], "oob_tree": r["ops"]["oob_tree"]}
    ms = {n: pmargin(r["ops"][n], y) for n in OPS}
    for n, o in ms.items():
        out[n] = cal(o)
    for base, ar in (("aum", a), ("aumval", av)):
        for n, o in ms.items():
            for w in WEIGHTS:
                out[f"{base}+{w:g}{n}"] = cal(unit(ar) + w * unit(o))
        for w in (0.25, 0.5, 1.0):
            out[f"{base}+{w:g}rf+{w:g}logit"] = cal(unit(ar) + w * unit(ms["rf"]) + w * unit(ms["logit"]))
            out[f"{base}+{w:g}hgb+{w:g}logit"] = cal(unit(ar) + w * unit(ms["hgb"]) + w * unit(ms["logit"]))
    return out


def col(sc, n, rate, sets):
    vals = [[v for (d, _), v in sc[n][rate].items() if d == ds] for ds in sets]
    per = [np.mean(v, 0) for v in vals if v]
    return np.mean(per, 0) if per else (np.nan, np.nan)


if __name__ == "__main__":
    args = sys.argv[1:]
    show = args[args.index("--show") + 1 :] if "--show" in args else []
    paths = args[: args.index("--show")] if "--show" in args else args
    res = {}
    for p in paths:
        res.update(pickle.load(open(p, "rb")))
    sc = defaultdict(lambda: defaultdict(dict))  # cand -> rate -> (set, seed) -> (f1, auroc)
    for key, r in sorted(res.items()):
        d, rate, seed = key.split("|")
        for n, v in cands(r).items():
            sc[n][rate][(d, seed)] = (kmeans_f1(v, r["noisy"]), detection_auroc(v, r["noisy"]))
    print(f"{len(res)} splits")
    print("| candidate | 10%: 8 sets | 10%: 3 outside | 20%: 8 sets | 20%: 3 outside |")
    print("|---|---|---|---|---|")
    for n in sc:
        cells = [
            "{:.3f} / {:.3f}".format(*col(sc, n, rate, sets))
            for rate in ("0.1", "0.2")
            for sets in (EIGHT, OUTSIDE)
        ]
        print(f"| {n} | " + " | ".join(cells) + " |")
    se = lambda x: x.std(ddof=1) / np.sqrt(len(x))  # noqa: E731
    print(
        "\npaired differences (candidate - aum_val): mean F1 (SE; better/worse), mean AUROC (SE; better/worse)"
    )
    for cand in show:
        for rate in ("0.1", "0.2"):
            for name, sets in (("8 sets", EIGHT), ("3 outside", OUTSIDE)):
                keys = [k for k in sc["aum_val"][rate] if k[0] in sets]
                df = np.array([sc[cand][rate][k][0] - sc["aum_val"][rate][k][0] for k in keys])
                da = np.array([sc[cand][rate][k][1] - sc["aum_val"][rate][k][1] for k in keys])
                print(
                    f"  {cand}, {rate} {name}: F1 {df.mean():+.4f} ({se(df):.4f}; {(df > 1e-9).sum()}/{(df < -1e-9).sum()}), "
                    f"AUROC {da.mean():+.4f} ({se(da):.4f}; {(da > 1e-9).sum()}/{(da < -1e-9).sum()})"
                )
    cols = ["aum", "aum_val", "oob_tree", "rf", "logit"] + show
    for rate in ("0.1", "0.2"):
        print(
            f"\nrate {rate}, per set F1 / AUROC\n| set | "
            + " | ".join(cols)
            + " |\n"
            + "|---" * (len(cols) + 1)
            + "|"
        )
        for d in EIGHT + OUTSIDE:
            print(
                f"| {d} | "
                + " | ".join("{:.3f} / {:.3f}".format(*col(sc, n, rate, (d,))) for n in cols)
                + " |"
            )
