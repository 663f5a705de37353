"""The small Lightning classifier the benchmarks train with and without a valuation objective."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dv.data import IndexedDataset
from lightning_dv.mixin import DataValuationMixin


class BenchClassifier(DataValuationMixin, L.LightningModule):
    """An MLP (or, with ``hidden=0``, a logistic regression) trained with Adam on cross-entropy.

    Args:
        in_features: Input dimension.
        num_classes: Number of classes.
        hidden: Width of the single hidden layer; 0 gives a linear (logistic) model.
        lr: Adam learning rate of the model (LossVal's paper: 0.01, batch 32).
        valuate: Route the loss through :meth:`valuation_loss` (needs a ``DataValuation``
            callback); ``False`` is the plain fit the overhead benchmark compares against.

    Example:
        >>> model = BenchClassifier(4, 3)
        >>> model.net(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self, in_features: int, num_classes: int, hidden: int = 64, lr: float = 0.01, valuate: bool = True
    ):
        super().__init__()
        if hidden > 0:
            self.net = nn.Sequential(
                nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
            )
        else:
            self.net = nn.Linear(in_features, num_classes)
        self.lr = lr
        self.valuate = valuate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        idx, x, y = batch
        logits = self.net(x)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        if not self.valuate:
            return per_sample.mean()
        return self.valuation_loss(per_sample, idx, inputs=x, outputs=logits, targets=y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


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
    return L.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks or [],
        accelerator=kwargs.pop("accelerator", "cpu"),
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )
