"""A generative opinion (session 8): mixture discriminant analysis (Hastie & Tibshirani 1996), one
Gaussian mixture per class on standardised features (full covariances, 1-3 components chosen by BIC
inside each fold, reg_covar 1e-3), class priors from the fold's labels, cross-fitted over 5 folds;
the label margin p_y - max_{k != y} p_k of the posterior; the splits of session 7's recordings.

usage: python collect_mda.py DATASETS OUT.pkl   (run from the worktree root)
"""

import pickle
import sys
import time

import numpy as np
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, "benchmarks/results/s6_oof/exploration")
from collect import extra  # noqa: E402

sys.path.insert(0, "benchmarks/results/s8_refit/exploration")
from collect_refit import margin_of  # noqa: E402

from lightning_dv.datasets import make_split  # noqa: E402


def mda_proba(xtr, ytr, xte, k, seed, max_components=3):
    sc = StandardScaler().fit(xtr)
    xtr, xte = sc.transform(xtr), sc.transform(xte)
    logp = np.full((len(xte), k), -np.inf)
    for c in range(k):
        xc = xtr[ytr == c]
        if len(xc) < 2:
            continue
        best = None
        for m in range(1, max_components + 1):
            if len(xc) < 5 * m:
                break
            g = GaussianMixture(m, covariance_type="full", reg_covar=1e-3, random_state=seed, n_init=1).fit(
                xc
            )
            bic = g.bic(xc)
            if best is None or bic < best[0]:
                best = (bic, g)
        logp[:, c] = best[1].score_samples(xte) + np.log(len(xc) / len(xtr))
    return np.exp(logp - logsumexp(logp, 1, keepdims=True))


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
                s = time.time()
                p = np.zeros((len(y), k))
                cv = StratifiedKFold(5, shuffle=True, random_state=seed)
                for tr, te in cv.split(x, y):
                    p[te] = mda_proba(x[tr], y[tr], x[te], k, seed)
                res[f"{d}|{rate}|{seed}"] = dict(
                    out={"mda": margin_of(p, np.arange(k), y)}, t={"mda": time.time() - s}
                )
                pickle.dump(res, open(path, "wb"))
                print(d, rate, seed, round(time.time() - s, 1), flush=True)
