"""The learnable per-row weights, with a row-sparse Adam that equals dense Adam.

Per step only the rows of the batch are read, differentiated, exchanged between ranks and
updated, so the cost of a step does not grow with the number of rows N (design: docs/scaling.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_dv._float32 import Float32Module
from lightning_dv._validation import check_choice
from lightning_dv.distributed import frozen_parameter, is_distributed
from lightning_dv.methods.host_adam import HostRowAdam, merge_rows

CONSTRAINTS = ("none", "softplus", "clamp")
#: torch's fused Adam kernel (the one behind ``Adam(fused=True)``), when this torch has it.
_FUSED_ADAM = getattr(torch, "_fused_adam_", None)
__all__ = [
    "CONSTRAINTS",
    "Float32Module",
    "SampleWeights",
    "exchange_row_gradients",
    "merge_row_gradients",
    "tail_window",
]


#: Rows whose momentum tail :meth:`SampleWeights.all` sums at once (1.4 MB per float64 block at K = 176).
TAIL_ROWS = 1024


def tail_window(betas: tuple[float, float], tol: float = 1e-8) -> int:
    """Steps after which the momentum tail of a row left alone is below ``tol`` of its first term.

    A row's Adam update ``k`` steps after its last gradient is at most ``(b1 / sqrt(b2))^k`` times
    the first one (times at most ~3 for the bias corrections), so the tail after
    ``K = log(tol) / log(b1 / sqrt(b2))`` steps, below ~``30 tol`` of one step, is negligible in float32.

    Example:
        >>> tail_window((0.9, 0.999))
        176
    """
    b1, b2 = betas
    ratio = b1 / math.sqrt(b2)
    if b1 == 0:
        return 1
    return max(1, math.ceil(math.log(tol) / math.log(ratio)))


class SampleWeights(Float32Module):
    """One learnable weight per training row, trained by an exact row-sparse Adam.

    Dense Adam (Kingma & Ba, 2015) over an N-vector whose gradient is zero outside the batch
    still moves every row: for a row last touched at step ``t0`` with moments ``m, v``, step
    ``t0 + k`` applies ``lr * (b1^k m / c1(t0+k)) / (sqrt(b2^k v / c2(t0+k)) + eps)`` with the bias
    corrections ``c_i(s) = 1 - b_i^s``. Those terms decay like ``(b1 / sqrt(b2))^k``, so this
    module keeps per row the moments, the step of the last touch (16 bytes per row with the
    weight) and the weight with its whole future tail already applied (``K`` =
    :func:`tail_window` terms, the rest is below 1e-10 of the first); reading a row adds back
    the part of the tail that has not happened yet (rows touched in the last ``K`` steps). A
    touched row's moments are decayed by ``b^d`` for the ``d`` steps since its last touch, which is
    exactly what dense Adam's zero-gradient steps do. The result equals
    ``torch.optim.Adam`` on the dense vector to float rounding (tests/test_weights.py compares
    them), at ``O(rows x K)`` per step instead of ``O(N)`` (on CPU ``O(rows)``: the NumPy path
    of :mod:`~lightning_dv.methods.host_adam` sums each tail as a short series over per-step
    tables). ``"clamp"`` equals clamping after every dense step too: a tail moves
    monotonically, so clamping its end is clamping each step.

    Why: the dense gradient, all-reduce and Adam step made a step cost O(N) (8.6x at 10^6 rows).

    The per-step flow, driven by :class:`~lightning_dv.DataValuation`: ``forward(idx)`` returns
    the batch's weights through a fresh leaf tensor; after backward the callback calls
    :meth:`take_gradients`, :func:`exchange_row_gradients` (ranks swap ``(row, gradient)`` pairs)
    and :meth:`adam_step`.

    Args:
        num_samples: Number of rows in the training set.
        init: Initial weight of every row.
        constraint: ``"none"`` (the paper's unconstrained weights; they may go negative),
            ``"softplus"`` (weight = softplus(raw), always > 0) or ``"clamp"`` (raw kept
            ``>= min_value``, as if projected after every optimizer step).
        min_value: Lower bound used by ``"clamp"``.
        lr, betas, eps: Adam's settings (the paper: lr 0.01, torch's defaults otherwise).
        dense_below: Up to this many rows the step is plain dense Adam over all rows (same
            result): below ~16k rows torch's fused ``O(N)`` step costs no more than the row-sparse
            one, whose reads there mostly carry an open tail (docs/scaling.md).

    Example:
        >>> w = SampleWeights(4, constraint="softplus")
        >>> w(torch.tensor([0, 3])).tolist()
        [1.0, 1.0]
        >>> loss = (w(torch.tensor([1, 2])) * torch.tensor([1.0, -1.0])).sum()
        >>> loss.backward()
        >>> w.adam_step(*exchange_row_gradients(*w.take_gradients()))
        >>> [round(x, 3) for x in w.all().tolist()]
        [1.0, 0.994, 1.006, 1.0]
    """

    def __init__(
        self,
        num_samples: int,
        init: float = 1.0,
        constraint: str = "none",
        min_value: float = 0.0,
        lr: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        dense_below: int = 16_384,
    ):
        super().__init__()
        check_choice("constraint", constraint, CONSTRAINTS)
        if num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1; got {num_samples}.")
        if constraint == "softplus" and init <= 0:
            raise ValueError(f"`init={init}` must be > 0 with constraint='softplus'.")
        self.constraint = constraint
        self.min_value = float(min_value)
        self.configure(lr, betas, eps)
        raw0 = math.log(math.expm1(init)) if constraint == "softplus" else init
        self.dense = num_samples <= dense_below
        self.dense_mode = frozen_parameter(
            torch.tensor(int(self.dense), dtype=torch.uint8)
        )  # kept in checkpoints
        self.raw = frozen_parameter(torch.full((num_samples,), float(raw0), dtype=torch.float32))
        self.exp_avg = frozen_parameter(torch.zeros(num_samples))
        self.exp_avg_sq = frozen_parameter(torch.zeros(num_samples))
        self.last_step = frozen_parameter(torch.zeros(num_samples, dtype=torch.int32))
        self.step = frozen_parameter(torch.zeros((), dtype=torch.int64))
        # per read: (rows, leaf) and, on the host path, the rows and values read as NumPy arrays
        self._pending: list[tuple[Tensor, Tensor, np.ndarray | None, np.ndarray | None]] = []
        self._now: int | None = None  # host copy of ``step``: no device sync per step
        self._views: tuple[np.ndarray, ...] | None = None
        self._host = True

    @property
    def host(self) -> bool:
        """Row-sparse reads and steps of CPU tensors through NumPy views (False: the torch path,
        which other devices take; the two are equal to rounding)."""
        return self.__dict__.get("_host", True)

    @host.setter
    def host(self, value: bool) -> None:
        self._host = bool(value)
        self._views = None

    def _host_views(self) -> tuple[np.ndarray, ...] | None:
        """Zero-copy NumPy views ``(raw, exp_avg, exp_avg_sq, last_step, step)`` of CPU tensors (None: not on host).

        Made once and kept while ``raw`` keeps its storage (a device move, a ``load_state_dict(...,
        assign=True)`` or a copy of the module makes new ones): per step no ``Tensor.numpy()`` call.
        """
        views = self.__dict__.get("_views")
        if views is not None and views[5] == self.raw.data_ptr():
            return views
        if not (self.host and self.raw.device.type == "cpu"):
            return None
        tensors = (self.raw, self.exp_avg, self.exp_avg_sq, self.last_step, self.step)
        self._views = (*(t.detach().numpy() for t in tensors), self.raw.data_ptr())
        return self._views

    def __getstate__(self):  # views of this module's storage must not travel with a copy
        state = super().__getstate__()
        state["_views"] = None
        return state

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        self._views = None
        return super()._apply(fn, recurse)

    def configure(
        self, lr: float = 0.01, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        """Set Adam's hyperparameters (the callback passes the objective's ``lr``)."""
        if not lr > 0:
            raise ValueError(f"`lr` must be > 0; got {lr}.")
        if not (0 <= betas[0] < 1 and 0 < betas[1] < 1):
            raise ValueError(f"`betas` must be (b1, b2) with 0 <= b1 < 1 and 0 < b2 < 1; got {betas}.")
        if not eps > 0:
            raise ValueError(f"`eps` must be > 0; got {eps}.")
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.window = tail_window(self.betas)
        self._host_adam = HostRowAdam(self.lr, self.betas, self.eps, self.window)

    @property
    def num_samples(self) -> int:
        return int(self.raw.shape[0])

    def transform(self, raw: Tensor) -> Tensor:
        if self.constraint == "softplus":
            return nn.functional.softplus(raw)
        return raw

    # -- reading -------------------------------------------------------------------------------
    def _powers(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """``(k, b1^k, b2^k)`` for ``k = 1..K`` in float64, cached per device."""
        key = (device, self.betas, self.window)
        if getattr(self, "_powers_key", None) != key:
            k = torch.arange(1, self.window + 1, dtype=torch.float64, device=device)
            self._powers_cache = (k, self.betas[0] ** k, self.betas[1] ** k)
            self._powers_key = key
        return self._powers_cache

    def _tail(self, rows: Tensor, after: Tensor) -> Tensor:
        """Sum of the tail terms ``k = after + 1 .. K`` of each row's last touch (float64).

        Rows never touched have zero moments, hence a zero tail.
        """
        k, p1, p2 = self._powers(rows.device)
        b1, b2 = self.betas
        t0 = self.last_step.index_select(0, rows).to(torch.float64)[:, None]
        c1 = 1 - torch.pow(b1, t0) * p1  # bias corrections at the tail's global steps t0 + k
        c2 = 1 - torch.pow(b2, t0) * p2
        num = self.exp_avg.index_select(0, rows).to(torch.float64)[:, None] * p1 / c1
        den = (
            (self.exp_avg_sq.index_select(0, rows).to(torch.float64)[:, None] * p2 / c2)
            .sqrt_()
            .add_(self.eps)
        )
        terms = num.div_(den).masked_fill_(k <= after.to(torch.float64)[:, None], 0.0)
        return self.lr * terms.sum(dim=1)

    def _full_tail(self, m: Tensor, v: Tensor, t0: int) -> Tensor:
        """``_tail`` of rows all touched at step ``t0`` with moments ``m, v``, over ``k = 1 .. K``.

        One step for every row: the bias corrections are a ``(K,)`` vector (half the work).
        """
        k, p1, p2 = self._powers(m.device)
        b1, b2 = self.betas
        f1 = p1 / (1 - b1**t0 * p1)
        f2 = p2 / (1 - b2**t0 * p2)
        num = m.to(torch.float64)[:, None] * f1
        den = (v.to(torch.float64)[:, None] * f2).sqrt_().add_(self.eps)
        return self.lr * num.div_(den).sum(dim=1)

    def _settle(self, raw: Tensor) -> Tensor:
        return raw.clamp(min=self.min_value) if self.constraint == "clamp" else raw

    def _on_host(self, rows: Tensor) -> bool:
        return rows.device.type == "cpu" and self._host_views() is not None

    def _steps_done(self) -> int:
        now = getattr(self, "_now", None)
        return int(self.step) if now is None else now

    def _host_raw(self, rows: np.ndarray) -> np.ndarray:
        """:meth:`current_raw` on host arrays (row-sparse mode, CPU tensors): a new float32 array."""
        raw, m, v, last, _, _ = self._host_views()
        clamp = self.min_value if self.constraint == "clamp" else None
        return self._host_adam.read(raw, m, v, last, rows, self._steps_done(), clamp)

    @torch.no_grad()
    def current_raw(self, rows: Tensor) -> Tensor:
        """The raw parameter of ``rows`` as dense Adam holds it after ``step`` steps (detached)."""
        rows = rows.reshape(-1).long()
        if self.dense:
            return self._settle(self.raw.index_select(0, rows))
        if self._on_host(rows):
            return torch.from_numpy(self._host_raw(rows.numpy()))
        last = self.last_step.index_select(0, rows)
        behind = self.step - last  # >= K: the tail is complete, nothing to add
        raw = self.raw.index_select(0, rows)
        if rows.device.type == "cpu":  # skip rows whose tail is complete (no sync cost on CPU)
            recent = (behind < self.window) & (last > 0)
            if not bool(recent.any()):
                return self._settle(raw)
            if not bool(recent.all()):
                raw = raw.clone()
                raw[recent] += self._tail(rows[recent], behind[recent]).to(torch.float32)
                return self._settle(raw)
        return self._settle(raw + self._tail(rows, behind).to(torch.float32))

    def forward(self, idx: Tensor) -> Tensor:
        """Weights of the rows ``idx``, differentiable through a fresh leaf when grad is enabled."""
        rows = idx if idx.ndim == 1 and idx.dtype == torch.int64 else idx.reshape(-1).long()
        views = None if self.dense or rows.device.type != "cpu" else self._host_views()
        if views is not None:  # keep the NumPy rows and values for the step
            rows_np = rows.numpy()
            clamp = self.min_value if self.constraint == "clamp" else None
            read = self._host_adam.read(*views[:4], rows_np, self._steps_done(), clamp)
            raw = torch.from_numpy(read)
        else:
            rows_np = read = None
            raw = self.current_raw(rows)
        if torch.is_grad_enabled():
            raw.requires_grad_(True)
            self._pending.append((rows, raw, rows_np, read))
        return self.transform(raw)

    @torch.no_grad()
    def all(self) -> Tensor:
        """All weights, detached (``O(N)``; the tail is evaluated only for recently touched rows).

        Memory: the copy of the weights plus one byte per row; the tails of the recent rows (at
        most ``K x batch``) are summed ``TAIL_ROWS`` rows at a time, each a ``(rows, K)`` float64
        block.
        """
        raw = self.raw.detach().clone()
        if self.dense:
            return self.transform(self._settle(raw))
        last = self.last_step.detach()
        recent = torch.nonzero((last > int(self.step) - self.window) & (last > 0)).reshape(-1)
        for chunk in recent.split(TAIL_ROWS):
            behind = self.step - last.index_select(0, chunk).long()
            raw[chunk] += self._tail(chunk, behind).to(raw.dtype)
        return self.transform(self._settle(raw))

    # -- updating ------------------------------------------------------------------------------
    def take_gradients(self) -> tuple[Tensor, Tensor]:
        """The rows read since the last call and, per read, ``[gradient, raw value read]``, cleared.

        Returns ``(rows (k,), pairs (k, 2))``; a read whose leaf got no gradient counts as zero.
        """
        rows, grads, values = self._take()
        return rows, torch.stack([grads, values], dim=1)

    def _take(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(rows, gradients, values read)`` of the reads since the last call, cleared (duplicates kept)."""
        pending, self._pending = self._pending, []
        device = self.raw.device
        if not pending:
            empty = torch.zeros(0, dtype=torch.float32, device=device)
            return torch.zeros(0, dtype=torch.long, device=device), empty, empty
        grads = [torch.zeros_like(x) if x.grad is None else x.grad.float() for _, x, *_ in pending]
        if len(pending) == 1:  # the usual case: one read per step, nothing to concatenate
            rows, leaf, *_ = pending[0]
            return rows.to(device), grads[0].to(device), leaf.detach().to(device)
        rows = torch.cat([r for r, *_ in pending]).to(device)
        values = torch.cat([x.detach() for _, x, *_ in pending])
        return rows, torch.cat(grads).to(device), values.to(device)

    def has_gradients(self) -> bool:
        """Whether any read since the last step received a gradient."""
        return any(leaf.grad is not None for _, leaf, *_ in self._pending)

    def discard_gradients(self) -> None:
        """Forget the rows read since the last step (e.g. at fit start)."""
        self._pending = []

    def _load_from_state_dict(self, *args, **kwargs):  # type: ignore[override]
        super()._load_from_state_dict(*args, **kwargs)
        self._now = None
        self._views = None
        self._host_adam.reset()
        # The two modes store ``raw`` differently (dense: the weight; sparse: with its tail applied).
        self.dense = bool(self.dense_mode)

    @torch.no_grad()
    def adam_step(self, rows: Tensor, grads: Tensor, before: Tensor | None = None) -> None:
        """One Adam step in which ``rows`` have gradients ``grads`` and every other row has zero.

        ``rows`` must be distinct (see :func:`exchange_row_gradients`; in dense mode repeated rows
        are summed, so unmerged reads may be passed); ``before`` are their
        current raw values if already known (:meth:`current_raw`). Equals ``torch.optim.Adam`` on
        the dense vector.
        """
        now = self._steps_done() + 1
        b1, b2 = self.betas
        if self.dense:
            self._dense_step(rows, grads, now)
            return
        if self._on_host(rows) and grads.device.type == "cpu":
            r = rows.numpy()
            self._host_step(r, grads.numpy(), self._host_raw(r) if before is None else before.numpy(), now)
            return
        before = self.current_raw(rows) if before is None else before
        self._host_adam.reset()  # a step the host tables did not see
        gap = (now - self.last_step.index_select(0, rows)).to(
            torch.float64
        )  # zero-gradient steps decay the moments
        g = grads.to(torch.float64)
        m = (self.exp_avg.index_select(0, rows).double() * torch.pow(b1, gap) + (1 - b1) * g).float()
        v = (self.exp_avg_sq.index_select(0, rows).double() * torch.pow(b2, gap) + (1 - b2) * g * g).float()
        denom = v.sqrt() / math.sqrt(1 - b2**now) + self.eps
        after = self._settle(before - (self.lr / (1 - b1**now)) * m / denom)
        self.exp_avg.index_copy_(0, rows, m)  # rows are distinct (merged)
        self.exp_avg_sq.index_copy_(0, rows, v)
        self.last_step.index_fill_(0, rows, now)
        self.step.fill_(now)
        self._now = now
        self.raw.index_copy_(0, rows, after - self._full_tail(m, v, now).to(after.dtype))

    def _host_take_and_step(self) -> bool:
        """The reads' gradients, merged, and one row-sparse step, all on host arrays (one process, CPU)."""
        pending = self._pending[:]
        self._pending.clear()
        now = self._steps_done() + 1
        if len(pending) == 1 and pending[0][2] is not None:  # the usual case: one host read per step
            _, leaf, rows, before = pending[0]
            grads = np.zeros(rows.shape[0], np.float32) if leaf.grad is None else leaf.grad.numpy()
            self._host_step(*merge_rows(rows, grads, before), now)
            return True
        if not pending:
            empty = np.zeros(0, np.float32)
            self._host_step(np.zeros(0, np.int64), empty, empty, now)
            return True
        parts = [
            (
                r.numpy() if r_np is None else r_np,
                np.zeros(r.shape[0], np.float32) if x.grad is None else x.grad.numpy(),
                x.detach().numpy() if read is None else read,
            )
            for r, x, r_np, read in pending
        ]
        rows, grads, before = (np.concatenate(c) for c in zip(*parts)) if len(parts) > 1 else parts[0]
        self._host_step(*merge_rows(rows, grads, before), now)
        return True

    def _host_step(self, rows: np.ndarray, grads: np.ndarray, before: np.ndarray, now: int) -> None:
        """One row-sparse step of distinct ``rows`` on NumPy views of the CPU tensors."""
        raw, m, v, last, step, _ = self._host_views()
        self._host_adam.step(
            raw, m, v, last, rows, grads.astype(np.float32, copy=False), before.astype(np.float32, copy=False),
            now, self.min_value if self.constraint == "clamp" else None,
        )  # fmt: skip
        step[()] = now
        self.__dict__["_now"] = now  # not through nn.Module.__setattr__ (its checks cost more than the step)

    def _dense_step(self, rows: Tensor, grads: Tensor, now: int) -> None:
        b1, b2 = self.betas
        raw = self.raw
        g = torch.zeros_like(raw).index_add_(0, rows.to(raw.device), grads.to(raw.device, raw.dtype))
        if _FUSED_ADAM is not None:  # torch's fused Adam kernel: one call instead of seven
            step = self.__dict__.get("_fused_step")
            if step is None or step.device != raw.device:
                step = self.__dict__["_fused_step"] = torch.zeros((), dtype=torch.float32, device=raw.device)
            step.fill_(now)
            _FUSED_ADAM(
                [raw], [g], [self.exp_avg], [self.exp_avg_sq], [], [step], lr=self.lr, beta1=b1,
                beta2=b2, weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False,
            )  # fmt: skip
        else:
            self.exp_avg.lerp_(g, 1 - b1)
            self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - b2**now)).add_(self.eps)
            self.raw.addcdiv_(self.exp_avg, denom, value=-self.lr / (1 - b1**now))
        if self.constraint == "clamp":
            self.raw.clamp_(min=self.min_value)
        # ``last_step`` is read in row-sparse mode only; a dense state never switches mode.
        self.step.fill_(now)
        self.__dict__["_now"] = now

    def project_(self) -> None:
        """Kept for objectives that call it: ``"clamp"`` is already applied by every read."""


def merge_row_gradients(rows: Tensor, pairs: Tensor, world_size: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Distinct rows, their gradients summed (divided by ``world_size``) and the value they were read at.

    Example:
        >>> rows, grads, values = merge_row_gradients(
        ...     torch.tensor([2, 0, 2]), torch.tensor([[1.0, 0.5], [3.0, 0.1], [1.0, 0.5]])
        ... )
        >>> rows.tolist(), grads.tolist(), values.tolist()
        ([0, 2], [3.0, 2.0], [0.10000000149011612, 0.5])
    """
    uniq, inverse = torch.unique(rows.reshape(-1).long(), return_inverse=True)
    grads = torch.zeros(uniq.shape[0], dtype=pairs.dtype, device=pairs.device).index_add_(
        0, inverse, pairs[:, 0]
    )
    values = torch.empty(uniq.shape[0], dtype=pairs.dtype, device=pairs.device)
    values[inverse] = pairs[:, 1]  # every read of a row saw the same value
    return uniq, grads / world_size if world_size > 1 else grads, values


def exchange_row_gradients(rows: Tensor, pairs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Merge the ranks' reads: distinct rows, their gradients and the raw values they were read at.

    Every rank sends its ``(row, [gradient, value])`` entries (``O(batch)`` numbers, not an
    N-vector, gathered with torchmetrics' ``gather_all_tensors``, which allows unequal lengths);
    the gradients of a row are summed over entries and ranks and divided by the world size, which
    is what DDP's averaging all-reduce gives a dense gradient (:func:`merge_row_gradients`). Every
    rank gets the same result. Collective under DDP.

    Example:
        >>> exchange_row_gradients(torch.tensor([1, 1]), torch.tensor([[0.5, 2.0], [0.25, 2.0]]))[1].tolist()
        [0.75]
    """
    rows = rows.reshape(-1).long()
    if not is_distributed():
        return merge_row_gradients(rows, pairs)
    rows = torch.cat(gather_all_tensors(rows.contiguous()))
    pairs = torch.cat(gather_all_tensors(pairs.contiguous()))
    return merge_row_gradients(rows, pairs, torch.distributed.get_world_size())


def step_row_weights(weights: SampleWeights, scale: float | None = None) -> bool:
    """The callback's step of per-row weights: take the reads' gradients, exchange them between
    ranks, one row-sparse Adam step.

    ``scale``: the GradScaler's current scale (the gradients are unscaled here, never through the
    user's scaler); a step whose unscaled gradients overflow is skipped and False returned. The
    decision is the same on every rank: the gradients are already exchanged.
    """
    if weights.dense:  # the dense step sums repeated rows itself: no merge, no values read needed
        pending = weights._pending
        if len(pending) == 1 and pending[0][1].grad is not None and scale is None and not is_distributed():
            rows, leaf, *_ = pending[0]  # the usual case: one read, its gradient as it is
            pending.clear()
            weights._dense_step(rows, leaf.grad, weights._steps_done() + 1)
            return True
        rows, grads, _ = weights._take()
        before = None
        if is_distributed():
            world = torch.distributed.get_world_size()
            rows = torch.cat(gather_all_tensors(rows.contiguous()))
            grads = torch.cat(gather_all_tensors(grads.contiguous())) / world
    elif weights._on_host(weights.raw) and not is_distributed() and scale is None:
        return weights._host_take_and_step()  # NumPy from the reads' leaves to the update
    else:
        rows, grads, before = exchange_row_gradients(*weights.take_gradients())
    if scale is not None:
        grads = grads / scale
        if not bool(torch.isfinite(grads).all()):
            return False
    weights.adam_step(rows, grads, before)
    return True
