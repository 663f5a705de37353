"""Data loading and trainer settings shared by the benchmark fits (the model is ``MLPClassifier``)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_dv.data import IndexedDataset


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
