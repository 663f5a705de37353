"""`NDDVState`: NDDV's per-fit state, registered on the LightningModule by the callback."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_dv._validation import check_class_labels
from lightning_dv.distributed import RowStatistics, all_reduce_sum, frozen_parameter, hold_records
from lightning_dv.methods.base import ValuationState
from lightning_dv.methods.nddv.formulas import state_costate_value, terminal_probabilities
from lightning_dv.methods.nddv.meta import WeightNet
from lightning_dv.methods.weight_mode import check_checkpoint_weights
from lightning_dv.methods.weights import SampleWeights

#: Columns of NDDV's per-row statistics (the weight column only with ``weighting="meta"``).
VALUE, WEIGHT = 0, 1
#: The per-row statistics' keys, each with a weight column in checkpoints written before session 6.
_STAT_KEYS = ("stats.sum", "stats.total", "stats.last")


def _column(t: Tensor, column: int) -> Tensor:
    return t if t.ndim == 1 else t[:, column]


class WeightedMean(nn.Module):
    """Running ``sum_i w_i X_i`` and ``sum_i w_i`` of one epoch, in float64, reduced across ranks once.

    The width of ``X`` is known at the first update; checkpoints restore it (partial epoch included).

    Example:
        >>> m = WeightedMean()
        >>> m.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([3.0, 1.0]))
        >>> m.reduce().tolist()
        [0.75, 0.25]
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = frozen_parameter(torch.zeros(0, dtype=torch.float64))
        self.weight = frozen_parameter(torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor, w: Tensor) -> None:
        if self.total.numel() != x.shape[1]:
            self.total = frozen_parameter(torch.zeros(x.shape[1], dtype=torch.float64, device=x.device))
        w = w.to(x.dtype)
        self.total.add_(torch.mv(x.t(), w))  # total += X^T w (the batch's sum in x's dtype, added in float64)
        self.weight.add_(w.sum())

    @torch.no_grad()
    def reduce(self, width: int | None = None) -> Tensor | None:
        """The weighted mean over every rank (None if no weight); clears the epoch. Collective."""
        if self.total.numel() == 0 and width is not None:  # a rank with no record still takes part
            self.total = frozen_parameter(torch.zeros(width, dtype=torch.float64, device=self.weight.device))
        total = all_reduce_sum(torch.cat([self.total, self.weight.reshape(1)]))
        self.total.zero_()
        self.weight.zero_()
        if not total[-1] > 0:
            return None
        return (total[:-1] / total[-1]).float()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        incoming = state_dict.get(prefix + "total")
        if incoming is not None and incoming.shape != self.total.shape:
            self.total = frozen_parameter(torch.zeros_like(incoming, device=self.total.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class NDDVState(ValuationState):
    """The weights (learned softplus, or fixed at 1) or weight network (meta), the per-row
    statistics and the mean field.

    ``stats`` holds per row the value of each epoch (a padded duplicate counts once), its running
    total and the latest epoch's, and with the weight network the weight it gave the row (the
    softplus weights are read from ``weights``: nothing reads their per-epoch record, so it is
    not kept; 4 (value) + 1 (count) + 4 (total) + 1 (epochs) + 4 (latest) = 14 bytes per row, plus
    the learned weights' 16; ``weighting="fixed"`` keeps no weights: every row weighs 1); ``field``
    the epoch's weighted sum of terminal states; ``dynamics`` one such sum per ControlledDynamicsNet of the model. Everything but the
    softplus weights is a frozen parameter: DDP leaves it alone and checkpoints carry it,
    partial epoch included.
    """

    def __init__(self, num_rows: int, weighting: str, hidden: int, window: int | None = None) -> None:
        super().__init__(num_rows)
        if weighting not in ("softplus", "fixed", "meta"):
            raise ValueError(f"`weighting` must be 'softplus', 'fixed' or 'meta'; got {weighting!r}.")
        self.weights = (
            SampleWeights(num_rows, init=1.0, constraint="softplus") if weighting == "softplus" else None
        )
        self.weight_net = WeightNet(hidden) if weighting == "meta" else None
        if self.weight_net is not None:
            for p in self.weight_net.parameters():
                p.requires_grad_(False)  # trained by the objective's own meta step, invisible to DDP
        width = 2 if weighting == "meta" else 1
        self.stats = RowStatistics(num_rows, width=width, keep_last=True, window=window)
        if width == 2:
            with torch.no_grad():
                self.stats.last[:, WEIGHT] = 1.0  # weight of a row never seen
        self.mean_field = frozen_parameter(torch.zeros(0))  # (K,) once the number of classes is known
        self.field = WeightedMean()
        self.dynamics = nn.ModuleDict()
        self.meta_steps = frozen_parameter(torch.zeros(()))
        hold_records(self)
        self._pending_key: tuple = ()

    # -- the per-step records, applied every few dozen steps ------------------------------------
    @torch.no_grad()
    def record(
        self, rows: Tensor, outputs: Tensor, target: Tensor, weight: Tensor, dynamics: dict[str, Tensor]
    ) -> None:
        """Hold one step's records: rows, model outputs (logits), labels, weights, dynamics states.

        Applied (:meth:`flush`) every few dozen steps and before any read of the per-row statistics
        or the epoch's weighted sums (epoch end, ``state_dict``): the terminal states ``X_T``, the
        value ``v_i``, the statistics and the mean-field sums are then computed for all held rows
        at once, equal to the per-step updates up to the float rounding of the sums. Integer
        labels are range-checked there (the first step is applied at once, so wrong labels fail
        on it). The tensors are held by reference: fresh per step and never modified in place.

        Example:
            >>> state = NDDVState(4, "softplus", hidden=8)
            >>> for rows in ([0, 1], [1, 2], [3, 0]):
            ...     state.record(torch.tensor(rows), torch.zeros(2, 3), torch.tensor([0, 2]), torch.ones(2), {})
            >>> state.stats.count.tolist()  # the first step is applied at once, the others are held
            [1, 1, 0, 0]
            >>> state.flush(); state.stats.count.tolist()
            [2, 2, 1, 1]
        """
        key = (tuple(dynamics), target.ndim, outputs.shape[1:])
        if key != self._pending_key:
            self.flush()
            self._pending_key = key
        if self._pending.add(rows, outputs, target, weight, *dynamics.values()):
            self.flush()

    @torch.no_grad()
    def flush(self) -> None:
        """Apply the held records (see :meth:`record`); the mean fields count a row's first record per epoch."""
        taken = self._pending.take(with_step=True)
        if taken is None:
            return
        rows, outputs, target, weight, *terminals, step = taken
        probs = terminal_probabilities(outputs)
        if target.ndim == 1:
            target = target.long()
            check_class_labels(target, probs.shape[1])
        value = state_costate_value(probs, target, weight)
        record = value if self.stats.width == 1 else torch.stack([value, weight], dim=1)
        new = self.stats.update(rows, record, step=step)
        first = weight * new  # weight 0 for a row's later records in the epoch
        self.field.update(probs, first)
        for name, terminal in zip(self._pending_key[0], terminals):
            self.dynamics_field(name).update(terminal, first)

    # read-only views of the statistics, by name
    @property
    def raw_value(self) -> Tensor:
        """Latest epoch's state x costate value per row."""
        return _column(self.stats.last, VALUE)

    @property
    def weight(self) -> Tensor:
        """Latest epoch's weight per row (1 for rows never seen); with softplus weights, the current
        ones (fixed: 1)."""
        if self.weights is not None:
            return self.weights.all()
        if self.weight_net is None:
            return torch.ones(self.num_rows, device=self.stats.last.device)
        return self.stats.last[:, WEIGHT]

    @property
    def seen(self) -> Tensor:
        """Number of epochs each row was seen in."""
        return self.stats.epochs

    @property
    def value_sum(self) -> Tensor:
        """Sum over epochs (the first ``window``) of the state x costate value per row."""
        return _column(self.stats.total, VALUE)

    @property
    def value_mean(self) -> Tensor:
        """Mean over the epochs the row was seen in (the first ``window``) of its state x costate value."""
        return self.stats.mean(VALUE)

    def dynamics_field(self, name: str) -> WeightedMean:
        """The running weighted sum of the terminal states of the ControlledDynamicsNet ``name``."""
        key = name.replace(".", "__") or "root"
        if key not in self.dynamics:
            self.dynamics[key] = WeightedMean().to(self.mean_field.device)
        return self.dynamics[key]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # A checkpoint of the other kind of softplus state (learned vs fixed weights) would fail on
        # unexpected / missing keys: say which NDDV wrote it instead.
        stored = any(k.startswith(prefix + "weights.") for k in state_dict)
        meta = any(k.startswith(prefix + "weight_net.") for k in state_dict)
        ours = (prefix + "stats.sum") in state_dict
        if ours and self.weight_net is None and not meta:
            check_checkpoint_weights("NDDV", stored, self.weights is not None, what="softplus weights")
        if (
            self.stats.width == 1
        ):  # a checkpoint with the softplus weights' per-epoch column (before session 6)
            for key in _STAT_KEYS:
                incoming = state_dict.get(prefix + key)
                if incoming is not None and incoming.ndim == 2:
                    state_dict[prefix + key] = incoming[:, VALUE]
        # Sized lazily (K, and the ControlledDynamicsNet modules, are known at the first step).
        incoming = state_dict.get(prefix + "mean_field")
        if incoming is not None and incoming.shape != self.mean_field.shape:
            self.mean_field = frozen_parameter(torch.zeros_like(incoming, device=self.mean_field.device))
        for key in state_dict:
            if key.startswith(prefix + "dynamics.") and key.endswith(".weight"):
                name = key[len(prefix + "dynamics.") : -len(".weight")]
                if name not in self.dynamics:
                    self.dynamics[name] = WeightedMean().to(self.mean_field.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
