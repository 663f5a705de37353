"""AUM (Pleiss, Zhang, Elenberg, Weinberger, "Identifying Mislabeled Data using the Area Under the
Margin Ranking", NeurIPS 2020) as a zero-parameter training-time objective.

Each time row ``i`` is seen, before the optimizer step, its margin is recorded::

    M_t(i) = z_{y_i}(x_i) - max_{k != y_i} z_k(x_i)          (logits z, assigned label y_i)
    AUM(i) = (1/T) sum_{t <= T} M_t(i)                        (T = min(epochs, window))
    T = clip(argbest_{e <= max_window} monitor_e, window, max_window)   (with ``monitor=``)
    value_i = calibrate(AUM)(i)                               (clipped robust score, compact upper half)
    flagged = low 2-means cluster of the values AND AUM(i) < -0.1 s (``gate=0``, ``gate_tolerance=0.1``;
              s = 1.4826 MAD of the AUMs)

Why: a mislabelled row is pulled towards its wrong label only by memorisation, against the
generalisation from similar rows, so its margin stays low or negative early in training; the
paper integrates up to the first learning-rate drop, before memorisation, and ``window`` (epochs)
does the same, so the values do not depend on how long the user trains. The calibration
(:mod:`lightning_dv.methods.calibration`) makes 2-means flagging match the ranking: clean margins
have a long upper tail. The gate keeps rows whose assigned label still wins on average (AUM >= 0)
out of the flagged cluster: at 10% noise 2-means alone flagged 16.7% of the rows on the selection
seeds (up to 24%), the gate 14.7%, exactly the noise rate where the model fits the labels (e.g.
make_classification 20% -> 14%, wine 13% -> 11%); the tolerance (a tenth of the margins' robust
spread below 0) also leaves out the undecided rows at the boundary; figures in benchmarks/README.md. The objective changes nothing about training: the loss is the plain mean
of the per-sample loss. With ``monitor=`` (a validation metric the user logs, as for
``EarlyStopping``) the window runs on past ``window`` epochs, up to ``max_window``, for as long as
that metric still improves: a model that is still learning after 10 epochs (held-out loss falling)
has not started memorising yet (benchmarks/README.md, section 2c).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lightning_dv._validation import check_choice, check_class_labels, check_window
from lightning_dv.distributed import RowStatistics, frozen_parameter, hold_records
from lightning_dv.methods.base import ValuationObjective, ValuationState, ValuationStep
from lightning_dv.methods.calibration import calibrate, check_calibration

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
    check_margin_inputs(outputs, targets)
    z = outputs.detach().float()
    if z.ndim == 1 or z.shape[1] == 1:
        z = z.reshape(-1, 1)
        z = torch.cat([torch.zeros_like(z), z], dim=1)
    y = targets.reshape(-1, 1).to(z.device).long()
    check_class_labels(y, z.shape[1])
    own = z.gather(1, y).squeeze(1)
    other = z.scatter(1, y, float("-inf")).amax(dim=1)
    return own - other


def check_margin_inputs(outputs: Tensor, targets: object) -> None:
    """Raise a ValueError unless ``outputs`` are logits ``(batch, classes)`` (or one per row) and
    ``targets`` one integer label per row. Shapes and dtypes only: no host sync."""
    if outputs.ndim not in (1, 2):
        raise ValueError(f"AUM needs logits of shape (batch, classes); got {tuple(outputs.shape)}.")
    if not isinstance(targets, Tensor) or targets.is_floating_point() or targets.numel() != outputs.shape[0]:
        raise ValueError(
            "AUM reads the margin of each row's assigned class: pass integer class labels, one per row, as "
            f"`targets=` (got {type(targets).__name__} {tuple(getattr(targets, 'shape', ()))}). It values "
            "classification rows; use LossVal for regression."
        )


class AUMState(ValuationState):
    """Per-row margin statistics (sum and count of this epoch, total over the first ``window`` epochs).

    With a monitored metric it also keeps the mean margin and seen-mask at the window's end so
    far (``frozen``, ``frozen_seen``) and the best metric value and its epoch (``best``).

    Each step's rows, logits and labels are held (:meth:`record`) and their margins computed and
    added every few dozen steps and before any read (:meth:`flush`: epoch end, ``state_dict``).
    """

    def __init__(self, num_rows: int, window: int | None = None, monitored: bool = False) -> None:
        super().__init__(num_rows)
        self.margin = RowStatistics(num_rows, window=window)
        self.monitored = monitored
        if monitored:
            self.frozen = frozen_parameter(torch.zeros(num_rows))
            self.frozen_seen = frozen_parameter(torch.zeros(num_rows))
            self.best = frozen_parameter(torch.tensor([float("nan"), 0.0]))
        hold_records(self)
        self._pending_shape: tuple = ()

    @torch.no_grad()
    def record(self, rows: Tensor, outputs: Tensor, targets: Tensor) -> None:
        """Hold one step's rows, detached logits and labels (shapes checked now, label range at the flush).

        The margins of the held steps are computed and added at once (equal to the per-step
        updates up to the float rounding of the sums); the first step is applied at once, so
        wrong labels fail on it. The tensors are held by reference: fresh per step, never
        modified in place.

        Example:
            >>> state = AUMState(3)
            >>> for rows in ([0, 1], [1, 2]):
            ...     state.record(torch.tensor(rows), torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
            >>> state.margin.count.tolist()  # the first step is applied at once, the second is held
            [1, 1, 0]
            >>> state.flush(); state.margin.sum.tolist()
            [2.0, 1.0, -1.0]
        """
        check_margin_inputs(outputs, targets)
        shape = outputs.shape[1:]
        if shape != self._pending_shape:
            self.flush()
            self._pending_shape = shape
        if self._pending.add(rows.detach().reshape(-1), outputs.detach(), targets.detach().reshape(-1)):
            self.flush()

    @torch.no_grad()
    def flush(self) -> None:
        """Add the margins of the held records to this epoch's statistics."""
        taken = self._pending.take()
        if taken is not None:
            rows, outputs, targets = taken
            self.margin.update(rows, assigned_margin(outputs, targets))


class AUM(ValuationObjective):
    """Area under the margin: the mean of each row's assigned-label margin over its first epochs.

    No learnable parameters and no change to training. Needs ``outputs=`` (logits) and
    ``targets=`` (integer labels) in ``valuation_loss``. A row that the sampler pads (DDP)
    counts once per epoch; every rank exports the same values. The raw mean margin is exported
    as the column ``aum_margin``.

    Args:
        window: Epochs per row whose margins enter the value (default 10); later epochs, in which
            the model memorises flipped labels, leave it unchanged. ``None``: the whole training
            (the paper's AUM when training is short).
        calibration: ``"robust"`` (default; :func:`~lightning_dv.methods.calibration.calibrate`)
            or ``"none"`` (the raw mean margin, as in the paper).
        fence: Clip of the robust score in robust standard deviations (default ``max(3, 0.5 sqrt(N))``).
        upper_scale: Factor on the scores above the median (order-preserving; 1 disables it).
        gate: Rows whose mean margin is at or above it are never in the low (flagged) 2-means
            cluster of the values (default 0: the assigned label wins on average); the flagged
            rows are exported far below the rest (order kept). ``None``: plain 2-means.
        gate_tolerance: How far below ``gate`` a flagged row's mean margin must be, in robust
            standard deviations of the mean margins (``1.4826 MAD``; default 0.1). 0: any margin below
            the gate.
        monitor: Name of a logged metric (e.g. ``"val_loss"``, from the user's
            ``validation_step``). The value then averages each row's margins up to the epoch
            where the metric was best, at least ``window`` and at most ``max_window`` epochs.
            ``None`` (default): exactly ``window`` epochs.
        mode: ``"min"`` (default: a loss) or ``"max"`` (e.g. an accuracy) for ``monitor``.
        max_window: Longest window with ``monitor`` (default 30 epochs).

    Example:
        >>> from lightning_dv import DataValuation
        >>> valuation = DataValuation(AUM())  # then Trainer(callbacks=[valuation]).fit(model, loader)
        >>> state = AUM().build(num_rows=4)
        >>> AUM().values(state).tolist()
        [0.0, 0.0, 0.0, 0.0]
    """

    name = "aum"
    needs = frozenset({"outputs", "targets"})

    def __init__(
        self,
        window: int | None = 10,
        calibration: str = "robust",
        fence: float | None = None,
        upper_scale: float = 0.1,
        gate: float | None = 0.0,
        gate_tolerance: float = 0.1,
        monitor: str | None = None,
        mode: str = "min",
        max_window: int = 30,
    ) -> None:
        check_window(window)
        check_choice("mode", mode, ("min", "max"))
        if monitor is not None:
            if not isinstance(monitor, str) or not monitor:
                raise ValueError(f"`monitor` must be the name of a logged metric or None; got {monitor!r}.")
            if window is None:
                raise ValueError("`monitor=` extends the `window`: give `window` epochs (e.g. 10), not None.")
            check_window(max_window)
            if max_window < window:
                raise ValueError(f"`max_window` ({max_window}) must be at least `window` ({window}).")
        self.monitor, self.mode, self.max_window = monitor, mode, int(max_window)
        check_calibration(calibration, fence, upper_scale, gate_tolerance)
        if gate is not None and (isinstance(gate, bool) or not isinstance(gate, (int, float))):
            raise ValueError(f"`gate` must be a margin (a number) or None (plain 2-means); got {gate!r}.")
        self.window, self.calibration = window, calibration
        self.gate = None if gate is None else float(gate)
        self.gate_tolerance = float(gate_tolerance)
        self.fence, self.upper_scale = fence, float(upper_scale)

    def build(self, num_rows: int) -> AUMState:
        if self.monitor is None:
            return AUMState(num_rows, self.window)
        return AUMState(num_rows, self.max_window, monitored=True)

    def loss(self, state: nn.Module, step: ValuationStep) -> Tensor:
        state.record(step.idx, step.outputs, step.targets)
        return step.per_sample_loss.mean()

    def on_train_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: nn.Module
    ) -> None:
        state.flush()
        state.margin.reduce()
        if self.monitor is not None and not trainer.sanity_checking:
            self._follow_monitor(trainer, state)

    def _follow_monitor(self, trainer: pl.Trainer, state: AUMState) -> None:
        """Freeze the mean margin at this epoch if it is within ``window`` or the metric improved."""
        epoch = trainer.current_epoch + 1
        if epoch > self.max_window:
            return
        metric = trainer.callback_metrics.get(self.monitor)
        if metric is None:
            raise RuntimeError(
                f"AUM(monitor={self.monitor!r}): no metric {self.monitor!r} was logged by the end of epoch "
                f"{epoch}; logged: {sorted(trainer.callback_metrics) or 'none'}. Log it in `validation_step` "
                "(and pass a validation loader to `fit`), or use AUM(monitor=None), the fixed window."
            )
        # rank 0's reading decides on every rank (a metric logged without sync_dist differs per rank)
        score = trainer.strategy.broadcast(float(metric) if self.mode == "min" else -float(metric), src=0)
        best = state.best.detach()  # [best score so far, epoch the window ends at]
        improved = not score >= float(best[0])  # also True before the first record (NaN)
        if improved:
            best[0] = score
        if epoch <= self.window or improved:
            best[1] = epoch
            state.frozen.detach().copy_(state.margin.mean())
            state.frozen_seen.detach().copy_(state.margin.seen().float())

    def _mean_seen(self, state: nn.Module) -> tuple[Tensor, Tensor]:
        if self.monitor is not None and float(state.best[1]) > 0:
            return state.frozen.detach(), state.frozen_seen.detach() > 0
        return state.margin.mean(), state.margin.seen()

    def values(self, state: nn.Module) -> Tensor:
        mean, seen = self._mean_seen(state)
        return calibrate(
            mean,
            self.calibration,
            self.fence,
            self.upper_scale,
            seen=seen,
            gate=self.gate,
            gate_tolerance=self.gate_tolerance,
        )

    def extra_columns(self, state: nn.Module) -> dict[str, Tensor]:
        cols = {
            "aum_margin": self._mean_seen(state)[0].clone(),
            "aum_epochs_seen": state.margin.epochs.detach().float(),  # float32, as exported before
        }
        if self.monitor is not None:
            cols["aum_window"] = torch.full_like(cols["aum_margin"], float(state.best[1]))
        return cols
