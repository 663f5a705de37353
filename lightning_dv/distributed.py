"""Gathering per-row statistics across ranks, written once for every method.

Lightning's ``DistributedSampler`` pads the last batch with repeated rows and ranks see
different row counts, so statistics travel as ``(row, value)`` pairs and are scattered by row,
never by position. ``LightningModule.all_gather`` aborts on ragged shapes;
torchmetrics' ``gather_all_tensors`` handles unequal lengths.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(rows: Tensor, values: Tensor, num_rows: int, fill: float = float("nan")) -> Tensor:
    """Scatter per-row ``values`` from every rank into one ``(num_rows, *values.shape[1:])`` tensor.

    Rows seen several times (sampler padding, or several epochs) keep one of their entries; rows
    seen by no rank hold ``fill``. Every rank receives the same result.

    Args:
        rows: Row indices, shape ``(k,)``.
        values: Values of those rows, shape ``(k, ...)``.
        num_rows: Size of the dataset.
        fill: Value of rows nobody reported.

    Example:
        >>> gather_rows(torch.tensor([2, 0]), torch.tensor([5.0, 7.0]), 3).tolist()
        [7.0, nan, 5.0]
    """
    rows = rows.reshape(-1).long()
    if is_distributed():
        rows = torch.cat(gather_all_tensors(rows.contiguous()))
        values = torch.cat(gather_all_tensors(values.contiguous()))
    out = torch.full((num_rows, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
    out[rows.to(values.device)] = values
    return out


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum a tensor over ranks (returns a new tensor; identity when not distributed)."""
    t = t.clone()
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: Tensor) -> Tensor:
    """Max of a tensor over ranks (returns a new tensor; identity when not distributed)."""
    t = t.clone()
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t
