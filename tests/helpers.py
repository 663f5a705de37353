"""Small models and data shared by the tests (real Lightning modules, no mocks)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_dv import IndexedDataset
from lightning_dv.datasets import make_split
from lightning_dv.modules import MLPClassifier


class MLP(MLPClassifier):
    """The package's example classifier under a short name (``regression=`` switches the loss)."""

    def __init__(
        self, d_in: int, n_classes: int, hidden: int = 64, lr: float = 0.01, regression: bool = False
    ):
        super().__init__(d_in, n_classes, hidden=hidden, lr=lr, regression=regression)


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


class EpochSeededSampler(torch.utils.data.Sampler):
    """Shuffles with a permutation seeded by (seed, epoch): resumed fits see the same order."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def resumable_loader(x, y, batch_size=32, seed=0):
    ds = IndexedDataset(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)))
    return DataLoader(ds, batch_size=batch_size, sampler=EpochSeededSampler(len(ds), seed))
