"""Small models and data shared by the tests (real Lightning modules, no mocks)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dv import DataValuationMixin, IndexedDataset
from lightning_dv.datasets import make_split


class MLP(DataValuationMixin, L.LightningModule):
    """A small classifier that returns ``valuation_loss`` from its training step."""

    def __init__(
        self, d_in: int, n_classes: int, hidden: int = 64, lr: float = 0.01, regression: bool = False
    ):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
        self.lr, self.regression = lr, regression

    def forward(self, x):
        return self.net(x)

    def per_sample_loss(self, out, y):
        if self.regression:
            return ((out.squeeze(-1) - y) ** 2).reshape(out.shape[0], -1).sum(1)
        return F.cross_entropy(out, y, reduction="none")

    def training_step(self, batch, batch_idx):
        idx, x, y = batch
        out = self(x)
        return self.valuation_loss(self.per_sample_loss(out, y), idx, inputs=x, outputs=out, targets=y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def loader(x, y, batch_size=32, shuffle=True, seed=0, ids=None):
    ds = IndexedDataset(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), ids=ids)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g)


def digits_split(noise=0.1, seed=0, n_train=1000):
    return make_split("digits", noise=noise, seed=seed, n_train=n_train, n_valid=100, n_test=600)


def trainer_kwargs(tmp_path=None, **kw):
    base = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    base.update(kw)
    return base


def seeded(seed=0):
    L.seed_everything(seed, verbose=False)
    np.random.seed(seed)
