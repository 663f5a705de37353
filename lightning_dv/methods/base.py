"""The interface every training-time valuation objective implements (LossVal, NDDV)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    import lightning.pytorch as pl


@dataclass
class ValuationStep:
    """What one ``training_step`` hands to the objective through ``valuation_loss``.

    Attributes:
        per_sample_loss: Unreduced loss, shape ``(B,)``.
        idx: Dataset row of each sample, shape ``(B,)``, long, on the loss's device.
        inputs: The batch inputs (what the model saw), or None.
        outputs: The model outputs (logits / predictions), or None.
        targets: The batch targets, or None.
        module: The LightningModule (for objectives that re-run the model, e.g. NDDV's meta step).
    """

    per_sample_loss: Tensor
    idx: Tensor
    inputs: Any = None
    outputs: Tensor | None = None
    targets: Tensor | None = None
    module: pl.LightningModule | None = None


class ValuationObjective(ABC):
    """A loss wrapper that learns per-row values while the user's model trains.

    The :class:`~lightning_dv.DataValuation` callback drives it:

    1. ``build(num_samples)`` in ``Callback.setup`` returns the learnable state (an ``nn.Module``)
       that the callback registers on the LightningModule, so it is moved to the device,
       checkpointed and all-reduced by DDP.
    2. ``on_fit_start`` once the trainer, device and data are ready.
    3. ``loss(state, step)`` from the user's ``training_step`` (through the mixin).
    4. ``on_train_epoch_end`` to synchronise per-rank statistics; then ``values(state)``.

    The callback owns the optimizer of ``state``'s parameters (``lr`` below) and all logging and
    export, so an objective is only the maths.
    """

    #: Short name used in logs and exports.
    name: str = "objective"
    #: Learning rate of the callback-owned Adam optimizer over the objective's parameters.
    lr: float = 0.01

    @abstractmethod
    def build(self, num_samples: int) -> nn.Module:
        """Create the learnable state for ``num_samples`` training rows."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: nn.Module) -> None:
        """Prepare anything that needs the device or the trainer (default: nothing)."""

    @abstractmethod
    def loss(self, state: nn.Module, step: ValuationStep) -> Tensor:
        """The scalar training loss that replaces the user's reduced loss."""

    def on_train_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: nn.Module
    ) -> None:
        """Synchronise per-rank per-row statistics (default: nothing)."""

    @abstractmethod
    def values(self, state: nn.Module) -> Tensor:
        """Current value of every row, shape ``(N,)``, HIGHER = MORE VALUABLE, identical on all ranks."""

    def extra_columns(self, state: nn.Module) -> dict[str, Tensor]:
        """Additional per-row columns exported next to the values (default: none)."""
        return {}

    def after_optimizer_step(self, state: nn.Module) -> None:
        """Called after the callback stepped the state's optimizer (projections, default: nothing)."""

    def configure_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer the callback uses for the objective's parameters (Adam, no weight decay)."""
        return torch.optim.Adam(params, lr=self.lr)

    def state_dict(self) -> dict[str, Any]:
        """Non-tensor objective state for checkpoints (tensors belong in ``state``)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
