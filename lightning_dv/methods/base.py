"""The declared contract every training-time valuation objective implements (LossVal, NDDV, AUM).

Everything :class:`~lightning_dv.DataValuation` relies on is stated here and nowhere else:

* **State.** ``build(num_rows)`` returns a :class:`ValuationState`: an ``nn.Module`` that declares
  ``num_rows``, keeps floating tensors in float32 under any trainer precision, and is registered
  on the LightningModule in ``Callback.setup`` (moved to the device, checkpointed, kept for the
  next ``fit`` of the same model). Learnable parameters (``requires_grad=True``) are stepped by the
  callback's optimizer and all-reduced by DDP; statistics are frozen parameters
  (``requires_grad=False``), never buffers (DDP re-broadcasts buffers from rank 0 every forward).
* **Inputs.** ``needs``: which of ``inputs``, ``outputs``, ``targets``, ``module`` the objective
  reads from :class:`ValuationStep`. The callback checks them at the first step and names the
  missing ``valuation_loss`` argument.
* **Per-row statistics.** Accumulate them in a :class:`~lightning_dv.distributed.RowStatistics`
  inside the state (O(batch) per step, sampler padding counted once, the partial epoch
  checkpointed) and call its ``reduce()`` in ``on_train_epoch_end``, which every rank runs.
  ``values(state)`` must then be identical on all ranks.
* **Loss.** ``loss(state, step)`` returns the scalar that replaces the user's reduced loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from lightning_dv._float32 import Float32Module

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_dv.values import DataValues

#: What an objective may read from a step (the keyword arguments of ``valuation_loss``).
STEP_FIELDS = ("inputs", "outputs", "targets", "module")


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
        attached_loss: The per-sample loss still attached to the model's graph when the callback
            hands the objective detached model quantities (``model_loss="plain"`` or
            ``"reweight"``); for look-ahead steps that differentiate through the model (NDDV's
            meta step). None when ``per_sample_loss`` itself is attached.
    """

    per_sample_loss: Tensor
    idx: Tensor
    inputs: Any = None
    outputs: Tensor | None = None
    targets: Tensor | None = None
    module: pl.LightningModule | None = None
    attached_loss: Tensor | None = None


class ValuationState(Float32Module):
    """Base of every objective's state: declares how many rows it values.

    Example:
        >>> ValuationState(7).num_rows
        7
    """

    def __init__(self, num_rows: int) -> None:
        super().__init__()
        if num_rows < 1:
            raise ValueError(
                f"the training set has {num_rows} rows; data valuation needs at least one training row."
            )
        self.num_rows = int(num_rows)

    def extra_repr(self) -> str:
        return f"num_rows={self.num_rows}"


class ValuationObjective(ABC):
    """A loss wrapper that learns per-row values while the user's model trains.

    The callback drives it: ``build(num_rows)`` in ``setup``; ``on_fit_start``; ``loss`` from
    every training step (through the mixin's ``valuation_loss``); ``on_train_epoch_end`` on every
    rank (reduce per-row statistics), then ``values(state)``; ``state_dict`` /
    ``load_state_dict`` for anything that is not a tensor of the state. The callback owns the
    optimizer of the state's learnable parameters, the logging and the export, so an objective is
    only the maths. Why: one contract means a new method is three methods, not a new callback.

    Example: an area-under-the-margin objective written from this contract alone
    (the built-in :class:`~lightning_dv.methods.aum.AUM` is this, documented):

        >>> from lightning_dv.distributed import RowStatistics
        >>> class Margins(ValuationState):
        ...     def __init__(self, num_rows):
        ...         super().__init__(num_rows)
        ...         self.margin = RowStatistics(num_rows)
        >>> class Margin(ValuationObjective):
        ...     name, needs = "margin", frozenset({"outputs", "targets"})
        ...     def build(self, num_rows):
        ...         return Margins(num_rows)
        ...     def loss(self, state, step):
        ...         z = step.outputs.detach().float()
        ...         own = z.gather(1, step.targets[:, None]).squeeze(1)
        ...         other = z.scatter(1, step.targets[:, None], float("-inf")).amax(1)
        ...         state.margin.update(step.idx, own - other)
        ...         return step.per_sample_loss.mean()
        ...     def on_train_epoch_end(self, trainer, pl_module, state):
        ...         state.margin.reduce()
        ...     def values(self, state):
        ...         return state.margin.mean()
        >>> objective = Margin()
        >>> state = objective.build(3)
        >>> step = ValuationStep(torch.ones(2), torch.tensor([0, 2]), outputs=torch.tensor([[2.0, 0.0], [0.0, 1.0]]),
        ...                      targets=torch.tensor([0, 0]))
        >>> float(objective.loss(state, step)); objective.on_train_epoch_end(None, None, state)
        1.0
        >>> objective.values(state).tolist()
        [2.0, 0.0, -1.0]
    """

    #: Short name used in logs and exports.
    name: str = "objective"
    #: Learning rate of the callback-owned Adam optimizer over the state's learnable parameters.
    lr: float = 0.01
    #: Which ``valuation_loss`` arguments the objective reads (a subset of :data:`STEP_FIELDS`).
    needs: ClassVar[frozenset[str]] = frozenset()
    #: How ``DataValuation(model_loss=None)`` trains the user's model for this objective. Every
    #: built-in objective keeps ``"plain"`` (bit-identical to a plain fit: the guarantee).
    default_model_loss: str = "plain"

    def bind_model_loss(self, model_loss: str) -> None:
        """Told by :class:`~lightning_dv.DataValuation` (at construction, before ``build``) what the
        user's model trains on; raise ``ValueError`` for a mode the objective cannot serve, or size
        the state for it (LossVal learns its weights only where they are read). Default: accept any.
        """

    @abstractmethod
    def build(self, num_rows: int) -> ValuationState:
        """Create the state for ``num_rows`` training rows."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: nn.Module) -> None:
        """Prepare anything that needs the device or the trainer (default: nothing)."""

    @abstractmethod
    def loss(self, state: nn.Module, step: ValuationStep) -> Tensor:
        """The scalar training loss that replaces the user's reduced loss."""

    def on_train_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: nn.Module
    ) -> None:
        """Reduce per-row statistics across ranks (every rank calls it; default: nothing)."""

    @abstractmethod
    def values(self, state: nn.Module) -> Tensor:
        """Current value of every row, shape ``(N,)``, HIGHER = MORE VALUABLE, identical on all ranks."""

    def model_weights(self, state: nn.Module, idx: Tensor) -> Tensor | None:
        """Positive per-row weights of the rows ``idx`` for ``DataValuation(model_loss="reweight")``.

        The callback trains the model on ``sum_i r_i l_i / sum_i r_i`` with these weights
        (detached). Default: None, i.e. the objective does not support reweighting.
        """
        return None

    def extra_columns(self, state: nn.Module) -> dict[str, Tensor]:
        """Additional per-row columns exported next to the values (default: none)."""
        return {}

    def after_optimizer_step(self, state: nn.Module) -> None:
        """Called after the callback stepped the state's optimizer (projections, default: nothing)."""

    def configure_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer the callback uses for the state's learnable parameters (Adam, no weight decay)."""
        return torch.optim.Adam(params, lr=self.lr)

    def state_dict(self) -> dict[str, Any]:
        """Non-tensor objective state for checkpoints (tensors belong in the state)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


@runtime_checkable
class WholeSetMethod(Protocol):
    """A method that values a whole labelled set in one call: ``fit(features, labels) -> DataValues``.

    :class:`~lightning_dv.callbacks.WholeSetValuation` runs any such method on the training rows
    at fit start (ids, ``known_noisy``, logging and export are the callback's), e.g. the complexity
    gap or EcoVal. ``name`` names it in logged tags and exports. The returned values hold one
    entry per given row, in the given order, HIGHER = MORE VALUABLE.

    Example:
        >>> import numpy as np
        >>> from lightning_dv.values import DataValues
        >>> class Constant:
        ...     name = "constant"
        ...     def fit(self, features, labels):
        ...         return DataValues(np.ones(len(labels)), method=self.name)
        >>> isinstance(Constant(), WholeSetMethod)
        True
    """

    name: str

    def fit(self, features: Tensor, labels: Tensor) -> DataValues: ...
