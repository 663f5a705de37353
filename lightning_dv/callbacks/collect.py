"""Reading the whole training set out of a running fit, for the methods that value it in one go.

The complexity-gap and EcoVal callbacks value the training set before (or instead of) training:
they read every ``(idx, x, y)`` batch of the trainer's train dataloader once, map the inputs
through a ``features`` function, and gather the shards of all ranks by row index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_dv.data import IndexedDataset
from lightning_dv.distributed import PendingRecords, all_reduce_max, gather_rows, is_distributed

if TYPE_CHECKING:
    import lightning.pytorch as pl


def training_set_size(trainer: pl.Trainer) -> tuple[int | None, np.ndarray | None]:
    """Rows and user ids of the fit's training dataset, read without iterating it (None when unsized)."""
    source = trainer.fit_loop._data_source
    dataset = None
    if source.is_defined():
        dataset = getattr(source.dataloader(), "dataset", None)
    if dataset is None or not hasattr(dataset, "__len__"):
        return None, None
    n = len(dataset)
    if n == 0:
        raise ValueError(
            "the training dataset is empty (0 rows): there is nothing to value. Check the dataset "
            "passed to `trainer.fit` (a filter or split that removed every row?)."
        )
    ids = np.asarray(dataset.ids) if isinstance(dataset, IndexedDataset) and dataset.ids is not None else None
    return n, ids


@dataclass
class TrainingRows:
    """The training rows a train dataloader yielded, gathered over all ranks.

    Attributes:
        rows: Dataset rows seen by some rank, ascending (CPU, long).
        features: Their features, shape ``(len(rows), d)``.
        labels: Their labels (float64; cast as the method needs).
        num_rows: Size of the dataset.
        ids: The user's ids of those rows (from ``IndexedDataset(ids=...)``), or None.
    """

    rows: Tensor
    features: Tensor
    labels: Tensor
    num_rows: int
    ids: np.ndarray | None

    @property
    def complete(self) -> bool:
        """Whether every dataset row was seen."""
        return self.rows.numel() == self.num_rows


@torch.no_grad()
def collect_training_rows(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    features: Callable[[Tensor], Tensor] | None = None,
    dtype: torch.dtype = torch.float64,
    caller: str = "this callback",
) -> TrainingRows:
    """Read every ``(idx, x, y)`` batch of the trainer's train dataloader once and gather all ranks.

    Args:
        trainer: A trainer inside ``fit`` (any hook from ``on_fit_start`` on).
        pl_module: The module being fit (its device is used unless ``features`` has parameters).
        features: Maps a batch of inputs to ``(batch, d)``; default: flatten. Runs under no_grad.
        dtype: dtype of the returned features.
        caller: Name used in error messages.

    Returns:
        The gathered :class:`TrainingRows` (identical on every rank).
    """
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()  # Lightning builds the loader lazily; this is how it does so itself
    loader = trainer.train_dataloader
    if not isinstance(loader, DataLoader):
        raise TypeError(
            f"{caller} needs a single train DataLoader whose batches are (idx, x, y) from IndexedDataset; "
            f"got {type(loader).__name__}."
        )
    device = pl_module.device
    if isinstance(features, nn.Module):
        p = next(features.parameters(), None)
        device = p.device if p is not None else device
    rows, feats, labels = [], [], []
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) < 3:
            raise TypeError(
                f"{caller} expects batches (idx, x, y): wrap the training dataset in "
                "lightning_dv.IndexedDataset so every batch carries its row index."
            )
        idx, x, y = batch[0], batch[1], batch[2]
        x = torch.as_tensor(x).to(device)
        f = x.reshape(x.shape[0], -1) if features is None else features(x)
        if not isinstance(f, Tensor) or f.ndim != 2 or f.shape[0] != x.shape[0]:
            raise ValueError(
                f"`features` must map a batch of {x.shape[0]} inputs to a 2-D tensor (batch, dim); "
                f"got {tuple(getattr(f, 'shape', ()))}."
            )
        rows.append(torch.as_tensor(idx).reshape(-1).long().to(device))
        feats.append(f.detach().to(dtype))
        labels.append(torch.as_tensor(y).reshape(-1).to(device, torch.float64))
    if not rows:
        raise ValueError("the train dataloader yielded no batch; there is nothing to value.")
    num_rows = len(loader.dataset)
    row_t = torch.cat(rows)
    feats_all = gather_rows(row_t, torch.cat(feats), num_rows)
    labels_all = gather_rows(row_t, torch.cat(labels), num_rows)
    seen = torch.nonzero(~torch.isnan(labels_all)).reshape(-1)
    dataset_ids = loader.dataset.ids if isinstance(loader.dataset, IndexedDataset) else None
    seen_cpu = seen.cpu()
    return TrainingRows(
        rows=seen_cpu,
        features=feats_all[seen],
        labels=labels_all[seen],
        num_rows=num_rows,
        ids=None if dataset_ids is None else np.asarray(dataset_ids)[seen_cpu.numpy()],
    )


class RowLabels:
    """The integer class label of every training row, recorded from the steps' ``targets`` during fit.

    Rows not seen yet hold ``-1``. Labels are kept as ``int16`` (2 bytes per row), as ``int32`` once
    a flush meets one outside its range (checked per flush, before the write: exact). Each step's
    labels are held and written with one scatter every
    few dozen steps and before :meth:`merged` (:class:`~lightning_dv.distributed.PendingRecords`;
    a row's label is the same in every step, so the order of the writes does not matter; no
    host sync); :meth:`merged` combines the ranks' records with one all-reduce (max, as every
    label is >= 0).

    Example:
        >>> labels = RowLabels(4, torch.device("cpu"))
        >>> labels.record(torch.tensor([2, 0]), torch.tensor([1, 3]))
        >>> labels.merged().tolist()
        [3, -1, 1, -1]
        >>> labels.record(torch.tensor([1]), torch.tensor([40_000]))  # past int16: kept as int32
        >>> labels.merged().tolist(), labels.labels.dtype
        ([3, 40000, 1, -1], torch.int32)
    """

    def __init__(self, num_rows: int, device: torch.device) -> None:
        self.labels = torch.full((num_rows,), -1, dtype=torch.int16, device=device)  # 2 bytes per row
        self._pending = PendingRecords()

    def record(self, idx: Tensor, targets: object) -> None:
        """Keep ``targets`` when they are one integer class label per row of ``idx`` (else ignore them)."""
        if isinstance(targets, Tensor) and targets.ndim == 1 and targets.shape == idx.shape:
            if not targets.is_floating_point() and self._pending.add(idx, targets.detach()):
                self.flush()

    def flush(self) -> None:
        """Write the held labels into ``labels``."""
        taken = self._pending.take()
        if taken is not None:
            rows, targets = taken
            narrow = torch.iinfo(self.labels.dtype)
            if self.labels.dtype != torch.int32 and targets.numel():
                low, high = torch.aminmax(targets)
                if int(low) < narrow.min or int(high) > narrow.max:
                    self.labels = self.labels.to(torch.int32)
            self.labels.index_copy_(
                0, rows.to(self.labels.device), targets.to(self.labels.device, self.labels.dtype)
            )

    def merged(self, sync: bool = True) -> Tensor | None:
        """Labels on CPU, merged over ranks (``sync``: a collective every rank must call), or None if none."""
        self.flush()
        if sync and is_distributed():  # one dtype on every rank (a rank may have widened its labels)
            labels = all_reduce_max(self.labels.to(torch.int32)).cpu().long()
        else:
            labels = self.labels.cpu().long()
        return labels if bool((labels >= 0).any()) else None
