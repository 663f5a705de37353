"""Per-split signals for the feature-space second-opinion study (session 7), recorded once.

For every split (dataset x rate x seed) of the selection seeds:
  * the `aum_val` fit (the benchmark entry's own fit: MLP(64), Adam lr 0.01, batch 32, 30 epochs,
    `AUM(monitor="val_loss")`, the noisy validation rows as the validation loader), recording
    every row's in-training assigned-label margin at every epoch (`aum` = window 10 is read
    offline from these) and the exported `aum_val` values and window;
  * second opinions computed on the features alone, each a class-probability matrix from models
    that never saw the row: a random forest's out-of-bag probabilities (300 trees, default depth,
    sklearn's `oob_decision_function_`), extra-trees out-of-bag (300 trees, bootstrap), a
    histogram gradient-boosting model's 5-fold `cross_val_predict` probabilities, a logistic
    regression's 5-fold probabilities (loss_only's), and Data-OOB with trees (the baseline's values).

usage: python collect_forest.py DATASETS SEEDS OUT.pkl   (run from the worktree root)
"""

import pickle
import sys
import time

import lightning as L
import numpy as np
import torch
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_predict

sys.path.insert(0, "benchmarks/results/s6_oof/exploration")
from collect import Rec, extra  # noqa: E402  (s6's recorder and outside sets)

from benchmarks import baselines  # noqa: E402
from benchmarks.fitting import indexed_loader, quiet_trainer  # noqa: E402
from benchmarks.registry import project_class, quiet_lightning  # noqa: E402
from lightning_dv.callbacks import DataValuation  # noqa: E402
from lightning_dv.datasets import make_split  # noqa: E402

torch.set_num_threads(1)


def full_proba(p, classes, k):
    out = np.zeros((len(p), k))
    out[:, classes] = p
    return out


def second_opinions(x, y, k, seed):
    t, out = {}, {}
    s = time.time()
    rf = RandomForestClassifier(300, oob_score=True, random_state=seed, n_jobs=1).fit(x, y)
    out["rf"] = full_proba(np.nan_to_num(rf.oob_decision_function_, nan=1.0 / k), rf.classes_, k)
    t["rf"] = time.time() - s
    s = time.time()
    et = ExtraTreesClassifier(300, bootstrap=True, oob_score=True, random_state=seed, n_jobs=1).fit(x, y)
    out["et"] = full_proba(np.nan_to_num(et.oob_decision_function_, nan=1.0 / k), et.classes_, k)
    t["et"] = time.time() - s
    s = time.time()
    cv = StratifiedKFold(5, shuffle=True, random_state=seed) if np.bincount(y).min() >= 5 else 5
    out["hgb"] = cross_val_predict(
        HistGradientBoostingClassifier(random_state=seed), x, y, cv=cv, method="predict_proba"
    )
    t["hgb"] = time.time() - s
    s = time.time()
    out["logit"] = baselines.out_of_fold_proba(x, y, k, 5, seed)
    t["logit"] = time.time() - s
    s = time.time()
    out["oob_tree"] = baselines.data_oob(x, y, k, model="tree", seed=seed).values.astype(np.float64)
    t["oob_tree"] = time.time() - s
    return out, t


if __name__ == "__main__":
    datasets, seeds, path = sys.argv[1].split(","), [int(s) for s in sys.argv[2].split(",")], sys.argv[3]
    AUM, res = project_class("aum"), {}
    for d in datasets:
        for rate in (0.1, 0.2):
            for seed in seeds:
                t = time.time()
                if d in ("circles", "blobs", "hastie"):
                    x, y = extra(d, seed)
                    split = make_split(d, noise=rate, seed=seed, x=x, y=y)
                else:
                    split = make_split(d, noise=rate, seed=seed)
                L.seed_everything(seed, verbose=False)
                model = Rec(split.x_train.shape[1], split.num_classes, hidden=64)
                model.n_rows = len(split.x_train)
                with quiet_lightning():
                    val = DataValuation(AUM(monitor="val_loss"))
                    trainer = quiet_trainer(30, callbacks=[val])
                    trainer.fit(
                        model,
                        indexed_loader(split.x_train, split.y_train, seed=seed),
                        indexed_loader(split.x_valid, split.y_valid, shuffle=False),
                    )
                t1 = time.time()
                ops, times = second_opinions(split.x_train, split.y_train, split.num_classes, seed)
                res[f"{d}|{rate}|{seed}"] = dict(
                    noisy=split.noisy,
                    y=split.y_train,
                    k=split.num_classes,
                    m=np.stack(model.tr),
                    aum_val=np.asarray(val.values.values, dtype=np.float64).copy(),
                    window=float(val.values.columns["aum_window"][0]),
                    ops=ops,
                    times=times,
                    t_fit=t1 - t,
                )
                pickle.dump(res, open(path, "wb"))
                print(
                    d,
                    rate,
                    seed,
                    f"fit {t1 - t:.1f}s",
                    {k: round(v, 2) for k, v in times.items()},
                    flush=True,
                )
