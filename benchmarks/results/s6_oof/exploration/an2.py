"""Second read (H3, s6): the out-of-fold best-epoch margin found with early stopping (patience p on
the held-out fold's loss, at most 60 epochs), its weight in the combination with AUM / aum_val
(comb = a / s_a + w * o / s_o, s = 1.4826 MAD, then the AUM calibration and gate), per-set
figures and paired differences against the method alone.

usage: python an2.py A.pkl [B.pkl ...]   (run from the worktree root)
"""

import pickle
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, "benchmarks/results/s6_oof/exploration")
from an import EIGHT, OUTSIDE, cal, ce, margins, scale  # noqa: E402

from lightning_dv.metrics import detection_auroc, kmeans_f1  # noqa: E402


def stop_epoch(loss, patience):
    """index of the best epoch seen when early stopping with `patience` ends the fit."""
    best, since = 0, 0
    for e in range(1, len(loss)):
        if loss[e] < loss[best]:
            best, since = e, 0
        else:
            since += 1
            if since >= patience:
                break
    return best, e


def cands(r):
    y, m, zo, fold = r["y"], r["m"], r["zo"], r["fold"]
    a, av = np.nanmean(m[:10], 0), np.nanmean(m[: int(r["window"])], 0)
    mo, lo = margins(zo, y), ce(zo, y)
    out = {"aum": cal(a), "aum_val": r["aum_val"]}
    epochs_run = 0
    for p in (3, 5, 10, None):
        best = np.zeros(len(y), np.int64)
        for f in np.unique(fold):
            rows = fold == f
            if p is None:
                best[rows], last = int(np.argmin(lo[:, rows].mean(1))), lo.shape[0] - 1
            else:
                best[rows], last = stop_epoch(lo[:, rows].mean(1), p)
            if p == 10:
                epochs_run += last + 1
        o = mo[best, np.arange(len(y))]
        tag = "all60" if p is None else f"p{p}"
        out[f"oof_{tag}"] = cal(o)
        for base, ar in (("aum", a), ("aumval", av)):
            for w in (0.25, 0.5, 0.75, 1.0):
                out[f"{base}+{w:g}oof_{tag}"] = cal(ar / scale(ar) + w * o / scale(o))
    r["epochs_run_p10"] = epochs_run / len(np.unique(fold))
    return out


def col(n, rate, sets):
    per = [np.mean([v for (d, s), v in sc[n][rate].items() if d == ds], 0) for ds in sets]
    return np.mean(per, 0)


if __name__ == "__main__":
    res = {}
    for p in sys.argv[1:]:
        res.update(pickle.load(open(p, "rb")))

    sc = defaultdict(lambda: defaultdict(dict))  # cand -> rate -> (set, seed) -> (f1, auroc)
    ep = defaultdict(list)
    for key, r in sorted(res.items()):
        d, rate, seed = key.split("|")
        for n, v in cands(r).items():
            sc[n][rate][(d, seed)] = (kmeans_f1(v, r["noisy"]), detection_auroc(v, r["noisy"]))
        ep[d].append(r["epochs_run_p10"])

    print("| candidate | 10%: 8 sets | 10%: 3 outside | 20%: 8 sets | 20%: 3 outside |")
    print("|---|---|---|---|---|")
    for n in sc:
        cells = [
            "{:.3f} / {:.3f}".format(*col(n, rate, sets))
            for rate in ("0.1", "0.2")
            for sets in (EIGHT, OUTSIDE)
        ]
        print(f"| {n} | " + " | ".join(cells) + " |")

    print("\nmean epochs per out-of-fold fit with patience 10 (max 60):")
    for d, v in ep.items():
        print(f"  {d}: {np.mean(v):.1f}")

    pairs = [("aum_val", "aumval+0.5oof_p10"), ("aum", "aum+0.5oof_p10"), ("aum_val", "aumval+0.5oof_all60")]
    print(
        "\npaired differences (candidate - base) over runs: mean F1 (SE; runs better / worse), mean AUROC (SE)"
    )
    for base, cand in pairs:
        for rate in ("0.1", "0.2"):
            for name, sets in (("8 sets", EIGHT), ("3 outside", OUTSIDE)):
                keys = [k for k in sc[base][rate] if k[0] in sets]
                df = np.array([sc[cand][rate][k][0] - sc[base][rate][k][0] for k in keys])
                da = np.array([sc[cand][rate][k][1] - sc[base][rate][k][1] for k in keys])
                se = lambda x: x.std(ddof=1) / np.sqrt(len(x))  # noqa: E731
                print(
                    f"  {cand} vs {base}, {rate} {name}: F1 {df.mean():+.4f} ({se(df):.4f}; {(df > 1e-9).sum()}/{(df < -1e-9).sum()}), "
                    f"AUROC {da.mean():+.4f} ({se(da):.4f}; {(da > 1e-9).sum()}/{(da < -1e-9).sum()})"
                )

    print("\nper set F1 / AUROC, mean over seeds:")
    show = ["aum", "aum+0.5oof_p10", "aum_val", "aumval+0.5oof_p10"]
    for rate in ("0.1", "0.2"):
        print(f"\nrate {rate}\n| set | " + " | ".join(show) + " |\n" + "|---" * (len(show) + 1) + "|")
        for d in EIGHT + OUTSIDE:
            print(
                f"| {d} | " + " | ".join("{:.3f} / {:.3f}".format(*col(n, rate, (d,))) for n in show) + " |"
            )
