"""Data loading, trainer settings and the small CNN shared by the benchmark fits."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_dv.data import IndexedDataset
from lightning_dv.mixin import DataValuationMixin
from lightning_dv.progress import quiet_trainer_settings


def indexed_loader(
    x: np.ndarray, y: np.ndarray, batch_size: int = 32, shuffle: bool = True, seed: int = 0
) -> DataLoader:
    """A DataLoader of ``(row, x, y)`` batches over float32 features and int64 labels."""
    ds = IndexedDataset(
        TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))
    )
    return DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed)
    )


def quiet_trainer(max_epochs: int, callbacks: list | None = None, **kwargs) -> L.Trainer:
    """A CPU trainer with no logger, checkpoints, progress bar or model summary (benchmarks time the fit)."""
    return L.Trainer(callbacks=callbacks or [], **quiet_trainer_settings(max_epochs=max_epochs, **kwargs))


class SmallCNN(DataValuationMixin, L.LightningModule):
    """A small CNN on 3x32x32 images (three 3x3 convolutions, 8-16-32 channels, then a linear head):
    the realistic workload of the overhead benchmark, tens of milliseconds per step of 128 on one
    CPU thread. Its ``training_step`` routes the loss through ``valuation_loss`` when ``valuate``.
    """

    def __init__(self, num_classes: int = 10, lr: float = 1e-3, valuate: bool = True) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(32, num_classes),
        )
        self.lr, self.valuate = lr, valuate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        idx, x, y = batch
        out = self(x)
        per_sample = torch.nn.functional.cross_entropy(out, y, reduction="none")
        if self.valuate:
            return self.valuation_loss(per_sample, idx, inputs=x, outputs=out, targets=y)
        return per_sample.mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)


class PooledImages(torch.utils.data.Dataset):
    """``rows`` image rows drawn from a pool of ``pool`` random 3x32x32 images (row i is image
    ``i % pool``): image-shaped data at 10^7 rows without 10^7 images in memory."""

    def __init__(self, rows: int, pool: int = 4096, num_classes: int = 10, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.rows = rows
        self.images = torch.randn(pool, 3, 32, 32, generator=g)
        self.labels = torch.randint(0, num_classes, (pool,), generator=g)

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, i: int):
        j = i % self.images.shape[0]
        return self.images[j], self.labels[j]
