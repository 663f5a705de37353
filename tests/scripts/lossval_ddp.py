"""Run by tests/test_ddp.py: a 2-process CPU (gloo) DDP fit with LossVal; each rank saves its result.

Usage: python lossval_ddp.py OUT_DIR
"""

import os
import sys

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_dv import DataValuation, IndexedDataset, LossVal
from lightning_dv.modules import MLPClassifier

out = sys.argv[1]
torch.set_num_threads(1)
rng = np.random.default_rng(0)
x = rng.normal(size=(101, 6)).astype(np.float32)  # 101 rows: DistributedSampler pads one duplicate
y = (x[:, 0] > 0).astype(np.int64)
xv = rng.normal(size=(20, 6)).astype(np.float32)
L.seed_everything(0, verbose=False)
model = MLPClassifier(6, 2, hidden=16)
cb = DataValuation(LossVal(validation=xv), export_path=os.path.join(out, "values.csv"))
trainer = L.Trainer(
    max_epochs=2,
    accelerator="cpu",
    devices=2,
    strategy="ddp",
    callbacks=[cb],
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    accumulate_grad_batches=int(os.environ.get("DV_ACCUMULATE", "1")),
)
trainer.fit(
    model, DataLoader(IndexedDataset(TensorDataset(torch.from_numpy(x), torch.from_numpy(y))), batch_size=8)
)
torch.save(
    {
        "weights": model.dv_state.weights.all(),
        "values": torch.from_numpy(cb.values.values),
        "steps": cb.optimizer_steps,
        "model": {k: v.clone() for k, v in model.state_dict().items()},
    },
    os.path.join(out, f"rank{trainer.global_rank}.pt"),
)
