"""Offline reads of collect.py's recordings: in-training AUM (window 10), `aum_val`, out-of-fold
margin candidates and their combinations with AUM; 2-means F1 (exported values, the flag) and
AUROC, mean over sets of the mean over seeds (H3, session 6).

usage: python an.py A.pkl [B.pkl ...]   (run from the worktree root)
"""

import pickle
import sys
from collections import defaultdict

import numpy as np
import torch

from lightning_dv.methods.calibration import _center_scale, calibrate, gate_low_cluster, robust_clip
from lightning_dv.metrics import detection_auroc, kmeans_f1

EIGHT = ("digits", "breast_cancer", "wine", "iris", "gaussian", "classification", "overlap", "moons")
OUTSIDE = ("blobs", "circles", "hastie")


def margins(z, y):
    """assigned-label margin of logits z (..., N, C)."""
    zy = np.take_along_axis(z, y[None, :, None].repeat(z.shape[0], 0), -1)[..., 0] if z.ndim == 3 else None
    other = z.copy()
    np.put_along_axis(other, y[None, :, None].repeat(z.shape[0], 0), -np.inf, -1)
    return zy - other.max(-1)


def ce(z, y):
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    zy = np.take_along_axis(z, y[None, :, None].repeat(z.shape[0], 0), -1)[..., 0]
    return lse - zy


def scale(v):
    return float(_center_scale(torch.as_tensor(v, dtype=torch.float64))[1])


def cal(raw):
    return calibrate(torch.as_tensor(raw, dtype=torch.float64), gate=0.0).numpy()


def cal_allowed(score_raw, allowed):
    """robust_clip of a combined score, flagged only where `allowed` (e.g. the AUM gate)."""
    s = robust_clip(torch.as_tensor(score_raw, dtype=torch.float64), upper_scale=0.1).double()
    return gate_low_cluster(s, torch.as_tensor(allowed)).numpy()


def candidates(r):
    y, m, zo, fold = r["y"], r["m"], r["zo"], r["fold"]
    out = {}
    a = np.nanmean(m[:10], 0)  # aum raw: window 10
    w = int(r["window"])
    av = np.nanmean(m[:w], 0)  # aum_val raw
    out["aum"] = cal(a)
    out["aum_val"] = r["aum_val"]
    mo, lo = margins(zo, y), ce(zo, y)  # (E, N)
    E = mo.shape[0]
    for e in (1, 3, 5, 10, 20, 30, 60):
        if e <= E:
            out[f"oof_mean{e}"] = cal(mo[:e].mean(0))
    best = np.zeros(len(y), np.int64)
    for f in np.unique(fold):
        rows = fold == f
        best[rows] = int(np.argmin(lo[:, rows].mean(1)))
    ob = mo[best, np.arange(len(y))]
    out["oof_best"] = cal(ob)
    upto = np.array([mo[: best[i] + 1, i].mean() for i in range(len(y))])
    out["oof_upto_best"] = cal(upto)
    r["best_epochs"] = {int(f): int(best[fold == f][0]) + 1 for f in np.unique(fold)}
    # probabilities at the best epoch (cleanlab's self-confidence) for reference
    zb = zo[best, np.arange(len(y))]
    p = np.exp(zb - zb.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    out["oof_best_selfconf"] = robust_clip(torch.as_tensor(p[np.arange(len(y)), y]), upper_scale=0.1).numpy()
    for oname, o in (("best", ob), ("mean10", mo[:10].mean(0)), ("upto", upto)):
        so = scale(o)
        for aname, ar in (("aum", a), ("aumval", av)):
            sa = scale(ar)
            for wgt in (0.5, 1.0, 2.0):
                comb = ar / sa + wgt * o / so  # scaled, not centred: 0 keeps its meaning
                out[f"{aname}+{wgt:g}oof_{oname}"] = cal(comb)
            # centred robust z-scores, gated by AUM's own gate (margin < -0.1 s)
            za = (ar - np.median(ar)) / sa
            zo_ = (o - np.median(o)) / so
            out[f"{aname}+oof_{oname}|z,aumgate"] = cal_allowed(za + zo_, ar < -0.1 * sa)
            out[f"{aname}+oof_{oname}|z,bothgate"] = cal_allowed(za + zo_, (ar < -0.1 * sa) & (o < -0.1 * so))
            out[f"{aname}+oof_{oname}|z,eithergate"] = cal_allowed(
                za + zo_, (ar < -0.1 * sa) | (o < -0.1 * so)
            )
    return out


if __name__ == "__main__":
    res = {}
    for p in sys.argv[1:]:
        res.update(pickle.load(open(p, "rb")))
    scores = defaultdict(lambda: defaultdict(list))  # (cand, rate, set) -> list over seeds
    best_epochs = defaultdict(list)
    for key, r in sorted(res.items()):
        d, rate, seed = key.split("|")
        for name, v in candidates(r).items():
            scores[(name, rate)][d].append((kmeans_f1(v, r["noisy"]), detection_auroc(v, r["noisy"])))
        best_epochs[(d, rate)] += list(r["best_epochs"].values())

    def col(name, rate, sets):
        per = [np.mean(scores[(name, rate)][d], 0) for d in sets if d in scores[(name, rate)]]
        return np.mean(per, 0) if per else (np.nan, np.nan)

    names = sorted({n for n, _ in scores}, key=lambda n: list(dict.fromkeys(n for n, _ in scores)).index(n))
    print(f"splits: {len(res)}")
    print("| candidate | 10%: 8 sets | 10%: 3 outside | 20%: 8 sets | 20%: 3 outside |")
    print("|---|---|---|---|---|")
    for n in names:
        cells = []
        for rate in ("0.1", "0.2"):
            for sets in (EIGHT, OUTSIDE):
                f, a = col(n, rate, sets)
                cells.append(f"{f:.3f} / {a:.3f}")
        print(f"| {n} | " + " | ".join(cells) + " |")

    print("\nbest held-out-loss epoch per fold (median, min-max):")
    for (d, rate), v in sorted(best_epochs.items()):
        print(f"  {d} {rate}: {np.median(v):.0f} ({min(v)}-{max(v)})")

    show = [n for n in sys.argv[0:0]] or [
        "aum",
        "aum_val",
        "oof_best",
        "oof_mean10",
        "aum+1oof_best",
        "aumval+1oof_best",
    ]
    print("\nper set F1 / AUROC (mean over seeds):")
    for rate in ("0.1", "0.2"):
        print(f"\nrate {rate}\n| set | " + " | ".join(show) + " |")
        print("|---" * (len(show) + 1) + "|")
        for d in EIGHT + OUTSIDE:
            if d in scores[("aum", rate)]:
                print(
                    f"| {d} | "
                    + " | ".join("{:.3f} / {:.3f}".format(*np.mean(scores[(n, rate)][d], 0)) for n in show)
                    + " |"
                )
