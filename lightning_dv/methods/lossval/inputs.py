"""What LossVal reads besides the weights: the validation inputs, the OT features, the bounded loss.

The validation set comes from ``LossVal(validation=...)`` (a tensor, an array, ``(x_val, y_val)``,
a map-style dataset or a file path) or, when absent, from the validation dataloader given to
``Trainer.fit``; only its inputs are used (the OT term compares features, never labels).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lightning_dv._validation import check_finite_rows, check_validation_container
from lightning_dv.io import load_if_path

if TYPE_CHECKING:
    import lightning.pytorch as pl

#: The paper's epsilon inside ``-log(p + eps)``.
LOG_EPS = 1e-8


def bounded_cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """The paper's per-sample loss ``-log(softmax(z)[y] + 1e-8)``, bounded by ``-log(1e-8) ~ 18.4``.

    Example:
        >>> bounded_cross_entropy(torch.tensor([[0.0, 0.0], [100.0, -100.0]]), torch.tensor([0, 1])).round(decimals=3)
        tensor([ 0.6930, 18.4210])
    """
    p = torch.softmax(outputs.float(), dim=1).gather(1, targets.reshape(-1, 1).long()).squeeze(1)
    return -torch.log(p + LOG_EPS)


def is_classification(outputs: Tensor | None, targets: Any) -> bool:
    return (
        isinstance(outputs, Tensor)
        and isinstance(targets, Tensor)
        and outputs.ndim == 2
        and outputs.shape[1] >= 2
        and not targets.is_floating_point()
        and targets.ndim == 1
        and targets.shape[0] == outputs.shape[0]
    )


def flatten_features(inputs: Tensor) -> Tensor:
    """Default ``features=`` hook: one flat float vector per sample."""
    if not isinstance(inputs, Tensor):
        raise TypeError(
            f"LossVal's default features flatten the batch inputs, which must be one tensor; got "
            f"{type(inputs).__name__}. Pass `inputs=x` as a tensor, or `LossVal(features=f)` with `f` mapping "
            "your inputs (and the validation inputs) to a (batch, dim) tensor."
        )
    return inputs.reshape(inputs.shape[0], -1).float()


def validation_from_trainer(trainer: pl.Trainer) -> Tensor:
    """The inputs of the validation dataloader given to ``fit`` (or the DataModule's), read once."""
    source = trainer.fit_loop.epoch_loop.val_loop._data_source
    loader = source.dataloader() if source.is_defined() else None
    if loader is None or (isinstance(loader, (list, tuple)) and not loader):
        raise ValueError(
            "LossVal() was given no `validation=` and the fit has no validation dataloader: pass "
            "`LossVal(validation=(x_val, y_val))`, or `trainer.fit(model, train_loader, val_loader)` "
            "(or a DataModule with `val_dataloader`)."
        )
    if isinstance(loader, (list, tuple)):
        loader = loader[0]
    batches = []
    for batch in loader:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if (
            isinstance(batch, (list, tuple))
            and len(batch) == 3
            and not torch.as_tensor(x).is_floating_point()
        ):
            x = batch[1]  # an IndexedDataset batch: (row, x, y)
        batches.append(torch.as_tensor(x))
    return validation_inputs(torch.cat(batches))


def validation_inputs(validation: Any) -> Tensor:
    """Normalise the ``validation=`` argument to a tensor of inputs."""
    validation = load_if_path(validation, "validation")  # a .pt / .npz / .csv path, e.g. from a YAML config
    check_validation_container(validation)
    if isinstance(validation, (tuple, list)) and len(validation) in (1, 2) and not np.isscalar(validation[0]):
        validation = validation[0]
    if isinstance(validation, np.ndarray):
        validation = torch.from_numpy(validation)
    if (
        not isinstance(validation, Tensor)
        and hasattr(validation, "__getitem__")
        and hasattr(validation, "__len__")
    ):
        items = [validation[i] for i in range(len(validation))]
        validation = torch.stack(
            [torch.as_tensor(it[0] if isinstance(it, (tuple, list)) else it) for it in items]
        )
    if not isinstance(validation, Tensor):
        raise TypeError(
            "`validation` must be the validation inputs (tensor or array), a tuple (x_val, y_val), or a "
            f"map-style dataset; got {type(validation).__name__}."
        )
    if validation.shape[0] == 0:
        raise ValueError(
            "`validation` is empty: LossVal needs at least one validation row (100 in the paper)."
        )
    if validation.shape[0] < 10:
        warnings.warn(
            f"`validation` has only {validation.shape[0]} rows; LossVal's OT term is noisy below ~50 rows.",
            stacklevel=3,
        )
    if validation.is_floating_point():
        validation = validation.float()
    check_finite_rows(validation, "`validation` (LossVal's validation inputs)", "drop or impute those rows")
    return validation
