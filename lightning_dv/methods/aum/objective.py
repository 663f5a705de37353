"""AUM (Pleiss, Zhang, Elenberg, Weinberger, "Identifying Mislabeled Data using the Area Under the
Margin Ranking", NeurIPS 2020) as a zero-parameter training-time objective.

Each time row ``i`` is seen, before the optimizer step, its margin is recorded::

    M_t(i) = z_{y_i}(x_i) - max_{k != y_i} z_k(x_i)          (logits z, assigned label y_i)
    AUM(i) = (1/T) sum_t M_t(i)                               (the value; higher = more valuable)

Why: a mislabelled row is pulled towards its wrong label only by memorisation, against the
generalisation from similar rows, so its margin stays low or negative for most of training.
The objective changes nothing about training: the loss is the plain mean of the per-sample loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lightning_dv.distributed import RowStatistics
from lightning_dv.methods.base import ValuationObjective, ValuationState, ValuationStep

if TYPE_CHECKING:
    import lightning.pytorch as pl


def assigned_margin(outputs: Tensor, targets: Tensor) -> Tensor:
    """Margin of the assigned label: its logit minus the largest other logit, shape ``(B,)``.

    A single logit per row (binary classifier) is read as the logits ``[0, z]``.

    Example:
        >>> assigned_margin(torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, 1.0]]), torch.tensor([0, 0])).tolist()
        [1.0, -3.0]
        >>> assigned_margin(torch.tensor([1.5, 1.5]), torch.tensor([1, 0])).tolist()
        [1.5, -1.5]
    """
    z = outputs.detach().float()
    if z.ndim == 1 or (z.ndim == 2 and z.shape[1] == 1):
        z = z.reshape(-1, 1)
        z = torch.cat([torch.zeros_like(z), z], dim=1)
    if z.ndim != 2:
        raise ValueError(f"AUM needs logits of shape (batch, classes); got {tuple(outputs.shape)}.")
    if (
        not isinstance(targets, Tensor)
        or targets.is_floating_point()
        or targets.reshape(-1).shape[0] != z.shape[0]
    ):
        raise ValueError(
            "AUM reads the margin of each row's assigned class: pass integer class labels, one per row, as "
            f"`targets=` (got {type(targets).__name__} {tuple(getattr(targets, 'shape', ()))}). It values "
            "classification rows; use LossVal for regression."
        )
    y = targets.reshape(-1, 1).to(z.device).long()
    if int(y.min()) < 0 or int(y.max()) >= z.shape[1]:
        raise ValueError(f"labels must lie in [0, {z.shape[1]}) for outputs with {z.shape[1]} classes.")
    own = z.gather(1, y).squeeze(1)
    other = z.scatter(1, y, float("-inf")).amax(dim=1)
    return own - other


class AUMState(ValuationState):
    """Per-row margin statistics (sum and count of this epoch, total over epochs)."""

    def __init__(self, num_rows: int) -> None:
        super().__init__(num_rows)
        self.margin = RowStatistics(num_rows)


class AUM(ValuationObjective):
    """Area under the margin: the mean over training of each row's assigned-label margin.

    No learnable parameters and no change to training. Needs ``outputs=`` (logits) and
    ``targets=`` (integer labels) in ``valuation_loss``. A row that the sampler pads (DDP)
    counts once per epoch; every rank exports the same values.

    Example:
        >>> from lightning_dv import DataValuation
        >>> valuation = DataValuation(AUM())  # then Trainer(callbacks=[valuation]).fit(model, loader)
        >>> state = AUM().build(num_rows=4)
        >>> AUM().values(state).tolist()
        [0.0, 0.0, 0.0, 0.0]
    """

    name = "aum"
    needs = frozenset({"outputs", "targets"})

    def build(self, num_rows: int) -> AUMState:
        return AUMState(num_rows)

    def loss(self, state: nn.Module, step: ValuationStep) -> Tensor:
        state.margin.update(step.idx, assigned_margin(step.outputs, step.targets))
        return step.per_sample_loss.mean()

    def on_train_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: nn.Module
    ) -> None:
        state.margin.reduce()

    def values(self, state: nn.Module) -> Tensor:
        return state.margin.mean()

    def extra_columns(self, state: nn.Module) -> dict[str, Tensor]:
        return {"aum_epochs_seen": state.margin.epochs.detach().clone()}
