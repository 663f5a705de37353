"""Item 3 (H3, s6): the monitored window's lower clip. The window ends at
T = clip(argmin_{e <= 30} val_loss_e, lo, 30) (`AUM(monitor="val_loss", window=lo)`); value =
calibrated, gated mean in-training margin over epochs 1..T. lo = 10 is `aum_val`'s default.

usage: python an_window.py W.pkl   (collect_window.py's output; run with PYTHONPATH=<worktree>)
"""

import pickle
import sys
from collections import defaultdict

import numpy as np
from an import EIGHT, OUTSIDE, cal

from lightning_dv.metrics import detection_auroc, kmeans_f1

if __name__ == "__main__":
    res = pickle.load(open(sys.argv[1], "rb"))
    clips = (1, 2, 3, 4, 5, 6, 8, 10)
    sc = defaultdict(lambda: defaultdict(dict))
    check = []
    for key, r in sorted(res.items()):
        d, rate, seed = key.split("|")
        best = int(np.argmin(r["val_loss"])) + 1  # first best epoch, as AUM's strict improvement
        for lo in clips:
            t = min(max(best, lo), 30)
            v = cal(np.nanmean(r["m"][:t], 0))
            if lo == 10:
                check.append(np.allclose(v, r["aum_val"], atol=1e-5) and t == r["window"])
            sc[lo][rate][(d, seed)] = (kmeans_f1(v, r["noisy"]), detection_auroc(v, r["noisy"]), t)
    print(f"lo = 10 reproduces the exported aum_val values and window: {sum(check)} of {len(check)} splits\n")

    def col(lo, rate, sets):
        return np.mean([np.mean([v for (d, s), v in sc[lo][rate].items() if d == ds], 0) for ds in sets], 0)

    print(
        "| lower clip | 10%: 8 sets | 10%: 3 outside | 20%: 8 sets | 20%: 3 outside | mean window end 10% / 20% |"
    )
    print("|---|---|---|---|---|---|")
    for lo in clips:
        cells = [
            "{:.3f} / {:.3f}".format(*col(lo, r, s)[:2]) for r in ("0.1", "0.2") for s in (EIGHT, OUTSIDE)
        ]
        ends = [np.mean([v[2] for v in sc[lo][r].values()]) for r in ("0.1", "0.2")]
        print(f"| {lo} | " + " | ".join(cells) + f" | {ends[0]:.1f} / {ends[1]:.1f} |")
    print("\nper set F1 / AUROC, lower clip 3 / 5 / 10:")
    for rate in ("0.1", "0.2"):
        print(f"\nrate {rate}\n| set | 3 | 5 | 10 |\n|---|---|---|---|")
        for d in EIGHT + OUTSIDE:
            print(
                f"| {d} | "
                + " | ".join("{:.3f} / {:.3f}".format(*col(lo, rate, (d,))[:2]) for lo in (3, 5, 10))
                + " |"
            )
