"""Third read (session 7): the extra-trees settings of collect_forest_grid.py, alone and added to
`aum_val` / `aum` (recorded by collect_forest.py on the same splits) at weights 0.5 and 1.

usage: python an_forest3.py A.pkl B.pkl -- GA.pkl GB.pkl [HA.pkl HB.pkl]   (run from the worktree root)
"""

import importlib.util
import pickle
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, "benchmarks/results/s6_oof/exploration")
_spec = importlib.util.spec_from_file_location("an7", "benchmarks/results/s7_forest/exploration/an_forest.py")
an7 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(an7)
EIGHT, OUTSIDE, cal, col, unit = an7.EIGHT, an7.OUTSIDE, an7.cal, an7.col, an7.unit

from lightning_dv.metrics import detection_auroc, kmeans_f1  # noqa: E402

if __name__ == "__main__":
    cut = sys.argv.index("--")
    rec, grid = {}, {}
    for p in sys.argv[1:cut]:
        rec.update(pickle.load(open(p, "rb")))
    for p in sys.argv[cut + 1 :]:  # several grids of the same splits: merge their settings
        for key, g in pickle.load(open(p, "rb")).items():
            if key in grid:
                grid[key]["margins"].update(g["margins"])
                grid[key]["times"].update(g["times"])
            else:
                grid[key] = g
    sc = defaultdict(lambda: defaultdict(dict))
    times = defaultdict(list)
    for key, g in sorted(grid.items()):
        r = rec[key]
        assert np.array_equal(np.sort(r["noisy"]), np.sort(g["noisy"]))
        d, rate, seed = key.split("|")
        m = r["m"]
        a, av = np.nanmean(m[:10], 0), np.nanmean(m[: int(r["window"])], 0)
        cands = {"aum_val": r["aum_val"]}
        for cfg, f in g["margins"].items():
            tag = f"{cfg[0]}/{cfg[1]}"
            times[tag].append(g["times"][cfg])
            cands[f"et {tag}"] = cal(f)
            for w in (0.5, 1.0):
                cands[f"aumval+{w:g} et {tag}"] = cal(unit(av) + w * unit(f))
            cands[f"aum+0.5 et {tag}"] = cal(unit(a) + 0.5 * unit(f))
        for n, v in cands.items():
            sc[n][rate][(d, seed)] = (kmeans_f1(v, r["noisy"]), detection_auroc(v, r["noisy"]))
    print(f"{len(grid)} splits; settings: max_features/min_samples_leaf, 300 trees")
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
        "\nseconds per forest (mean over splits): "
        + ", ".join(f"{k} {np.mean(v):.2f}" for k, v in times.items())
    )
    show = ["aum_val", "aumval+0.5 et sqrt/1", "aumval+0.5 et 1.0/1", "aumval+0.5 et 1.0/3"] + [
        n for n in ("aumval+0.5 et 1.0/5", "aumval+0.5 et 1.0/10") if n in sc
    ]
    for rate in ("0.1", "0.2"):
        print(
            f"\nrate {rate}, per set F1 / AUROC\n| set | "
            + " | ".join(show)
            + " |\n"
            + "|---" * (len(show) + 1)
            + "|"
        )
        for d in EIGHT + OUTSIDE:
            print(
                f"| {d} | "
                + " | ".join("{:.3f} / {:.3f}".format(*col(sc, n, rate, (d,))) for n in show)
                + " |"
            )
    se = lambda x: x.std(ddof=1) / np.sqrt(len(x))  # noqa: E731
    print("\npaired differences over runs: mean F1 (SE; better/worse), mean AUROC (SE; better/worse)")
    for base, cand in (("aumval+0.5 et sqrt/1", "aumval+0.5 et 1.0/3"), ("aum_val", "aumval+0.5 et 1.0/3")):
        for rate in ("0.1", "0.2"):
            for name, sets in (("8 sets", EIGHT), ("3 outside", OUTSIDE)):
                keys = [k for k in sc[base][rate] if k[0] in sets]
                df = np.array([sc[cand][rate][k][0] - sc[base][rate][k][0] for k in keys])
                da = np.array([sc[cand][rate][k][1] - sc[base][rate][k][1] for k in keys])
                print(
                    f"  {cand} vs {base}, {rate} {name}: F1 {df.mean():+.4f} ({se(df):.4f}; {(df > 1e-9).sum()}/{(df < -1e-9).sum()}), "
                    f"AUROC {da.mean():+.4f} ({se(da):.4f}; {(da > 1e-9).sum()}/{(da < -1e-9).sum()})"
                )
