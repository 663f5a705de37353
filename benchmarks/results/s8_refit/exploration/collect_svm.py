"""A smooth-boundary opinion (session 8): an RBF support-vector classifier on standardised features,
cross-fitted over 5 folds (scikit-learn's SVC, C=1, gamma="scale"; probabilities by Platt scaling
inside each fold), as the label margin p_y - max_{k != y} p_k; the splits of session 7's recordings.

usage: python collect_svm.py DATASETS OUT.pkl   (run from the worktree root)
"""

import pickle
import sys
import time

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

sys.path.insert(0, "benchmarks/results/s6_oof/exploration")
from collect import extra  # noqa: E402

sys.path.insert(0, "benchmarks/results/s8_refit/exploration")
from collect_refit import margin_of  # noqa: E402

from lightning_dv.datasets import make_split  # noqa: E402

if __name__ == "__main__":
    datasets, path = sys.argv[1].split(","), sys.argv[2]
    res = {}
    for d in datasets:
        for rate in (0.1, 0.2):
            for seed in range(100, 105):
                if d in ("circles", "blobs", "hastie"):
                    x, y = extra(d, seed)
                    split = make_split(d, noise=rate, seed=seed, x=x, y=y)
                else:
                    split = make_split(d, noise=rate, seed=seed)
                x, y = split.x_train, split.y_train
                cv = StratifiedKFold(5, shuffle=True, random_state=seed) if np.bincount(y).min() >= 5 else 5
                out, t = {}, {}
                for c in (0.3, 1.0, 3.0):
                    s = time.time()
                    p = cross_val_predict(
                        make_pipeline(StandardScaler(), SVC(C=c, probability=True, random_state=seed)),
                        x,
                        y,
                        cv=cv,
                        method="predict_proba",
                    )
                    out[f"svm{c}"] = margin_of(p, np.arange(p.shape[1]), y)
                    t[f"svm{c}"] = time.time() - s
                res[f"{d}|{rate}|{seed}"] = dict(out=out, t=t)
                pickle.dump(res, open(path, "wb"))
                print(d, rate, seed, {k: round(v, 1) for k, v in t.items()}, flush=True)
