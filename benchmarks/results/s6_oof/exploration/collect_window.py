"""Item 3 (H3, s6): per-epoch in-training margins and the (noisy) validation loss after every epoch
of one 30-epoch `aum_val` fit per split, to read lower clips of the monitored window offline.

usage: python collect_window.py DATASETS SEEDS OUT.pkl   (run from the worktree root, PYTHONPATH=.)
"""

import pickle
import sys
import time

import lightning as L
import numpy as np
import torch
from collect import Rec, extra  # the same recording model and outside sets as collect.py

from benchmarks.fitting import indexed_loader, quiet_trainer
from benchmarks.registry import project_class, quiet_lightning
from lightning_dv.callbacks import DataValuation
from lightning_dv.datasets import make_split

torch.set_num_threads(1)


class ValLoss(L.Callback):
    def __init__(self):
        self.losses = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.losses.append(float(trainer.callback_metrics["val_loss"]))


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
                vl = ValLoss()
                with quiet_lightning():
                    val = DataValuation(AUM(monitor="val_loss"))
                    trainer = quiet_trainer(30, callbacks=[val, vl])
                    trainer.fit(
                        model,
                        indexed_loader(split.x_train, split.y_train, seed=seed),
                        indexed_loader(split.x_valid, split.y_valid, shuffle=False),
                    )
                res[f"{d}|{rate}|{seed}"] = dict(
                    noisy=split.noisy,
                    y=split.y_train,
                    m=np.stack(model.tr),
                    val_loss=np.array(vl.losses),
                    aum_val=np.asarray(val.values.values, dtype=np.float64).copy(),
                    window=float(val.values.columns["aum_window"][0]),
                )
                pickle.dump(res, open(path, "wb"))
                print(d, rate, seed, f"{time.time() - t:.1f}s", flush=True)
