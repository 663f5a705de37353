"""Checks that keep `DataValuation` from returning a silently wrong result.

Every function here either lets a step through unchanged or raises an error that names what was
wrong and what to do instead; :class:`VisitCounter` counts how often each row was valued so rows
the training never reached are reported (and exported) instead of sitting at their initial value.
docs/faults.md lists every misuse these checks cover, with the test of each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_dv.distributed import PendingRecords, all_reduce_sum, is_distributed


def _rows_text(rows: list[int], limit: int = 20) -> str:
    return ", ".join(map(str, rows[:limit])) + (" ..." if len(rows) > limit else "")


def check_trainer_setup(trainer: Any, pl_module: nn.Module, stage: str, callback_type: type) -> None:
    """Refuse, at setup, the set-ups a training-time valuation cannot serve (before any training)."""
    launcher = getattr(trainer.strategy, "launcher", None)
    if launcher is not None and type(launcher).__name__ == "_MultiProcessingLauncher":
        raise RuntimeError(
            "DataValuation does not support spawn/fork-based strategies (ddp_spawn, ddp_fork, "
            "ddp_notebook): the learned values live in the worker processes and cannot be returned. "
            'Use strategy="ddp" (or launch with torchrun) instead.'
        )
    if sum(isinstance(c, callback_type) for c in trainer.callbacks) > 1:
        raise ValueError("only one DataValuation callback per Trainer is supported; remove the extra ones.")
    if stage == "fit" and not callable(getattr(pl_module, "valuation_loss", None)):
        raise TypeError(
            f"{type(pl_module).__name__} has no `valuation_loss`: add `DataValuationMixin` before "
            "`LightningModule` in its bases and return `self.valuation_loss(...)` from `training_step`."
        )


def check_step_arguments(per_sample_loss: Any, idx: Any) -> Tensor:
    """Check the types and shapes of one ``valuation_loss`` call; return ``idx`` as a long tensor.

    No host sync: shapes and dtypes only (the value checks are :func:`check_step_values`).

    Example:
        >>> check_step_arguments(torch.zeros(3), torch.tensor([4, 0, 2], dtype=torch.int32)).dtype
        torch.int64
        >>> check_step_arguments(torch.tensor(0.5), torch.tensor([7]))
        Traceback (most recent call last):
        ...
        ValueError: `per_sample_loss` is a scalar but the batch has one row (row 7): a batch of one row was squeezed to 0-d. Keep the batch dimension (`.reshape(-1)`, or `squeeze(1)` instead of `squeeze()`).
    """
    if not isinstance(per_sample_loss, Tensor):
        raise TypeError(f"`per_sample_loss` must be a tensor; got {type(per_sample_loss).__name__}.")
    if isinstance(idx, Tensor) and idx.dtype == torch.bool:
        raise ValueError(
            "`idx` is a boolean tensor (a mask); pass the dataset row index of each sample, the first element "
            "of an `IndexedDataset` batch."
        )
    if (
        idx is None
        or not isinstance(idx, Tensor)
        or idx.is_floating_point()
        or idx.is_complex()
        or idx.ndim != 1
    ):
        what = "None" if idx is None else f"{type(idx).__name__} {tuple(getattr(idx, 'shape', ()))}"
        raise ValueError(
            f"`idx` must be a 1-D integer tensor of dataset row indices; got {what}. Wrap the training "
            "dataset in `lightning_dv.IndexedDataset` and unpack the batch as `idx, x, y = batch`."
        )
    if per_sample_loss.ndim == 0:
        if idx.shape[0] == 1:
            raise ValueError(
                f"`per_sample_loss` is a scalar but the batch has one row (row {int(idx[0])}): a batch of one "
                "row was squeezed to 0-d. Keep the batch dimension (`.reshape(-1)`, or `squeeze(1)` instead of "
                "`squeeze()`)."
            )
        raise ValueError(
            "`per_sample_loss` is a scalar: it was already reduced. Compute the loss with "
            "`reduction='none'` so there is one entry per sample."
        )
    if per_sample_loss.ndim != 1 or per_sample_loss.shape[0] != idx.shape[0]:
        raise ValueError(
            f"`per_sample_loss` has shape {tuple(per_sample_loss.shape)} but the batch has {idx.shape[0]} "
            "rows: pass one loss per sample, shape (batch,) (reduce any other dimensions first, e.g. "
            "`.mean(dim=1)` for per-pixel or per-output losses)."
        )
    if not per_sample_loss.is_floating_point():
        raise TypeError(
            f"`per_sample_loss` has dtype {per_sample_loss.dtype}; it must be a floating-point loss per sample."
        )
    return idx.to(per_sample_loss.device).long()


def check_loss_has_grad(per_sample_loss: Tensor, module: nn.Module, own: nn.Module) -> None:
    """Refuse a per-sample loss cut off from the model (``.detach()``, ``.item()`` round trips, no_grad).

    Without a graph the model never trains and only the values move. Called in training only.
    """
    if per_sample_loss.requires_grad or not torch.is_grad_enabled():
        return
    ours = {id(p) for p in own.parameters()}
    if any(p.requires_grad and id(p) not in ours for p in module.parameters()):
        raise RuntimeError(
            "`per_sample_loss` does not require grad although the model has trainable parameters: it was "
            "detached (`.detach()`, `.item()`, `torch.no_grad()` or a NumPy round trip), so the model would "
            "never train. Pass the loss as computed from the model's outputs."
        )


def check_weights_received_grad(optimizer: torch.optim.Optimizer | None, row_weights: Sequence = ()) -> None:
    """Refuse a training step whose returned loss left out ``valuation_loss``'s result (values never move).

    ``row_weights``: the state's ``SampleWeights``, whose gradients sit on the leaves they handed out.
    """
    params = [] if optimizer is None else [p for group in optimizer.param_groups for p in group["params"]]
    received = any(p.grad is not None for p in params) or any(w.has_gradients() for w in row_weights)
    if (params or row_weights) and not received:
        raise RuntimeError(
            "`valuation_loss` was called but its result did not reach the loss that was backpropagated, so the "
            "values would never change: return (or backpropagate) the tensor `self.valuation_loss(...)` returns, "
            "not the plain loss."
        )


def _range_and_finite(idx: Tensor, per_sample_loss: Tensor, loss: Tensor) -> tuple[int, int, bool]:
    """``(min(idx), max(idx), whether every loss is finite)`` with one host read.

    On CPU NumPy reads the tensors in place (no host sync to avoid there, and a NumPy call costs
    a fraction of a tensor operation on 32 numbers); elsewhere one stacked tensor is read. One
    reduction covers both losses: a NaN or inf in either makes the sum non-finite (a finite sum
    that overflows only sends the caller to the exact checks, which then pass).
    """
    if idx.numel() == 0:
        return 0, -1, bool(torch.isfinite(loss))
    if idx.device.type == "cpu" and per_sample_loss.device.type == "cpu" and per_sample_loss.dtype in _NUMPY:
        rows = idx.numpy()  # ufunc reductions: ndarray.min / .all cost a Python wrapper each
        total = float(np.add.reduce(per_sample_loss.numpy(), dtype=np.float64)) + float(loss)
        return int(np.minimum.reduce(rows)), int(np.maximum.reduce(rows)), math.isfinite(total)
    lo, hi = torch.aminmax(idx)
    total = per_sample_loss.sum(dtype=torch.float64) + loss
    lo, hi, finite = torch.stack([lo, hi, torch.isfinite(total).long()]).tolist()
    return lo, hi, bool(finite)


_NUMPY = (torch.float32, torch.float64, torch.float16)


def check_step_values(
    per_sample_loss: Tensor, idx: Tensor, num_samples: int, loss: Tensor, inputs: Any, outputs: Any
) -> None:
    """Value checks of one step, with ONE host sync: row range, finite per-sample loss, finite total loss.

    When the objective's loss is not finite although every per-sample loss is (NaN or inf features,
    or outputs), the error names the rows whose inputs or outputs are not finite.
    """
    lo, hi, finite = _range_and_finite(idx, per_sample_loss.detach(), loss.detach())
    if lo < 0 or hi >= num_samples:
        raise IndexError(
            f"row index {hi if hi >= num_samples else lo} is outside the training set of {num_samples} rows: "
            "`idx` must be the dataset row (0..N-1) as yielded by `IndexedDataset`, and the dataset must not "
            "change size. (A `Subset` or `random_split` of an IndexedDataset yields the rows of the full "
            "dataset: wrap the subset instead, `IndexedDataset(Subset(...))`.)"
        )
    if finite:
        return
    bad = ~torch.isfinite(per_sample_loss.detach())
    loss_bad = not bool(torch.isfinite(loss.detach()))
    if bool(bad.any()):
        rows = idx[bad].tolist()
        raise FloatingPointError(
            f"the per-sample loss is NaN or infinite for {len(rows)} row(s): {_rows_text(rows)}. Check those "
            "rows' inputs and labels (or lower the learning rate)."
        )
    if loss_bad:
        check_finite_batch(idx, inputs, outputs)
        raise FloatingPointError(
            "the valuation objective's loss is NaN or infinite although every per-sample loss, input and output "
            "of the batch is finite: check the `features=` function (LossVal) and the objective's settings "
            "(e.g. a much smaller `lr`)."
        )


def check_finite_batch(idx: Tensor, inputs: Any, outputs: Any, cause: BaseException | None = None) -> None:
    """Raise a FloatingPointError naming the rows whose ``inputs`` or ``outputs`` are NaN or infinite."""
    for name, t in (("inputs", inputs), ("outputs", outputs)):
        if isinstance(t, Tensor) and t.is_floating_point() and t.ndim >= 1 and t.shape[0] == idx.shape[0]:
            row_bad = ~torch.isfinite(t.detach().reshape(t.shape[0], -1)).all(dim=1)
            if bool(row_bad.any()):
                rows = idx[row_bad].tolist()
                raise FloatingPointError(
                    f"the valuation loss is NaN or infinite because the batch `{name}` are NaN or infinite "
                    f"for {len(rows)} row(s): {_rows_text(rows)} (their per-sample losses are finite). "
                    "Impute or drop those rows' features before training."
                ) from cause


def check_finite_values(values: Tensor, what: str) -> None:
    """Refuse to publish NaN or infinite values (they would vanish from ``lowest()``)."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        rows = torch.nonzero(bad).reshape(-1).tolist()
        raise FloatingPointError(
            f"{what} are NaN or infinite for {len(rows)} row(s): {_rows_text(rows)}; nothing was exported. "
            "Check those rows' inputs and the objective's settings."
        )


class VisitCounter:
    """How often each row was valued (one ``valuation_loss`` entry = one visit), int32 per row.

    Under DDP, counts are local to a rank between :meth:`sync` calls (no collective per step) and
    summed over ranks at every epoch end; a single process counts straight into the synced
    counts (4 bytes per row, not 8). Rows repeated by a ``DistributedSampler``'s padding count twice.
    Each step's rows are held and counted every few dozen steps and before any read
    (:class:`~lightning_dv.distributed.PendingRecords`).

    Example:
        >>> c = VisitCounter(4)
        >>> c.add(torch.tensor([0, 2, 2]))
        >>> c.total().tolist()
        [1, 0, 2, 0]
    """

    def __init__(
        self, num_samples: int, device: torch.device | str = "cpu", distributed: bool | None = None
    ) -> None:
        distributed = is_distributed() if distributed is None else distributed
        self.synced = torch.zeros(num_samples, dtype=torch.int32, device=device)
        self.local = torch.zeros_like(self.synced) if distributed else None
        self.calls = 0  # valuation_loss calls in training on this rank (host-side, no sync)
        self._pending = PendingRecords()

    def to(self, device: torch.device | str) -> VisitCounter:
        """Move to ``device`` for a new fit (with the local counts a distributed fit needs)."""
        self.flush()
        self.synced = self.synced.to(device)
        if self.local is not None or is_distributed():
            self.local = torch.zeros_like(self.synced) if self.local is None else self.local.to(device)
        return self

    def add(self, idx: Tensor) -> None:
        if self._pending.add(idx):
            self.flush()
        self.calls += 1

    def flush(self) -> None:
        """Count the held rows (into the local counts under DDP, else the synced ones)."""
        taken = self._pending.take()
        if taken is not None:
            counts = self.synced if self.local is None else self.local
            rows = taken[0].to(counts.device)
            counts.index_add_(0, rows, torch.ones_like(rows, dtype=torch.int32))

    def sync(self) -> None:
        """Sum the counts since the last sync over ranks (collective under DDP)."""
        self.flush()
        if self.local is None:
            return
        self.synced += all_reduce_sum(self.local, inplace=True)  # local is cleared next
        self.local.zero_()

    def total(self) -> Tensor:
        """The counts so far (a new tensor)."""
        self.flush()
        return self.synced.clone() if self.local is None else self.synced + self.local

    def state_dict(self) -> dict[str, Any]:
        return {"visits": self.total().cpu(), "calls": self.calls}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        visits = sd.get("visits")
        if visits is not None and visits.shape == self.synced.shape:
            self._pending.clear()
            self.synced.copy_(visits.to(self.synced.device, torch.int32))
            if self.local is not None:
                self.local.zero_()
        self.calls = int(sd.get("calls", self.calls))


def never_seen_message(visits: Tensor) -> str | None:
    """The warning for rows no training step valued, or None when every row was valued."""
    n = visits.numel()
    missing = int((visits == 0).sum())
    if missing == 0:
        return None
    rows = torch.nonzero(visits == 0).reshape(-1).tolist()
    return (
        f"{missing} of {n} training rows were never valued and keep their initial value (rows "
        f"{_rows_text(rows, 10)}); see the `visits` column. Usual causes: `drop_last=True`, a sampler that "
        "skips rows, too few steps (`max_steps`, `limit_train_batches`), or an `idx` that is not the dataset "
        "row (labels or `arange(batch)` passed as `idx`)."
    )


NO_CALL_MESSAGE = (
    "no training step called `valuation_loss`, so no row was valued: return "
    "`self.valuation_loss(per_sample, idx, inputs=x, outputs=logits, targets=y)` from `training_step` "
    "(a module that trains on another loss needs no DataValuation callback)."
)

NO_BATCH_MESSAGE = (
    "no training batch ran, so no row was valued: check `max_epochs`, `max_steps`, `limit_train_batches` and that "
    "the train dataloader yields batches."
)
