"""Out-of-sample class probabilities of several general learners (session 8), to pick the forest's
replacement per split by how well each predicts the NOISY labels (under uniform label noise the
best predictor of the noisy labels is a monotone transform of the best predictor of the clean ones):
the kept extra trees (out of bag), mixture discriminant analysis (collect_mda.py), an RBF SVM
(C=1), the logistic regression of loss_only, a 15-nearest-neighbour vote; 5 folds where cross-fitted.

usage: python collect_select.py DATASETS OUT.pkl   (run from the worktree root)
"""

import pickle
import sys
import time
import warnings

import numpy as np
from sklearn.ensemble import ExtraTreesClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

sys.path.insert(0, "benchmarks/results/s6_oof/exploration")
from collect import extra  # noqa: E402

sys.path.insert(0, "benchmarks/results/s8_refit/exploration")
from collect_mda import mda_proba  # noqa: E402

from benchmarks import baselines  # noqa: E402
from lightning_dv.datasets import make_split  # noqa: E402

warnings.filterwarnings("ignore")

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
                x, y, k = split.x_train.astype(np.float64), split.y_train, split.num_classes
                cv = StratifiedKFold(5, shuffle=True, random_state=seed)
                s, p = time.time(), {}
                et = ExtraTreesClassifier(
                    300,
                    bootstrap=True,
                    oob_score=True,
                    max_features=1.0,
                    min_samples_leaf=3,
                    random_state=seed,
                ).fit(x.astype(np.float32), y)
                p["et"] = np.nan_to_num(et.oob_decision_function_, nan=1.0 / k)
                p["mda"] = np.zeros((len(y), k))
                for tr, te in cv.split(x, y):
                    p["mda"][te] = mda_proba(x[tr], y[tr], x[te], k, seed)
                p["svm"] = cross_val_predict(
                    make_pipeline(StandardScaler(), SVC(probability=True, random_state=seed)),
                    x,
                    y,
                    cv=cv,
                    method="predict_proba",
                )
                p["logit"] = baselines.out_of_fold_proba(x, y, k, 5, seed)
                p["knn"] = cross_val_predict(
                    make_pipeline(StandardScaler(), KNeighborsClassifier(15)),
                    x,
                    y,
                    cv=cv,
                    method="predict_proba",
                )
                res[f"{d}|{rate}|{seed}"] = dict(p=p, y=y, t=time.time() - s)
                pickle.dump(res, open(path, "wb"))
                print(d, rate, seed, round(time.time() - s, 1), flush=True)
