"""Extra-trees settings for the forest's opinion (session 7): out-of-bag label margins of the same
splits as collect_forest.py under several `max_features` / `min_samples_leaf` settings (300 trees).

usage: python collect_forest_grid.py DATASETS SEEDS OUT.pkl [2]   (run from the worktree root; 2: GRID2)
"""

import pickle
import sys
import time

import numpy as np
from sklearn.ensemble import ExtraTreesClassifier

sys.path.insert(0, "benchmarks/results/s6_oof/exploration")
from collect import extra  # noqa: E402  (s6's outside sets)

from lightning_dv.datasets import make_split  # noqa: E402
from lightning_dv.methods.aum.forest import out_of_bag_margins  # noqa: E402

GRID = [("sqrt", 1), ("sqrt", 3), ("sqrt", 5), (0.5, 1), (0.5, 3), (1.0, 1), (1.0, 3)]
GRID2 = [(1.0, 5), (1.0, 10), (0.5, 5)]  # second round, after the first read

if __name__ == "__main__":
    datasets, seeds, path = sys.argv[1].split(","), [int(s) for s in sys.argv[2].split(",")], sys.argv[3]
    res = {}
    for d in datasets:
        for rate in (0.1, 0.2):
            for seed in seeds:
                if d in ("circles", "blobs", "hastie"):
                    x, y = extra(d, seed)
                    split = make_split(d, noise=rate, seed=seed, x=x, y=y)
                else:
                    split = make_split(d, noise=rate, seed=seed)
                out, t = {}, {}
                for mf, leaf in GRID2 if sys.argv[4:] == ["2"] else GRID:
                    s = time.time()
                    forest = ExtraTreesClassifier(
                        300,
                        max_features=mf,
                        min_samples_leaf=leaf,
                        bootstrap=True,
                        oob_score=True,
                        random_state=seed,
                    )
                    out[(mf, leaf)] = out_of_bag_margins(
                        forest, split.x_train.astype(np.float64), split.y_train
                    )
                    t[(mf, leaf)] = time.time() - s
                res[f"{d}|{rate}|{seed}"] = dict(noisy=split.noisy, margins=out, times=t)
                pickle.dump(res, open(path, "wb"))
                print(d, rate, seed, {f"{k[0]}/{k[1]}": round(v, 2) for k, v in t.items()}, flush=True)
