"""Second forest pass on the rows the first pass keeps (session 8): for every split of the selection
seeds recorded by session 7 (/tmp/s7/{A,B}.pkl: `aum_val` fits; /tmp/s7/{GA,GB}.pkl: the kept forest's
out-of-bag margins), the first-pass sum c1 = a / s_a + 0.5 f / s_f is computed, the rows it scores
lowest are set aside (several rules), and the same extra-trees forest is grown again on the others:
kept rows are scored out of bag, set-aside rows by every tree (none saw them).

usage: python collect_refit.py DATASETS OUT.pkl   (run from the worktree root)
"""

import pickle
import sys
import time
import warnings

import numpy as np
import torch
from sklearn.ensemble import ExtraTreesClassifier

sys.path.insert(0, "benchmarks/results/s6_oof/exploration")
from an import scale  # noqa: E402
from collect import extra  # noqa: E402

from lightning_dv.datasets import make_split  # noqa: E402
from lightning_dv.methods.calibration import calibrate  # noqa: E402
from lightning_dv.metrics import two_means_split  # noqa: E402


def unit(v):
    s = scale(v)
    return v / s if s > 0 else v


def margin_of(proba, classes, y):
    own = np.searchsorted(classes, y)
    rows = np.arange(len(y))
    p = np.array(proba, dtype=np.float64)
    bad = ~np.isfinite(p).all(1)
    p[bad] = 0.0
    lab = p[rows, own].copy()
    p[rows, own] = -np.inf
    m = lab - p.max(1) if p.shape[1] > 1 else lab
    m[bad] = 0.0
    return m


def refit(x, y, keep, seed, k):
    """margins of all rows under a forest grown on the kept rows (out of bag for them)."""
    forest = ExtraTreesClassifier(
        300, bootstrap=True, oob_score=True, max_features=1.0, min_samples_leaf=3, random_state=seed
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        forest.fit(x[keep], y[keep])
    out = np.zeros(len(y))
    out[keep] = margin_of(forest.oob_decision_function_, forest.classes_, y[keep])
    if (~keep).any():
        p = forest.predict_proba(x[~keep])
        full = np.zeros((len(p), k))
        full[:, forest.classes_] = p
        out[~keep] = margin_of(full, np.arange(k), y[~keep])
    return out


if __name__ == "__main__":
    datasets, path = sys.argv[1].split(","), sys.argv[2]
    rec, grid = {}, {}
    for p in ("/tmp/s7/A.pkl", "/tmp/s7/B.pkl"):
        rec.update(pickle.load(open(p, "rb")))
    for p in ("/tmp/s7/GA.pkl", "/tmp/s7/GB.pkl"):
        grid.update(pickle.load(open(p, "rb")))
    res = {}
    for key in sorted(rec):
        d, rate, seed = key.split("|")
        if d not in datasets:
            continue
        rate, seed = float(rate), int(seed)
        r = rec[key]
        if d in ("circles", "blobs", "hastie"):
            x, y = extra(d, seed)
            split = make_split(d, noise=rate, seed=seed, x=x, y=y)
        else:
            split = make_split(d, noise=rate, seed=seed)
        assert (split.noisy == r["noisy"]).all()
        x, y = split.x_train.astype(np.float32), split.y_train
        av = np.nanmean(r["m"][: int(r["window"])], 0)
        a10 = np.nanmean(r["m"][:10], 0)
        f1 = grid[key]["margins"][(1.0, 3)]
        out = {"f1": f1}
        t = time.time()
        for base, am in (("val", av), ("a10", a10)):
            c1 = unit(am) + 0.5 * unit(f1)
            v1 = calibrate(torch.as_tensor(c1, dtype=torch.float64), gate=0.0).numpy()
            rules = {
                "neg": c1 >= 0,  # set aside rows whose sum says the label loses
                "negf": (c1 >= 0) & (f1 >= 0),
                "flag": ~two_means_split(v1).numpy(),  # set aside the flagged rows
            }
            for q in (0.1, 0.2, 0.3):
                rules[f"q{q}"] = c1 > np.quantile(c1, q)
            for name, keep in rules.items():
                out[(base, name)] = refit(x, y, keep, seed, split.num_classes)
        res[key] = dict(out=out, t=time.time() - t)
        pickle.dump(res, open(path, "wb"))
        print(key, f"{time.time() - t:.1f}s", flush=True)
