"""Other views for the forest's opinion (session 8): out-of-bag margins under extra trees grown on
(a) the raw features plus their whitened principal components, (b) each tree on its own random
rotation of the standardised features (rotation-forest style, scikit-learn's BaggingClassifier over
a pipeline), and (c) a 15-nearest-neighbour vote on standardised features, cross-fitted over 5 folds;
the same splits as session 7's recordings (selection seeds 100-104).

usage: python collect_views.py DATASETS OUT.pkl   (run from the worktree root)
"""

import pickle
import sys
import time

import numpy as np
from scipy.stats import ortho_group
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.ensemble import BaggingClassifier, ExtraTreesClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import ExtraTreeClassifier

sys.path.insert(0, "benchmarks/results/s6_oof/exploration")
from collect import extra  # noqa: E402

sys.path.insert(0, "benchmarks/results/s8_refit/exploration")
from collect_refit import margin_of  # noqa: E402

from lightning_dv.datasets import make_split  # noqa: E402
from lightning_dv.methods.aum.forest import out_of_bag_margins  # noqa: E402


class Rotate(BaseEstimator, TransformerMixin):
    def __init__(self, random_state=None):
        self.random_state = random_state

    def fit(self, x, y=None):
        d = x.shape[1]
        self.r_ = ortho_group.rvs(d, random_state=self.random_state) if d > 1 else np.ones((1, 1))
        return self

    def transform(self, x):
        return x @ self.r_


def views(x, y, k, seed):
    out, t = {}, {}
    s = time.time()
    xs = StandardScaler().fit_transform(x)
    z = np.c_[x, PCA(whiten=True, random_state=seed).fit_transform(xs)].astype(np.float32)
    et = ExtraTreesClassifier(
        300, bootstrap=True, oob_score=True, max_features=1.0, min_samples_leaf=3, random_state=seed
    )
    out["pca"] = out_of_bag_margins(et, z, y)
    t["pca"] = time.time() - s
    s = time.time()
    bag = BaggingClassifier(
        make_pipeline(StandardScaler(), Rotate(), ExtraTreeClassifier(max_features=1.0, min_samples_leaf=3)),
        n_estimators=300,
        oob_score=True,
        random_state=seed,
    )
    out["rot"] = out_of_bag_margins(bag, x.astype(np.float64), y)
    t["rot"] = time.time() - s
    s = time.time()
    cv = StratifiedKFold(5, shuffle=True, random_state=seed) if np.bincount(y).min() >= 5 else 5
    p = cross_val_predict(
        make_pipeline(StandardScaler(), KNeighborsClassifier(15)), x, y, cv=cv, method="predict_proba"
    )
    out["knn"] = margin_of(p, np.arange(p.shape[1]), y)
    t["knn"] = time.time() - s
    return out, t


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
                out, t = views(split.x_train, split.y_train, split.num_classes, seed)
                res[f"{d}|{rate}|{seed}"] = dict(out=out, t=t)
                pickle.dump(res, open(path, "wb"))
                print(d, rate, seed, {k: round(v, 1) for k, v in t.items()}, flush=True)
