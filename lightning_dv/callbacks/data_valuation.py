"""`DataValuation`: the callback that learns data values while the user's model trains."""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor, nn
from typing_extensions import override

from lightning_dv._validation import check_choice
from lightning_dv.callbacks.checkpoint import STATE_ATTR, relocate_state_out
from lightning_dv.callbacks.collect import RowLabels, training_set_size
from lightning_dv.callbacks.guards import (
    NO_BATCH_MESSAGE,
    NO_CALL_MESSAGE,
    VisitCounter,
    check_finite_batch,
    check_finite_values,
    check_loss_has_grad,
    check_step_arguments,
    check_step_values,
    check_trainer_setup,
    never_seen_message,
)
from lightning_dv.callbacks.model_loss import MODEL_LOSSES, returned_loss
from lightning_dv.callbacks.reporting import (
    as_noisy_mask,
    export_values,
    log_lowest_rows,
    log_trajectory_figure,
    log_values,
    per_class_scalars,
)
from lightning_dv.callbacks.weight_step import WeightStepper
from lightning_dv.io import check_export_path, check_export_suffix
from lightning_dv.methods import registry
from lightning_dv.methods.base import (
    STEP_FIELDS,
    ValuationObjective,
    ValuationState,
    ValuationStep,
    WholeSetMethod,
)
from lightning_dv.values import DataValues


class DataValuation(Callback):
    """Learn a value for every training row during ``Trainer.fit``.

    The callback attaches the objective's learnable state (the per-row weights) to the
    LightningModule in ``setup`` (so it is moved to the device, checkpointed and all-reduced by
    DDP), owns its optimizer (removed from the user's optimizers so their schedulers and clipping
    are untouched), logs a histogram and summary scalars every epoch, records the per-epoch
    trajectory, and exports the final values from rank zero.

    Args:
        objective: The valuation objective, e.g. ``LossVal(validation=(x_val, y_val))``.
        export_path: Where to write the values after fit (.csv, .parquet or .npz); written
            atomically from rank zero. ``None``: keep them in memory only (``.values``).
        num_samples: Number of training rows. Default: ``len(train_dataloader.dataset)``.
        known_noisy: Rows known to be corrupted (indices or a boolean mask), for benchmarks and
            demos: enables per-epoch detection F1 and AUROC in the logs.
        log_every_n_epochs: Log the histogram and scalars every this many epochs.
        record_trajectory: Keep the values of every epoch (``values.trajectory``, exported as
            ``value_epoch_<e>`` columns).
        check_inputs: Validate every step's indices and losses (shapes, range, NaN/inf). One
            host sync per step; switch off for the last bit of speed once a pipeline is trusted.
        prefix: Tag prefix in the logs.
        model_loss: What the user's model trains on (default: the objective's
            ``default_model_loss``, ``"plain"`` for every built-in one): ``"plain"`` (bit-identical
            to a plain fit), ``"reweight"`` (the learned weights, normalised) or ``"objective"``
            (the method's formula); see :mod:`lightning_dv.callbacks.model_loss`.
        log_lowest_every_n_epochs: Also show the lowest rows (below) every this many epochs;
            None: at the end of fit only.
        num_lowest: How many of the lowest rows TensorBoard shows at the end of fit: a grid of
            the images (tag ``<prefix>/lowest_images``) when the inputs are image-shaped, else a
            text table with their labels (``<prefix>/lowest_rows``). Labels seen in
            ``valuation_loss(targets=...)`` also give per-class scalars
            (``<prefix>/class_<c>/mean`` and ``/flagged``) and ``values.labels``.

    Example:
        >>> import torch
        >>> from lightning_dv import LossVal
        >>> valuation = DataValuation(LossVal(validation=torch.randn(100, 8)), export_path="values.csv")
        >>> valuation.objective.name
        'lossval'
    """

    def __init__(
        self,
        objective: ValuationObjective,
        export_path: str | os.PathLike | None = None,
        num_samples: int | None = None,
        known_noisy: Sequence[int] | np.ndarray | Tensor | None = None,
        log_every_n_epochs: int = 1,
        record_trajectory: bool = True,
        check_inputs: bool = True,
        prefix: str = "data_values",
        model_loss: str | None = None,
        log_lowest_every_n_epochs: int | None = None,
        num_lowest: int = 16,
    ) -> None:
        if not isinstance(objective, ValuationObjective):
            hint = (
                " (a whole-set method: use WholeSetValuation)"
                if isinstance(objective, WholeSetMethod)
                else ""
            )
            raise TypeError(
                f"`objective` must be a ValuationObjective; got {type(objective).__name__}{hint}. "
                f"Registered objectives: {registry.describe('objective')}."
            )
        if export_path is not None:
            check_export_suffix(export_path)  # folder checks wait for setup (rank zero only)
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1; got {num_samples}.")
        if log_every_n_epochs < 1:
            raise ValueError(f"`log_every_n_epochs` must be >= 1; got {log_every_n_epochs}.")
        model_loss = model_loss if model_loss is not None else objective.default_model_loss
        check_choice("model_loss", model_loss, MODEL_LOSSES)
        if model_loss == "reweight" and type(objective).model_weights is ValuationObjective.model_weights:
            raise ValueError(
                f"`model_loss='reweight'` needs per-row weights from the objective, and "
                f"{type(objective).__name__} provides none: use model_loss='plain' (the default)."
            )
        objective.bind_model_loss(model_loss)
        for name, count in (
            ("log_lowest_every_n_epochs", log_lowest_every_n_epochs),
            ("num_lowest", num_lowest),
        ):
            if count is not None and count < 1:
                raise ValueError(f"`{name}` must be >= 1; got {count}.")
        self.log_lowest_every_n_epochs = log_lowest_every_n_epochs
        self.num_lowest = num_lowest
        self._labels: RowLabels | None = None
        self.objective = objective
        self.export_path = export_path
        self.num_samples = num_samples
        self._user_num_samples = num_samples
        self.known_noisy = known_noisy
        self.log_every_n_epochs = log_every_n_epochs
        self.record_trajectory = record_trajectory
        self.check_inputs = check_inputs
        self.prefix = f"{prefix}/{objective.name}"
        self.model_loss = model_loss
        self.ids: np.ndarray | None = None
        self._stepper = WeightStepper()
        self._trajectory: list[Tensor] = []
        self._noisy_mask: Tensor | None = None
        self._stashed: dict[str, Any] | None = None
        self._values: DataValues | None = None
        self._fit_seconds = 0.0
        self._needs_checked = False
        self._warned_no_call = False
        self._visits: VisitCounter | None = None
        self._attached: weakref.ref | None = None  # the state of the model this callback last trained
        self._continuing = False

    # -- attach --------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return f"{type(self).__name__}[{self.objective.name}]"

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_trainer_setup(trainer, pl_module, stage, type(self))
        existing = getattr(pl_module, STATE_ATTR, None)
        if stage == "fit":
            # A new model starts a new run: nothing of an earlier fit may reach its export. Fitting
            # the same model again continues it (trajectory, visits, the weights' optimizer state).
            self._continuing = (
                existing is not None and self._attached is not None and existing is self._attached()
            )
            if not self._continuing:
                self._reset_run()
        n = self._resolve_num_samples(trainer, stage)
        if n is None:
            return  # evaluation without a known training set size: nothing to attach
        if stage == "fit" and self.export_path is not None and trainer.is_global_zero:
            check_export_path(self.export_path)  # before training, on every fit
        if existing is not None:
            if self._state_size(existing) != n:
                raise ValueError(
                    f"the training set has {n} rows but this model already carries data values for "
                    f"{self._state_size(existing)} rows from an earlier fit: the dataset size changed between "
                    "fits. Use the same dataset, or a fresh model and DataValuation callback."
                )
            if stage == "fit":
                self._attached = weakref.ref(existing)
            return
        state = self.objective.build(n)
        if not isinstance(state, ValuationState):
            raise TypeError(
                f"{type(self.objective).__name__}.build() returned {type(state).__name__}; it must return a "
                "`lightning_dv.methods.base.ValuationState` (subclass it and call `super().__init__(num_rows)`)."
            )
        pl_module.add_module(STATE_ATTR, state)
        if stage == "fit":
            self._attached = weakref.ref(state)

    def _reset_run(self) -> None:
        self.num_samples = self._user_num_samples
        self.ids = None
        self._stepper.reset()
        self._trajectory = []
        self._visits = None
        self._stashed = None
        self._values = None
        self._fit_seconds = 0.0
        self._warned_no_call = False

    @staticmethod
    def _state_size(state: nn.Module) -> int:
        return int(state.num_rows)  # declared by ValuationState

    def _resolve_num_samples(self, trainer: pl.Trainer, stage: str) -> int | None:
        n = None
        if stage == "fit":
            n, ids = training_set_size(trainer)
            if ids is not None:
                self.ids = ids
            if self.num_samples is not None and n is not None and n != self.num_samples:
                raise ValueError(
                    f"the training dataset has {n} rows but this DataValuation callback was built for "
                    f"{self.num_samples} (`num_samples` or an earlier fit): the dataset size changed. "
                    "Use a fresh DataValuation callback for a different dataset."
                )
            if n is None and self.num_samples is None:
                raise ValueError(
                    "cannot tell the training set size from the train dataloader (it has no sized `.dataset`); "
                    "pass `DataValuation(..., num_samples=N)`."
                )
        n = n if n is not None else self.num_samples
        self.num_samples = n
        return n

    def _state(self, pl_module: pl.LightningModule) -> nn.Module:
        state = getattr(pl_module, STATE_ATTR, None)
        if state is None:
            raise RuntimeError("the DataValuation state is not attached; was the callback's setup skipped?")
        return state

    # -- optimizer -----------------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = self._state(pl_module)
        self._stepper.attach(trainer, state, self.objective, self._continuing)
        self.objective.on_fit_start(trainer, pl_module, state)
        self._noisy_mask = as_noisy_mask(self.known_noisy, self.num_samples)
        if self._visits is None or self._visits.synced.numel() != self.num_samples:
            self._visits = VisitCounter(self.num_samples, pl_module.device)
        else:
            self._visits.to(pl_module.device)
        self._labels = RowLabels(self.num_samples, pl_module.device)
        if self._stashed is not None:
            self._apply_state(self._stashed)
            self._stashed = None
        self._values = None
        self._needs_checked = False
        self._fit_started = time.perf_counter()

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # Fires once per real step (after DDP's all-reduce, only on the last micro-batch under
        # gradient accumulation, and for manual optimization): step only with the first optimizer.
        if not trainer.optimizers or optimizer is not trainer.optimizers[0]:
            return
        if self._stepper.active:
            valued = self._visits is not None and self._visits.calls > 0
            self._stepper.step(trainer, valued)
            self.objective.after_optimizer_step(self._state(pl_module))

    # -- the loss ------------------------------------------------------------------------------
    def compute_loss(
        self,
        pl_module: pl.LightningModule,
        per_sample_loss: Tensor,
        idx: Any,
        inputs: Any = None,
        outputs: Tensor | None = None,
        targets: Tensor | None = None,
    ) -> Tensor:
        """Validate one step's arguments and apply the objective (called by the mixin).

        Outside the training loop (``validation_step``, test, predict, sanity check: the shared-step
        pattern) it returns the plain mean loss and touches no state.
        """
        trainer = getattr(pl_module, "_trainer", None)
        if trainer is None or not trainer.training:
            return torch.as_tensor(per_sample_loss).mean()
        state = self._state(pl_module)
        idx = check_step_arguments(per_sample_loss, idx)
        check_loss_has_grad(per_sample_loss, pl_module, state)
        n = self.num_samples
        # Out-of-range rows are reported by check_step_values after the single host sync; the
        # objective sees them clamped so it cannot fail first with an indexing error.
        safe = idx.clamp(0, n - 1) if self.check_inputs else idx
        if self._labels is not None:
            self._labels.record(safe, targets)
        if self.model_loss == "objective":
            step = ValuationStep(per_sample_loss, safe, inputs, outputs, targets, pl_module)
        else:
            # The objective sees detached model quantities: its loss drives only its own parameters.
            detached = outputs.detach() if isinstance(outputs, Tensor) else outputs
            step = ValuationStep(
                per_sample_loss.detach(),
                safe,
                inputs,
                detached,
                targets,
                pl_module,
                attached_loss=per_sample_loss,
            )
        if not self._needs_checked:
            self._check_needs(step)
        try:
            obj = self.objective.loss(state, step)
        except (RuntimeError, ValueError) as err:
            if self.check_inputs:  # NaN features can break the objective's maths before its loss exists
                check_finite_batch(idx, inputs, outputs, cause=err)
            raise
        if self.check_inputs:
            check_step_values(per_sample_loss, idx, n, obj, inputs, outputs)
        if self._visits is not None:
            self._visits.add(idx)
        weights = self.objective.model_weights(state, safe) if self.model_loss == "reweight" else None
        return returned_loss(self.model_loss, per_sample_loss, obj, weights)

    def _check_needs(self, step: ValuationStep) -> None:
        missing = [f for f in STEP_FIELDS if f in self.objective.needs and getattr(step, f) is None]
        if missing:
            args = ", ".join(f"{f}=..." for f in missing)
            raise ValueError(
                f"{type(self.objective).__name__} needs {', '.join(f'`{f}`' for f in missing)} from each training "
                f"step: call `self.valuation_loss(per_sample, idx, {args})` (e.g. inputs=x, outputs=logits, "
                "targets=y)."
            )
        self._needs_checked = True

    # -- epoch end: sync, record, log ------------------------------------------------------------
    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = self._state(pl_module)
        self._check_something_valued(trainer, at_fit_end=False)
        self.objective.on_train_epoch_end(trainer, pl_module, state)
        values = self.objective.values(state).detach().float().cpu()
        if self.record_trajectory:
            self._trajectory.append(values.clone())
        epoch = trainer.current_epoch
        if (epoch + 1) % self.log_every_n_epochs == 0 and not trainer.sanity_checking:
            log_values(trainer, values, step=epoch, prefix=self.prefix, noisy=self._noisy_mask)
            # only for a logger (the same loggers on every rank: merged() is a collective)
            labels = None if self._labels is None or not trainer.loggers else self._labels.merged()
            if labels is not None and trainer.is_global_zero:
                scalars = per_class_scalars(values, labels, self.prefix)
                for logger in trainer.loggers:
                    logger.log_metrics(scalars, step=epoch)
        n = self.log_lowest_every_n_epochs
        if n is not None and (epoch + 1) % n == 0 and not trainer.sanity_checking:
            values_now = self._build_values(pl_module)
            log_lowest_rows(trainer, values_now, step=epoch, prefix=self.prefix, k=self.num_lowest)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_seconds = time.perf_counter() - getattr(self, "_fit_started", time.perf_counter())
        self._check_something_valued(trainer, at_fit_end=True)
        message = never_seen_message(self._visits.total())
        if message is not None:
            rank_zero_warn(f"DataValuation: {message}")
        values = self._build_values(pl_module)
        self._values = values
        if trainer.is_global_zero:
            log_trajectory_figure(trainer, values, self.prefix, trainer.current_epoch)
            log_lowest_rows(
                trainer, values, step=trainer.current_epoch, prefix=self.prefix, k=self.num_lowest
            )
        if self.export_path is not None:
            export_values(trainer, values, self.export_path)

    def _check_something_valued(self, trainer: pl.Trainer, at_fit_end: bool) -> None:
        """Sum the visits over ranks (collective); warn at an epoch end, fail at fit end, when none."""
        self._visits.sync()
        if int(self._visits.synced.max()) > 0:  # counts are >= 0; a sum would first copy them as int64
            return
        ran = trainer.fit_loop.epoch_loop.batch_progress.total.completed > 0
        message = NO_CALL_MESSAGE if ran else NO_BATCH_MESSAGE
        if at_fit_end:
            raise RuntimeError(f"DataValuation: {message}")
        if not self._warned_no_call:  # a warm-up epoch on the plain loss is allowed
            self._warned_no_call = True
            rank_zero_warn(f"DataValuation: in epoch {trainer.current_epoch}, {message}")

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Ctrl+C (KeyboardInterrupt) or SIGTERM (a scheduler's preemption): keep the values reached
        # so far, marked partial. No collectives here: the other ranks may already be gone.
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or self.export_path is None:
            return
        if getattr(pl_module, STATE_ATTR, None) is None or self._visits is None or trainer.state.fn != "fit":
            return
        try:
            values = self._build_values(pl_module, partial=type(exception).__name__)
            self._values = values
            export_values(trainer, values, self.export_path)
            rank_zero_warn(
                f"DataValuation: fit interrupted ({type(exception).__name__}); wrote the values reached so far "
                f"to {self.export_path}, marked partial in the metadata."
            )
        except Exception as err:  # never hide the interrupt behind an export error
            rank_zero_warn(f"DataValuation: fit interrupted; could not export the partial values: {err}")

    def _build_values(self, pl_module: pl.LightningModule, partial: str | None = None) -> DataValues:
        state = self._state(pl_module)
        values = self.objective.values(state).detach().double().cpu()
        check_finite_values(values, f"the {self.objective.name} values")
        extra = {k: v.detach().cpu() for k, v in self.objective.extra_columns(state).items()}
        if self._visits is not None:
            extra["visits"] = self._visits.total().cpu()
        traj = torch.stack(self._trajectory) if self.record_trajectory and self._trajectory else None
        # no collective after an interrupt: the other ranks may be gone
        labels = None if self._labels is None else self._labels.merged(sync=partial is None)
        return DataValues(
            labels=None if labels is None or (labels < 0).any() else labels.numpy(),
            values=values,
            method=self.objective.name,
            ids=self.ids,
            columns=extra,
            trajectory=traj,
            metadata={
                "epochs": len(self._trajectory),
                "optimizer_steps": self.optimizer_steps,
                "skipped_steps": self.skipped_steps,
                "model_loss": self.model_loss,
                "fit_seconds": self._fit_seconds,
                "partial": partial is not None,
                **({"interrupted_by": partial} if partial is not None else {}),
            },
        )

    @property
    def values(self) -> DataValues:
        """The values after fit (or the current ones, read from the attached state, during fit)."""
        if self._values is None:
            raise RuntimeError("no values yet: call `trainer.fit(...)` with this callback first.")
        return self._values

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer of the state's non-row parameters (None when it has only per-row weights)."""
        return self._stepper.optimizer

    @property
    def optimizer_steps(self) -> int:
        """Steps taken by the valuation state (one per real optimizer step of the model)."""
        return self._stepper.steps

    @property
    def skipped_steps(self) -> int:
        """Steps of the valuation state skipped for non-finite (AMP-overflowed) gradients."""
        return self._stepper.skipped

    # -- checkpointing ---------------------------------------------------------------------------
    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # The valuation state is the callback's, not the model's: move it out of the model's
        # state_dict so a plain, strict `Model.load_from_checkpoint(path)` works. The mixin's
        # `on_load_checkpoint` puts it back before Lightning restores the model on resume.
        relocate_state_out(checkpoint)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            **self._stepper.state_dict(),
            "trajectory": torch.stack(self._trajectory) if self._trajectory else None,
            "objective": self.objective.state_dict(),
            "visits": None if self._visits is None else self._visits.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before on_fit_start (where our optimizer is built): stash.
        if self.optimizer is None:
            self._stashed = dict(state_dict)
        else:
            self._apply_state(state_dict)

    def _apply_state(self, sd: dict[str, Any]) -> None:
        if sd.get("num_samples") is not None and self.num_samples not in (None, sd["num_samples"]):
            raise ValueError(
                f"the checkpoint holds values for {sd['num_samples']} rows but the training set has "
                f"{self.num_samples}: the dataset size changed between fits."
            )
        self._stepper.load_state_dict(sd)
        traj = sd.get("trajectory")
        self._trajectory = [] if traj is None else [t.clone() for t in traj]
        self.objective.load_state_dict(sd.get("objective", {}))
        if sd.get("visits") is not None and self._visits is not None:
            self._visits.load_state_dict(sd["visits"])
