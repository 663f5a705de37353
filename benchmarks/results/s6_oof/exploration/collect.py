"""Per-split signals for the out-of-fold (OOF) margin study (H3, session 6), recorded once.

For every split (dataset x rate x seed):
  * the `aum_val` fit (the benchmark entry's own fit: MLP(64), Adam lr 0.01, batch 32, 30 epochs,
    `AUM(monitor="val_loss")`, the noisy validation rows as the validation loader), recording
    every row's in-training assigned-label margin at every epoch (`aum` = window 10 is read
    offline from these) and the exported `aum_val` values;
  * K = 5 out-of-fold fits of the same MLP (same init scheme, Adam lr 0.01, batch 32) on 4 folds
    for 60 epochs, as a plain torch loop; after every epoch the held-out fold's eval-mode logits.

usage: python collect.py DATASETS SEEDS OUT.pkl   (run from the worktree root)
"""

import pickle
import sys
import time

import lightning as L
import numpy as np
import torch
from sklearn.datasets import make_blobs, make_circles, make_hastie_10_2
from sklearn.model_selection import StratifiedKFold

from benchmarks.fitting import indexed_loader, quiet_trainer
from benchmarks.registry import project_class, quiet_lightning
from lightning_dv.callbacks import DataValuation
from lightning_dv.datasets import make_split
from lightning_dv.methods.aum.objective import assigned_margin
from lightning_dv.modules import MLPClassifier, ValidatedMLPClassifier

torch.set_num_threads(1)
K, EPOCHS_OOF = 5, 60


def extra(name, seed):  # the three outside sets of README 2b, as in s3/s4/s5 exploration
    rng = np.random.default_rng(1000 + seed)
    if name == "circles":
        x, y = make_circles(4100, noise=0.15, factor=0.5, random_state=seed)
        x = np.c_[x, rng.normal(size=(4100, 8))]
    elif name == "blobs":
        x, y = make_blobs(4100, n_features=8, centers=5, cluster_std=3.0, random_state=seed)
    elif name == "hastie":
        x, y = make_hastie_10_2(4100, random_state=seed)
        y = (y > 0).astype(int)
    return x.astype(np.float32), y.astype(np.int64)


class Rec(ValidatedMLPClassifier):
    def on_fit_start(self):
        self.tr = []

    def training_step(self, batch, batch_idx):
        idx, x, y = batch
        if batch_idx == 0:
            self.cur = np.full(self.n_rows, np.nan, np.float32)
            self.tr.append(self.cur)
        out = self(x)
        self.cur[idx.numpy()] = assigned_margin(out.detach(), y).numpy()
        return self.valuation_loss(self.per_sample_loss(out, y), idx, inputs=x, outputs=out, targets=y)


def oof_logits(x, y, c, seed):
    """(EPOCHS_OOF, N, C) held-out eval-mode logits and the fold of every row."""
    n = len(y)
    fold = np.zeros(n, np.int64)
    # stratified where every class has >= K rows, else plain shuffled folds
    counts = np.bincount(y, minlength=c)
    if counts[counts > 0].min() >= K:
        for f, (_, te) in enumerate(StratifiedKFold(K, shuffle=True, random_state=seed).split(x, y)):
            fold[te] = f
    else:
        fold = np.random.default_rng(seed).permutation(np.arange(n) % K)
    out = np.zeros((EPOCHS_OOF, n, c), np.float32)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    for f in range(K):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        torch.manual_seed(seed * 100 + f)
        net = MLPClassifier(x.shape[1], c, hidden=64).net
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        g = torch.Generator().manual_seed(seed * 100 + f)
        for e in range(EPOCHS_OOF):
            net.train()
            perm = torch.as_tensor(tr)[torch.randperm(len(tr), generator=g)]
            for b in range(0, len(perm), 32):
                i = perm[b : b + 32]
                loss = torch.nn.functional.cross_entropy(net(xt[i]), yt[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                out[e, te] = net(xt[te]).numpy()
    return out, fold


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
                model.eval()
                with torch.no_grad():
                    acc = float(
                        (model(torch.as_tensor(split.x_test)).argmax(1).numpy() == split.y_test).mean()
                    )
                t1 = time.time()
                zo, fold = oof_logits(split.x_train, split.y_train, split.num_classes, seed)
                res[f"{d}|{rate}|{seed}"] = dict(
                    noisy=split.noisy,
                    y=split.y_train,
                    k=split.num_classes,
                    m=np.stack(model.tr),
                    aum_val=np.asarray(val.values.values, dtype=np.float64).copy(),
                    window=float(val.values.columns["aum_window"][0]),
                    acc30=acc,
                    zo=zo,
                    fold=fold,
                    t_fit=t1 - t,
                    t_oof=time.time() - t1,
                )
                pickle.dump(res, open(path, "wb"))
                print(
                    d, rate, seed, f"fit {t1 - t:.1f}s oof {time.time() - t1:.1f}s acc {acc:.3f}", flush=True
                )
