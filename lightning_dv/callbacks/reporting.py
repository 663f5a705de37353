"""Logging and export shared by every valuation callback: histograms, summary scalars, detection."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor

from lightning_dv.metrics import detection_auroc, kmeans_f1

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_dv.values import DataValues

_warned_loggers: set[int] = set()


def summary_scalars(values: Tensor, prefix: str, noisy: Tensor | None = None) -> dict[str, float]:
    """Summary statistics of the values, plus detection F1 / AUROC when noisy rows are known.

    Example:
        >>> s = summary_scalars(torch.tensor([0.0, 1.0, 2.0]), "dv")
        >>> s["dv/mean"], s["dv/min"]
        (1.0, 0.0)
    """
    v = values.detach().double().cpu()
    out = {
        f"{prefix}/mean": float(v.mean()),
        f"{prefix}/std": float(v.std()) if v.numel() > 1 else 0.0,
        f"{prefix}/min": float(v.min()),
        f"{prefix}/max": float(v.max()),
        f"{prefix}/fraction_negative": float((v < 0).double().mean()),
    }
    if noisy is not None:
        out[f"{prefix}/detection_f1"] = kmeans_f1(v, noisy)
        out[f"{prefix}/detection_auroc"] = detection_auroc(v, noisy)
    return out


@rank_zero_only
def log_values(
    trainer: pl.Trainer,
    values: Tensor,
    step: int,
    prefix: str = "data_values",
    noisy: Tensor | None = None,
    histogram: bool = True,
) -> dict[str, float]:
    """Log a value histogram (TensorBoard) and summary scalars (every logger) from rank zero.

    Args:
        trainer: The running trainer; its loggers receive the data.
        values: One value per row.
        step: Step recorded with the data (callbacks use the epoch number).
        prefix: Tag prefix, e.g. ``"data_values/lossval"``.
        noisy: Optional boolean mask of known-noisy rows, enabling detection F1 / AUROC.
        histogram: Log the histogram where the logger supports it.

    Returns:
        The logged scalars.
    """
    scalars = summary_scalars(values, prefix, noisy)
    for logger in trainer.loggers:
        logger.log_metrics(scalars, step=step)
        if not histogram:
            continue
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_histogram(
                f"{prefix}/histogram", values.detach().float().cpu(), global_step=step
            )
            logger.experiment.flush()
        elif id(logger) not in _warned_loggers:
            _warned_loggers.add(id(logger))
            rank_zero_warn(
                f"{type(logger).__name__} cannot show histograms of data values; it receives the summary "
                f"scalars ({prefix}/mean, /std, ...) only. Add a TensorBoardLogger to see the histograms."
            )
    return scalars


def export_values(trainer: pl.Trainer | None, values: DataValues, path: str | os.PathLike) -> None:
    """Write ``values`` to ``path`` atomically, from rank zero only (all ranks hold the same values)."""
    if trainer is None or trainer.is_global_zero:
        values.save(path)


def as_noisy_mask(noisy, num_rows: int) -> Tensor | None:
    """Normalise the user's ``known_noisy`` argument (indices or mask) to a boolean mask, or None."""
    if noisy is None:
        return None
    from lightning_dv.metrics import noisy_mask

    return noisy_mask(np.asarray(noisy.cpu() if isinstance(noisy, torch.Tensor) else noisy), num_rows)
