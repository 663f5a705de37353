"""The one reporting path of every valuation callback: scalars, histogram, figures, rank-zero export.

Both :class:`~lightning_dv.callbacks.DataValuation` and
:class:`~lightning_dv.callbacks.WholeSetValuation` publish through these functions, so every
method logs the same tags and exports the same way.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
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
    values = values.detach().cpu()
    v = values.double()
    out = {
        f"{prefix}/mean": float(v.mean()),
        f"{prefix}/std": float(v.std()) if v.numel() > 1 else 0.0,
        f"{prefix}/min": float(v.min()),
        f"{prefix}/max": float(v.max()),
        # an exact count over N: the mean of a float64 0/1 copy gave the same number
        f"{prefix}/fraction_negative": int((values < 0).sum()) / values.numel(),
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
    if not trainer.loggers:  # nothing to log: no O(N) statistics either
        return {}
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
    """Write ``values`` to ``path`` atomically from rank zero, then wait at a barrier.

    Every rank holds the same values; one writes, and the barrier keeps the other ranks from
    reading (or a launcher from collecting) the file before it exists.
    """
    if trainer is None or trainer.is_global_zero:
        values.save(path)
        rank_zero_info(f"{values.method}: wrote {len(values)} values to {path}")
    if trainer is not None:
        trainer.strategy.barrier("lightning_dv.export")


def publish(
    trainer: pl.Trainer,
    values: DataValues,
    *,
    prefix: str,
    step: int,
    noisy: Tensor | None = None,
    export_path: str | os.PathLike | None = None,
) -> None:
    """Log the final values (scalars, histogram, trajectory figure) and export them.

    Args:
        trainer: The running trainer.
        values: The values, one per valued row (``values.index``).
        prefix: Tag prefix, e.g. ``"data_values/complexity_gap"``.
        step: Step recorded with the logged data.
        noisy: Optional boolean mask of known-noisy rows, aligned with ``values.values``.
        export_path: Optional destination (.csv, .parquet, .npz).
    """
    log_values(trainer, torch.as_tensor(values.values), step=step, prefix=prefix, noisy=noisy)
    if trainer.is_global_zero:
        log_trajectory_figure(trainer, values, prefix, step)
    if export_path is not None:
        export_values(trainer, values, export_path)


def log_trajectory_figure(
    trainer: pl.Trainer, values: DataValues, prefix: str, step: int, k: int = 5
) -> None:
    """A TensorBoard figure of the value trajectories of the ``k`` lowest and highest rows.

    Nothing is logged without a trajectory of at least two epochs, a TensorBoard logger, or matplotlib.
    """
    if values.trajectory is None or values.trajectory.shape[0] < 2:
        return
    tb = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
    if not tb:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, values.trajectory.shape[0] + 1)
    for sel, color in ((values.lowest(k), "tab:red"), (values.highest(k), "tab:blue")):
        for j in range(len(sel)):
            ax.plot(epochs, sel.trajectory[:, j], color=color, alpha=0.8, label=f"row {sel.index[j]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("value")
    ax.set_title(f"{values.method}: {k} lowest (red) and highest (blue) rows")
    ax.legend(fontsize=6, ncol=2)
    for lg in tb:
        lg.experiment.add_figure(f"{prefix}/trajectories", fig, global_step=step)
    plt.close(fig)


def as_noisy_mask(noisy, num_rows: int) -> Tensor | None:
    """Normalise the user's ``known_noisy`` argument (indices or mask) to a boolean mask, or None."""
    if noisy is None:
        return None
    from lightning_dv.metrics import noisy_mask

    return noisy_mask(np.asarray(noisy.cpu() if isinstance(noisy, torch.Tensor) else noisy), num_rows)


# -- the lowest rows themselves and per-class summaries ---------------------------------------------
def is_image_shaped(shape: tuple[int, ...]) -> bool:
    """Whether one input of this shape is an image: ``(H, W)`` or ``(C, H, W)`` with C in 1, 3, 4.

    Example:
        >>> is_image_shaped((3, 32, 32)), is_image_shaped((28, 28)), is_image_shaped((64,))
        (True, True, False)
    """
    if len(shape) == 2:
        return min(shape) >= 4
    return len(shape) == 3 and shape[0] in (1, 3, 4) and min(shape[1:]) >= 4


def image_grid(images: Tensor, ncol: int = 8, pad: int = 2) -> Tensor:
    """Tile ``(k, C, H, W)`` (or ``(k, H, W)``) images into one ``(C, H', W')`` grid in [0, 1].

    Every image is min-max scaled on its own, so normalised inputs stay visible.

    Example:
        >>> image_grid(torch.rand(5, 1, 4, 4), ncol=4).shape
        torch.Size([1, 14, 26])
    """
    x = images.detach().float().cpu()
    if x.ndim == 3:
        x = x[:, None]
    k, c, h, w = x.shape
    flat = x.reshape(k, -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    x = ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(k, c, h, w)
    ncol = min(ncol, k)
    nrow = (k + ncol - 1) // ncol
    grid = torch.ones(c, nrow * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(k):
        r, q = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top : top + h, left : left + w] = x[i]
    return grid


def lowest_rows_markdown(values: DataValues, k: int = 10) -> str:
    """A markdown table of the ``k`` lowest rows (row, id, label, value, flagged) for TensorBoard's text tab.

    Example:
        >>> from lightning_dv.values import DataValues
        >>> print(lowest_rows_markdown(DataValues([2.0, -1.0], labels=[0, 1]), k=1))
        | row | label | value | flagged |
        |---|---|---|---|
        | 1 | 1 | -1.0000 | yes |
    """
    low = values.lowest(k)
    head = ["row"] + (["id"] if low.ids is not None else []) + (["label"] if low.labels is not None else [])
    lines = ["| " + " | ".join([*head, "value", "flagged"]) + " |", "|---" * (len(head) + 2) + "|"]
    for j in range(len(low)):
        cells = [str(low.index[j])]
        if low.ids is not None:
            cells.append(str(low.ids[j]))
        if low.labels is not None:
            cells.append(str(low.labels[j]))
        cells += [f"{low.values[j]:.4f}", "yes" if low.flagged[j] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_scalars(values: Tensor, labels: Tensor, prefix: str) -> dict[str, float]:
    """Mean value and share flagged (2-means) of every class: ``{prefix}/class_<c>/mean`` and ``.../flagged``.

    Rows with label ``-1`` (never seen) are left out.

    Example:
        >>> s = per_class_scalars(torch.tensor([0.0, 1.0, 5.0]), torch.tensor([0, 0, 1]), "dv")
        >>> s["dv/class_0/mean"], s["dv/class_1/mean"]
        (0.5, 5.0)
    """
    from lightning_dv.metrics import two_means_split

    v, y = values.detach().double().cpu(), labels.detach().long().cpu()
    known = y >= 0
    flags = torch.zeros_like(known)
    if known.sum() >= 2:
        flags[known] = two_means_split(v[known])
    out = {}
    for c in torch.unique(y[known]).tolist():
        m = y == c
        out[f"{prefix}/class_{c}/mean"] = float(v[m].mean())
        out[f"{prefix}/class_{c}/flagged"] = float(flags[m].double().mean())
    return out


def lowest_inputs(trainer: pl.Trainer, rows: np.ndarray) -> Tensor | None:
    """The inputs of ``rows`` read from the train dataset (items ``(row, x, ...)``), or None if unreadable."""
    dataset = getattr(trainer.train_dataloader, "dataset", None)
    try:
        items = [dataset[int(r)] for r in rows]
        return torch.stack([torch.as_tensor(it[1]) for it in items])
    except Exception:  # noqa: BLE001 - a dataset we cannot read simply gets the text table
        return None


@rank_zero_only
def log_lowest_rows(trainer: pl.Trainer, values: DataValues, step: int, prefix: str, k: int = 16) -> None:
    """Show the ``k`` lowest-valued rows in TensorBoard.

    Image-shaped inputs (read back from the train dataset) give a grid ``{prefix}/lowest_images``,
    lowest first, with the rows and labels in the text ``{prefix}/lowest_images_rows``; other
    inputs give a markdown table ``{prefix}/lowest_rows`` of row, id, label, value, flagged.
    """
    loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
    if not loggers:
        return
    low = values.lowest(k)
    inputs = lowest_inputs(trainer, low.index)
    images = inputs is not None and is_image_shaped(tuple(inputs.shape[1:]))
    for logger in loggers:
        if images:
            logger.experiment.add_image(f"{prefix}/lowest_images", image_grid(inputs), global_step=step)
            logger.experiment.add_text(f"{prefix}/lowest_images_rows", lowest_rows_markdown(values, k), step)
        else:
            logger.experiment.add_text(f"{prefix}/lowest_rows", lowest_rows_markdown(values, k), step)
        logger.experiment.flush()
