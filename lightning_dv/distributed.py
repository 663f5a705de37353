"""Per-row statistics across ranks, written once for every method.

Lightning's ``DistributedSampler`` pads the last batch with repeated rows and ranks see
different row counts, so statistics travel as ``(row, value)`` pairs or row-indexed sums and
are scattered by row, never by position. ``LightningModule.all_gather`` aborts on ragged
shapes; torchmetrics' ``gather_all_tensors`` handles unequal lengths.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_dv._float32 import Float32Module


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def scatter_rows(
    rows: Any, values: Any, num_rows: int | None = None, fill: float = float("nan"), each_once: bool = False
) -> tuple[Tensor, Tensor]:
    """Place ``values[k]`` at row ``rows[k]`` of a dense ``(num_rows, ...)`` tensor: the one scatter by row.

    A row given several times (sampler padding) keeps one of its entries; rows given no entry
    hold ``fill``. Every method returning row-indexed results goes through here.

    Args:
        rows: Row indices, shape ``(k,)`` (tensor or array).
        values: Values of those rows, shape ``(k, ...)`` (tensor or array).
        num_rows: Size of the dense result (default: ``max(rows) + 1``).
        fill: Value of the rows with no entry.
        each_once: Require every row ``0..num_rows-1`` exactly once (raises ``ValueError`` otherwise).

    Returns:
        ``(dense, seen)``: the dense tensor and the boolean mask of rows that received an entry.

    Example:
        >>> dense, seen = scatter_rows(torch.tensor([2, 0]), torch.tensor([5.0, 7.0]), 3)
        >>> dense.tolist(), seen.tolist()
        ([7.0, nan, 5.0], [True, False, True])
    """
    rows = torch.as_tensor(np.asarray(rows) if not isinstance(rows, Tensor) else rows).reshape(-1).long()
    values = torch.as_tensor(np.asarray(values)) if not isinstance(values, Tensor) else values
    if values.shape[:1] != rows.shape:
        raise ValueError(f"got {rows.numel()} rows but {values.shape[0] if values.ndim else 0} values.")
    n = (int(rows.max()) + 1 if rows.numel() else 0) if num_rows is None else int(num_rows)
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n):
        raise ValueError(f"row indices {int(rows.min())}..{int(rows.max())} fall outside 0..{n - 1}.")
    if each_once and (rows.numel() != n or torch.unique(rows).numel() != n):
        raise ValueError(
            f"expected exactly one value per row 0..{n - 1}; got {rows.numel()} values for "
            f"{torch.unique(rows).numel()} distinct rows."
        )
    dense = torch.full((n, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
    seen = torch.zeros(n, dtype=torch.bool, device=values.device)
    rows = rows.to(values.device)
    dense[rows] = values
    seen[rows] = True
    return dense, seen


def gather_rows(rows: Tensor, values: Tensor, num_rows: int, fill: float = float("nan")) -> Tensor:
    """Scatter per-row ``values`` from every rank into one ``(num_rows, *values.shape[1:])`` tensor.

    Rows seen several times (sampler padding, or several epochs) keep one of their entries; rows
    seen by no rank hold ``fill``. Every rank receives the same result.

    Example:
        >>> gather_rows(torch.tensor([2, 0]), torch.tensor([5.0, 7.0]), 3).tolist()
        [7.0, nan, 5.0]
    """
    rows = rows.reshape(-1).long()
    if is_distributed():
        rows = torch.cat(gather_all_tensors(rows.contiguous()))
        values = torch.cat(gather_all_tensors(values.contiguous()))
    return scatter_rows(rows, values, num_rows, fill)[0]


def all_reduce_sum(t: Tensor, inplace: bool = False) -> Tensor:
    """Sum a tensor over ranks (a new tensor; ``inplace``: ``t`` itself, summed). Identity when not distributed."""
    t = t if inplace else t.clone()
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: Tensor) -> Tensor:
    """Max of a tensor over ranks (returns a new tensor; identity when not distributed)."""
    t = t.clone()
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def frozen_parameter(t: Tensor) -> nn.Parameter:
    """Per-row state as a parameter without gradient: checkpointed like any parameter, ignored by
    DDP (no gradient, so no dense all-reduce) and never re-broadcast (buffers are, before every
    forward)."""
    return nn.Parameter(t, requires_grad=False)


#: Rows per all-reduce at an epoch end of :class:`RowStatistics` (3 MB of a width-2 statistic).
REDUCE_ROWS = 1 << 18
#: The per-row counters' narrow type, and the one they are promoted to before they could overflow.
NARROW_COUNT, WIDE_COUNT = torch.uint8, torch.int32


class RowStatistics(Float32Module):
    """Row-keyed per-row statistics accumulated over each epoch and reduced across ranks once.

    For ``width`` columns per row it keeps, preallocated: this epoch's per-row ``sum`` and
    ``count`` (the partial epoch, so a mid-epoch checkpoint resumes exactly), and over the
    finished epochs the per-row ``total`` of the epoch means, the number of ``epochs`` the row
    was seen in and (``keep_last``) the ``last`` epoch mean. At epoch end::

        mean_e(i) = sum over ranks and records r of row i in epoch e of x_r / (number of those records)
        total(i) += mean_e(i);  epochs(i) += 1;  last(i) = mean_e(i)        (rows seen in epoch e)

    so a row that ``DistributedSampler`` padding repeats (on any rank) counts once per epoch.
    ``update`` costs O(batch); ``reduce`` one all-reduce of ``(width + 1) N`` floats per epoch.
    The tensors are frozen parameters, not buffers: DDP re-broadcasts buffers from rank 0 before
    every forward, which would overwrite each rank's partial epoch. State: ``8 width + 2`` bytes
    per row (``+ 4 width`` with ``keep_last``): the two counters (records of the row this epoch,
    epochs seen) are ``uint8``, promoted to ``int32`` before an update or an epoch end could take
    one past 255 (a checkpoint holding larger counts loads them as ``int32``; float32 counters of
    older checkpoints load as they are, exactly). Lightning writes checkpoints from rank
    zero, so under DDP a mid-epoch checkpoint holds rank zero's partial epoch only: resume DDP
    runs from an epoch-end checkpoint (exact); a single process resumes exactly from either.

    With ``window=W`` only the first ``W`` epochs a row is seen in enter its ``total`` (its mean
    freezes after them; ``epochs`` and ``last`` keep counting): values that must not drift as
    training goes on (late epochs memorise noisy labels) stop there.

    Args:
        num_rows: Number of training rows.
        width: Statistics per row (1: a ``(B,)`` update; otherwise ``(B, width)``).
        keep_last: Also keep the latest epoch's mean.
        window: Number of epochs per row that enter ``total`` and ``mean()`` (None: all).

    Example:
        >>> stats = RowStatistics(3)
        >>> _ = stats.update(torch.tensor([0, 2, 2]), torch.tensor([1.0, 4.0, 6.0]))  # row 2 twice
        >>> stats.reduce().tolist()  # rows seen this epoch
        [True, False, True]
        >>> _ = stats.update(torch.tensor([0]), torch.tensor([3.0])); _ = stats.reduce()
        >>> stats.mean().tolist()  # mean over the epochs each row was seen in (0 if never)
        [2.0, 0.0, 5.0]
        >>> early = RowStatistics(1, window=1)
        >>> for x in (1.0, 9.0): _ = early.update(torch.tensor([0]), torch.tensor([x])); _ = early.reduce()
        >>> early.mean().tolist(), early.epochs.tolist()  # frozen after its first epoch
        ([1.0], [2])
    """

    def __init__(
        self, num_rows: int, width: int = 1, keep_last: bool = False, window: int | None = None
    ) -> None:
        super().__init__()
        if num_rows < 1:
            raise ValueError(f"a per-row statistic needs at least one training row; got {num_rows}.")
        if window is not None and window < 1:
            raise ValueError(f"`window` must be a positive number of epochs or None; got {window}.")
        self.num_rows, self.width, self.window = int(num_rows), int(width), window
        shape = (num_rows,) if width == 1 else (num_rows, width)
        self.sum = frozen_parameter(torch.zeros(shape))
        self.count = frozen_parameter(torch.zeros(num_rows, dtype=NARROW_COUNT))
        self.total = frozen_parameter(torch.zeros(shape))
        self.epochs = frozen_parameter(torch.zeros(num_rows, dtype=NARROW_COUNT))
        self.last = frozen_parameter(torch.zeros(shape)) if keep_last else None
        self._epochs_bound = 0  # at least the largest entry of ``epochs``: one more per epoch end

    def _widen(self, name: str) -> None:
        """Promote the counter ``name`` to :data:`WIDE_COUNT` (its values unchanged)."""
        setattr(self, name, frozen_parameter(getattr(self, name).detach().to(WIDE_COUNT)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        for name in ("count", "epochs"):  # counters too large for the narrow type load wide
            incoming = state_dict.get(prefix + name)
            mine = getattr(self, name)
            if incoming is not None and mine.dtype == NARROW_COUNT and incoming.numel():
                if float(incoming.max()) > torch.iinfo(NARROW_COUNT).max:
                    self._widen(name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._epochs_bound = int(self.epochs.max()) if self.epochs.numel() else 0

    def update(self, rows: Tensor, values: Tensor, step: Tensor | None = None) -> Tensor:
        """Add one record per row; returns the mask of records whose row is new to this rank this epoch.

        ``step`` (int64, one per record, non-decreasing): the records of several steps applied at
        once (see :class:`PendingRecords`); a record is then new when its row had no record before
        this call nor in an earlier step of it, exactly as if the steps were applied one by one.
        Without ``step`` five small tensor operations (``index_select`` and ``index_add_``, not
        advanced indexing, which costs several times more per call on CPU).

        Example:
            >>> stats = RowStatistics(3)
            >>> stats.update(torch.tensor([0, 1, 0]), torch.ones(3), step=torch.tensor([0, 0, 1])).tolist()
            [True, True, False]
        """
        device = self.sum.device
        rows = rows.detach().reshape(-1).to(device, torch.long)
        values = values.detach().to(device, torch.float32).reshape(rows.shape[0], *self.sum.shape[1:])
        before = self.count.index_select(0, rows)
        new = before == 0
        narrow = self.count.dtype == NARROW_COUNT
        limit = torch.iinfo(NARROW_COUNT).max
        if step is not None and rows.shape[0] > 1:
            step = step.to(device)
            unique, inverse, times = torch.unique(rows, return_inverse=True, return_counts=True)
            first = torch.full_like(unique, torch.iinfo(torch.int64).max).scatter_reduce_(
                0, inverse, step, "amin"
            )
            new &= step == first.index_select(0, inverse)
            if narrow and int(before.max()) + int(times.max()) > limit:
                self._widen("count")
        elif narrow and rows.shape[0] and int(before.max()) + rows.shape[0] > limit:
            times = torch.unique(rows, return_counts=True)[1]  # exact: only when the bound is close
            if int(before.max()) + int(times.max()) > limit:
                self._widen("count")
        self.sum.index_add_(0, rows, values)
        self.count.index_add_(0, rows, torch.ones(rows.shape[0], dtype=self.count.dtype, device=device))
        return new

    @torch.no_grad()
    def reduce(self) -> Tensor:
        """End the epoch (collective under DDP: every rank calls it); returns the mask of rows seen.

        Dense, in-place arithmetic on packed ``(rows, width + 1)`` copies that are all-reduced,
        ``REDUCE_ROWS`` rows at a time (every rank makes the same ``ceil(N / REDUCE_ROWS)`` calls):
        no boolean-mask gathers (each costs an ``8 N``-byte index), so the epoch end adds
        ``N`` bytes (the mask) and ``O(REDUCE_ROWS)`` to the peak.
        """
        width = 1 if self.sum.ndim == 1 else self.sum.shape[1]
        if self.epochs.dtype == NARROW_COUNT and self._epochs_bound >= torch.iinfo(NARROW_COUNT).max:
            self._widen("epochs")
        self._epochs_bound += 1
        fresh = torch.empty(self.num_rows, dtype=torch.bool, device=self.sum.device)
        for lo in range(0, self.num_rows, REDUCE_ROWS):
            hi = min(lo + REDUCE_ROWS, self.num_rows)
            fresh[lo:hi] = self._reduce_rows(lo, hi, width)
        self.sum.zero_()
        self.count.zero_()
        return fresh

    def _reduce_rows(self, lo: int, hi: int, width: int) -> Tensor:
        """:meth:`reduce` of rows ``lo:hi``; returns their mask of rows seen."""
        packed = all_reduce_sum(
            torch.cat([self.sum[lo:hi].reshape(hi - lo, width), self.count[lo:hi, None].float()], 1),
            inplace=True,
        )
        count = packed[:, -1]
        fresh = count > 0
        mean = packed[:, :-1].div_(count.clamp(min=1)[:, None])  # rows not seen: 0 / 1 = 0
        mean = mean.reshape(-1) if self.sum.ndim == 1 else mean
        keep = ~fresh if self.sum.ndim == 1 else (~fresh)[:, None]
        if self.last is not None:
            # exact: last * 1 + 0 for rows not seen, 0 + mean otherwise
            self.last[lo:hi].mul_(keep).add_(mean)
        epochs = self.epochs[lo:hi]
        # (a narrow counter is below a window beyond its range: a comparison with it would wrap)
        if self.window is not None and (
            epochs.is_floating_point() or self.window <= torch.iinfo(epochs.dtype).max
        ):
            open_ = epochs < self.window
            mean.mul_(open_ if self.sum.ndim == 1 else open_[:, None])
        self.total[lo:hi].add_(mean)
        self.epochs[lo:hi].add_(fresh)
        return fresh

    def mean(self, column: int | None = None) -> Tensor:
        """Per-row mean over the finished epochs the row was seen in, the first ``window`` (0 if never seen).

        ``column``: only that column of a ``width > 1`` statistic (``4 N`` bytes instead of ``4 width N``).
        """
        epochs = self.epochs.detach().clamp(min=1)
        if self.window is not None:  # (no clamp of a narrow counter beyond its type's range)
            top = self.window if epochs.is_floating_point() else torch.iinfo(epochs.dtype).max
            epochs.clamp_(max=min(self.window, top))
        total = self.total.detach()
        if column is not None and total.ndim == 2:
            return total[:, column] / epochs
        return total / (epochs if total.ndim == 1 else epochs[:, None])

    def seen(self) -> Tensor:
        """Mask of rows seen in at least one finished epoch."""
        return self.epochs.detach() > 0


class PendingRecords:
    """Per-step row records held by reference and applied together: one vectorised update per flush.

    Per-row bookkeeping that nothing reads between epoch ends (sums, counts, visit counters, label
    records) costs a handful of small tensor operations per step whose fixed cost dwarfs their
    arithmetic on a batch of rows. The owner :meth:`add` s each step's tensors (no copy: references
    to fresh, never-modified tensors) and applies the concatenated columns of :meth:`take` with one
    ``index_add_`` per quantity when :meth:`add` reports the buffer full and before ANY read of the
    state (epoch end, ``state_dict``/checkpoint, export). The first record is applied at once, so a
    misuse surfaces on the first step. Sums then add in a different order than step by step
    (identical up to float rounding); counts and copies are identical. Memory: at most ``steps``
    steps, ``rows`` rows or (about) ``elements`` tensor elements of records, whichever comes first:
    O(batch x steps), and bounded when a record is wide (logits over 50k classes flush every step).

    Args:
        steps: Flush after this many records.
        rows: ... or once this many rows are held.
        elements: ... or once the held columns hold this many elements in all (4 MB of float32).

    Example:
        >>> pending = PendingRecords(steps=2)
        >>> pending.add(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]))  # the first record: apply now
        True
        >>> [c.tolist() for c in pending.take()]
        [[0, 1], [1.0, 2.0]]
        >>> pending.add(torch.tensor([2]), torch.tensor([3.0])), pending.add(torch.tensor([0]), torch.tensor([4.0]))
        (False, True)
        >>> rows, values, step = pending.take(with_step=True)
        >>> rows.tolist(), values.tolist(), step.tolist()  # step: which record each row came from
        ([2, 0], [3.0, 4.0], [0, 1])
        >>> pending.take() is None
        True
    """

    def __init__(self, steps: int = 64, rows: int = 4096, elements: int = 1 << 20) -> None:
        if steps < 1 or rows < 1 or elements < 1:
            raise ValueError(
                f"`steps`, `rows` and `elements` must be positive; got {steps}, {rows} and {elements}."
            )
        self.steps, self.rows, self.elements = int(steps), int(rows), int(elements)
        self._records: list[tuple[Tensor, ...]] = []
        self._held = self._held_elements = 0
        self._started = False

    def __len__(self) -> int:
        return len(self._records)

    def add(self, *columns: Tensor) -> bool:
        """Hold one step's columns (first dimension: its rows); True when the owner should flush now."""
        if self._records and len(columns) != len(self._records[0]):
            raise ValueError("every record of a PendingRecords buffer must have the same columns.")
        self._records.append(columns)
        self._held += columns[0].shape[0]
        self._held_elements += sum(c.numel() for c in columns)
        full = (
            not self._started
            or len(self._records) >= self.steps
            or self._held >= self.rows
            or self._held_elements >= self.elements
        )
        self._started = True
        return full

    def take(self, with_step: bool = False) -> tuple[Tensor, ...] | None:
        """The held records' columns concatenated (None if none), and clears the buffer.

        ``with_step``: also the index of the record each row came from (``int64``, last column).
        """
        records, self._records, self._held, self._held_elements = self._records, [], 0, 0
        if not records:
            return None
        columns = tuple(c[0] if len(records) == 1 else torch.cat(c) for c in zip(*records))
        if with_step:
            sizes = [r[0].shape[0] for r in records]
            device = columns[0].device
            if min(sizes) == max(sizes):  # the usual case: batches of one size
                step = torch.arange(len(columns[0]), device=device).div_(
                    max(sizes[0], 1), rounding_mode="floor"
                )
            else:
                step = torch.repeat_interleave(
                    torch.arange(len(records), device=device), torch.tensor(sizes, device=device)
                )
            columns = (*columns, step)
        return columns

    def clear(self) -> None:
        """Drop the held records (the state they were meant for was replaced, e.g. by a checkpoint load)."""
        self._records, self._held, self._held_elements = [], 0, 0


def hold_records(module: nn.Module) -> PendingRecords:
    """A :class:`PendingRecords` buffer for a state ``module`` whose ``flush()`` applies it, kept as
    ``module._pending``: applied before every ``state_dict`` (a checkpoint, mid-epoch included, sees
    every record) and dropped before a ``load_state_dict`` (the records belong to the state being
    replaced).

    Example:
        >>> class Counts(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.n = nn.Parameter(torch.zeros(3), requires_grad=False)
        ...         hold_records(self)
        ...     def flush(self):
        ...         if (taken := self._pending.take()) is not None:
        ...             self.n.index_add_(0, taken[0], torch.ones(len(taken[0])))
        >>> c = Counts()
        >>> c._pending.add(torch.tensor([0])), c._pending.add(torch.tensor([2]))  # the first: apply now
        (True, False)
        >>> c.flush(); c._pending.add(torch.tensor([2]))
        False
        >>> c.state_dict()["n"].tolist()  # the held record applied first
        [1.0, 0.0, 2.0]
    """
    module._pending = PendingRecords()
    module.register_state_dict_pre_hook(_flush_before_save)  # module-level functions: picklable
    module._register_load_state_dict_pre_hook(_drop_held_before_load, with_module=True)
    return module._pending


def _flush_before_save(module: nn.Module, *_: object) -> None:
    module.flush()


def _drop_held_before_load(module: nn.Module, *_: object) -> None:
    module._pending.clear()
