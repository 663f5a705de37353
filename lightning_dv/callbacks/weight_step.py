"""Stepping the valuation state's parameters beside the user's optimizer, never through it.

The user's ``configure_optimizers`` saw ``self.parameters()`` and picked the valuation state up: its
parameters are taken out of the user's optimizers so their schedulers, clipping and weight decay
never touch the values. Per-row weights then step with their own row-sparse Adam (O(batch) per
step, exact dense Adam, ranks exchange (row, gradient) pairs); any other trainable parameter of the
state steps with the objective's ``configure_optimizer``. Under a GradScaler both are unscaled and
skipped on their own, so the valuation term can never make the model skip a step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_dv.callbacks.guards import check_weights_received_grad
from lightning_dv.callbacks.model_loss import step_unscaled
from lightning_dv.methods.weights import SampleWeights, step_row_weights

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_dv.methods.base import ValuationObjective


def remove_from_user_optimizers(trainer: pl.Trainer, state: nn.Module) -> None:
    """Take the state's parameters (and their optimizer state) out of every user optimizer."""
    ours = {id(p) for p in state.parameters()}
    for opt in trainer.optimizers:
        for group in opt.param_groups:
            kept = [p for p in group["params"] if id(p) not in ours]
            if len(kept) != len(group["params"]):
                for p in group["params"]:
                    if id(p) in ours:
                        opt.state.pop(p, None)
                group["params"] = kept


class WeightStepper:
    """The valuation state's own optimizers: row-sparse Adam for the weights, the objective's for the rest.

    Example:
        >>> from lightning_dv import LossVal
        >>> stepper = WeightStepper()
        >>> stepper.optimizer is None and stepper.steps == 0
        True
    """

    def __init__(self) -> None:
        self.optimizer: torch.optim.Optimizer | None = None
        self.row_weights: list[SampleWeights] = []
        self.steps = 0
        self.skipped = 0
        self._grad_checked = False

    def reset(self) -> None:
        """Forget the optimizer state and counters (a new run on a new model)."""
        self.__init__()

    def attach(
        self, trainer: pl.Trainer, state: nn.Module, objective: ValuationObjective, continuing: bool
    ) -> None:
        """Build the optimizers at fit start; a continued fit of the same model keeps the Adam moments."""
        remove_from_user_optimizers(trainer, state)
        params = [p for p in state.parameters() if p.requires_grad]
        if not (continuing and self.optimizer is not None):
            self.optimizer = objective.configure_optimizer(params) if params else None
        self.row_weights = [m for m in state.modules() if isinstance(m, SampleWeights)]
        for weights in self.row_weights:
            weights.configure(lr=objective.lr)
            weights.discard_gradients()

    @property
    def active(self) -> bool:
        return self.optimizer is not None or bool(self.row_weights)

    def step(self, trainer: pl.Trainer, valued: bool) -> None:
        """One step of every valuation parameter (call once per real optimizer step of the model).

        Args:
            trainer: The running trainer (its precision plugin's GradScaler, if any, gives the scale).
            valued: Whether ``valuation_loss`` ran since the fit started (enables the one-time check
                that the weights received a gradient).
        """
        if not self._grad_checked and valued:
            check_weights_received_grad(self.optimizer, self.row_weights)
            self._grad_checked = True
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        scaled = scaler is not None and scaler.is_enabled()
        for weights in self.row_weights:  # exchange the rows' gradients, one row-sparse Adam step
            if not step_row_weights(weights, scaler.get_scale() if scaled else None):
                self.skipped += 1
        if self.optimizer is not None:
            if scaled:
                if not step_unscaled(self.optimizer, scaler):  # never through the user's scaler
                    self.skipped += 1
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "optimizer_steps": self.steps,
            "skipped_steps": self.skipped,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if self.optimizer is not None and sd.get("optimizer") is not None:
            self.optimizer.load_state_dict(sd["optimizer"])
        self.steps = int(sd.get("optimizer_steps", 0))
        self.skipped = int(sd.get("skipped_steps", 0))
