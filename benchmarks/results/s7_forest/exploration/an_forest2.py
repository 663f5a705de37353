"""Second read (session 7): does weighting the second opinions by how well each model fits the
(noisy) labels help where one family is right (gaussian: logistic; moons: trees)?

acc_j: out-of-sample accuracy against the noisy labels of opinion j (forest out-of-bag, logistic
5-fold), acc_a: share of rows whose AUM window margin is > 0 (the MLP's early fit).

usage: python an_forest2.py A.pkl [B.pkl ...]   (run from the worktree root)
"""

import importlib.util  # noqa: E402
import pickle
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, "benchmarks/results/s6_oof/exploration")
_spec = importlib.util.spec_from_file_location("an7", "benchmarks/results/s7_forest/exploration/an_forest.py")
an7 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(an7)
EIGHT, OUTSIDE, cal, col, pmargin, unit = an7.EIGHT, an7.OUTSIDE, an7.cal, an7.col, an7.pmargin, an7.unit

from lightning_dv.metrics import detection_auroc, kmeans_f1  # noqa: E402


def acc(p, y):
    return float((p.argmax(1) == y).mean())


def cands(r):
    y, m = r["y"], r["m"]
    av = np.nanmean(m[: int(r["window"])], 0)
    et, lg = pmargin(r["ops"]["et"], y), pmargin(r["ops"]["logit"], y)
    a_et, a_lg, a_a = acc(r["ops"]["et"], y), acc(r["ops"]["logit"], y), float((av > 0).mean())
    out = {"aum_val": r["aum_val"], "aumval+0.5et": cal(unit(av) + 0.5 * unit(et))}
    best = max(a_et, a_lg)
    for d in (0.0, 0.01, 0.02):
        w_lg = 0.5 if a_lg >= best - d else 0.0
        out[f"+0.5et+logit_if_within{d:g}"] = cal(unit(av) + 0.5 * unit(et) + w_lg * unit(lg))
        pick = et if a_et >= a_lg - d else lg
        out[f"+0.5better(et pref {d:g})"] = cal(unit(av) + 0.5 * unit(pick))
    for p in (4, 16):
        k = r["k"]
        ch = 1.0 / k
        w = {n: ((a - ch) / (best - ch)) ** p if best > ch else 0 for n, a in (("et", a_et), ("lg", a_lg))}
        tot = sum(w.values())
        out[f"acc^{p} weights (sum 0.5)"] = cal(
            unit(av) + 0.5 * (w["et"] * unit(et) + w["lg"] * unit(lg)) / tot
        )
    # forest weight up when the forest fits better than the MLP's early fit
    for g in (2, 4):
        w = (
            0.5 * (2.0 if a_et > a_a else 1.0)
            if g == 2
            else 0.5 * float(np.clip(np.exp(10 * (a_et - a_a)), 0.5, 4))
        )
        out[f"et weight by fit ({g})"] = cal(unit(av) + w * unit(et))
    r["accs"] = (a_a, a_et, a_lg)
    return out


if __name__ == "__main__":
    res = {}
    for p in sys.argv[1:]:
        res.update(pickle.load(open(p, "rb")))
    sc = defaultdict(lambda: defaultdict(dict))
    accs = defaultdict(list)
    for key, r in sorted(res.items()):
        d, rate, seed = key.split("|")
        for n, v in cands(r).items():
            sc[n][rate][(d, seed)] = (kmeans_f1(v, r["noisy"]), detection_auroc(v, r["noisy"]))
        accs[(d, rate)].append(r["accs"])
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
    print(
        "\nmean accuracies against the noisy labels (AUM window margin > 0, extra trees OOB, logistic 5-fold):"
    )
    for (d, rate), v in accs.items():
        print(f"  {d} {rate}: " + " / ".join(f"{x:.3f}" for x in np.mean(v, 0)))
    names = list(sc)
    for rate in ("0.1", "0.2"):
        print(
            f"\nrate {rate}, per set F1 / AUROC\n| set | "
            + " | ".join(names)
            + " |\n"
            + "|---" * (len(names) + 1)
            + "|"
        )
        for d in EIGHT + OUTSIDE:
            print(
                f"| {d} | "
                + " | ".join("{:.3f} / {:.3f}".format(*col(sc, n, rate, (d,))) for n in names)
                + " |"
            )
