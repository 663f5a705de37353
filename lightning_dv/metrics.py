"""Detection metrics for data values (OpenDataVal protocol, METHODS.md section 5).

Functional forms (``two_means_split``, ``kmeans_f1``, ``detection_auroc``, ``discovery_curve``)
and torchmetrics classes that gather per-row values across ranks before computing
(:class:`DetectionF1`, :class:`DetectionAUROC`). Values are HIGHER = MORE VALUABLE, so the rows
flagged as noisy are the LOW ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat

from lightning_dv.distributed import scatter_rows


def _as_tensor(x, dtype=torch.float64) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().to(dtype=dtype, device="cpu").reshape(-1)
    return torch.as_tensor(np.asarray(x), dtype=dtype).reshape(-1)


def noisy_mask(noisy, num_rows: int) -> Tensor:
    """Turn noisy-row indices or a boolean mask into a boolean mask of length ``num_rows``.

    Example:
        >>> noisy_mask([0, 2], 4).tolist()
        [True, False, True, False]
    """
    t = torch.as_tensor(np.asarray(noisy))
    if t.dtype == torch.bool:
        if t.numel() != num_rows:
            raise ValueError(f"the noisy-row mask has {t.numel()} entries; expected {num_rows}, one per row.")
        return t.reshape(-1).cpu()
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise ValueError(
            "noisy rows must be row indices (integers) or a boolean mask; got non-integer numbers."
        )
    if t.numel() == num_rows > 2 and bool(((t == 0) | (t == 1)).all()):
        raise ValueError(
            f"the noisy rows look like a 0/1 mask ({num_rows} entries, all 0 or 1) but are {t.dtype}, which "
            "reads as row indices 0 and 1: pass a boolean mask (`.astype(bool)`) or the indices of the noisy rows."
        )
    idx = t.reshape(-1).long()
    if idx.numel() and (idx.min() < 0 or idx.max() >= num_rows):
        raise ValueError(
            f"noisy-row indices must lie in [0, {num_rows}); got min {idx.min()}, max {idx.max()}."
        )
    mask = torch.zeros(num_rows, dtype=torch.bool)
    mask[idx] = True
    return mask


_CHUNK = 1 << 16


def _prefix_sums(s: np.ndarray):
    """``(lo, c1, c2)`` per chunk of ``_CHUNK`` sorted values: the running sums of the values and
    of their squares in float64, the same left-to-right scan as ``cumsum`` over the whole array
    (each chunk's scan starts from the previous chunk's last sum), in ``O(chunk)`` memory."""
    c1 = c2 = None
    for lo in range(0, s.shape[0], _CHUNK):
        x = torch.from_numpy(s[lo : lo + _CHUNK]).to(torch.float64)
        sq = x.square()
        if c1 is None:
            c1, c2 = x.cumsum(0), sq.cumsum_(0)
        else:
            c1 = torch.cat([c1[-1:], x]).cumsum_(0)[1:]
            c2 = torch.cat([c2[-1:], sq]).cumsum_(0)[1:]
        yield lo, c1, c2


def two_means_split(values) -> Tensor:
    """Exact 1-D 2-means: a boolean mask of the LOW cluster.

    Sorts the values and picks the split with the smallest total within-cluster squared error
    (computed for every split point from prefix sums, so it is exact and O(n log n)). Ties at
    the split go to the low cluster in row order (a stable sort's order). Memory: one sorted copy
    of the values plus ``O(chunk)``: the prefix sums are scanned chunk by chunk, twice.

    Example:
        >>> two_means_split([0.0, 0.1, 5.0, 5.2]).tolist()
        [True, True, False, False]
    """
    v = values.detach().cpu().reshape(-1) if isinstance(values, Tensor) else None
    if v is None or v.dtype not in (torch.float32, torch.float64):
        v = _as_tensor(values)  # float32 values are sorted as they are: the same order, half the bytes
    n = v.numel()
    if n < 2:
        return torch.zeros(n, dtype=torch.bool)
    s = np.sort(v.contiguous().numpy())  # the sorted values only: no (n,) int64 order
    total1 = total2 = None
    for _, c1, c2 in _prefix_sums(s):
        total1, total2 = c1[-1], c2[-1]
    # left = c2 - c1^2 / k, right = (c2[-1] - c2) - (c1[-1] - c1)^2 / (n - k), k = size of the low cluster
    best, best_sse = 0, None
    for lo, c1, c2 in _prefix_sums(s):
        if lo >= n - 1:
            break
        hi = min(lo + _CHUNK, n - 1)
        k = torch.arange(lo + 1, hi + 1, dtype=torch.float64)
        c1, c2 = c1[: hi - lo], c2[: hi - lo]
        left_sse = c2 - c1**2 / k
        right_sum, right_sq = total1 - c1, total2 - c2
        sse = left_sse + (right_sq - right_sum**2 / (n - k))
        i = int(torch.argmin(sse))
        if best_sse is None or sse[i] < best_sse:  # strict: the first minimum overall, as argmin
            best, best_sse = lo + i, sse[i]
    # The low cluster is the best + 1 smallest values, ties at the cut taken in row order.
    cut = v.new_tensor(s[best])
    if bool(torch.isnan(cut)):  # NaN sorts last: every number, then the first NaN rows
        low, ties = ~torch.isnan(v), torch.isnan(v)
    else:
        low, ties = v < cut, v == cut
    missing = best + 1 - int(low.sum())
    if missing > 0:
        low[torch.nonzero(ties).reshape(-1)[:missing]] = True
    return low


def kmeans_f1(values, noisy) -> float:
    """F1 of the 2-means low cluster against the true noisy rows (OpenDataVal's noisy-detection F1).

    Args:
        values: One value per row (higher = more valuable).
        noisy: Indices of the truly noisy rows, or a boolean mask.

    Example:
        >>> kmeans_f1([0.0, 0.1, 5.0, 5.2, 4.9], [0, 1])
        1.0
    """
    v = _as_tensor(values)
    truth = noisy_mask(noisy, v.numel())
    pred = two_means_split(v)
    tp = float((pred & truth).sum())
    denom = float(pred.sum() + truth.sum())
    return 0.0 if denom == 0 else 2.0 * tp / denom


def detection_auroc(values, noisy) -> float:
    """AUROC of ``-value`` as a score for "this row is noisy" (insensitive to heavy tails).

    Example:
        >>> detection_auroc([0.0, 0.1, 5.0, 5.2], [0, 1])
        1.0
    """
    from scipy.stats import rankdata

    v = _as_tensor(values, torch.float64)
    truth = noisy_mask(noisy, v.numel())
    if truth.all() or not truth.any():
        return float("nan")
    # binary_auroc squashes scores outside [0, 1] through a sigmoid, which turns heavy-tailed
    # values into ties; average ranks scaled into (0, 1] keep the order and the ties exactly.
    ranks = torch.from_numpy(rankdata(-v.numpy(), method="average") / v.numel())
    return float(binary_auroc(ranks, truth.long()))


def discovery_curve(
    values, noisy, fractions: Sequence[float] = tuple(np.arange(0.05, 1.0001, 0.05))
) -> np.ndarray:
    """Share of the noisy rows found when inspecting the lowest ``f`` fraction of values.

    Returns:
        Array of the same length as ``fractions``.

    Example:
        >>> discovery_curve([0.0, 1.0, 2.0, 3.0], [0], fractions=[0.25, 1.0]).tolist()
        [1.0, 1.0]
    """
    v = _as_tensor(values)
    truth = noisy_mask(noisy, v.numel()).numpy()
    order = np.argsort(v.numpy(), kind="stable")
    total = max(int(truth.sum()), 1)
    found = np.cumsum(truth[order])
    out = []
    for f in fractions:
        k = int(round(float(f) * v.numel()))
        out.append(0.0 if k == 0 else found[min(k, v.numel()) - 1] / total)
    return np.asarray(out, dtype=np.float64)


class _RowMetric(Metric):
    """Gathers (row, value, is_noisy) triples across processes; duplicates keep the last entry."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("rows", default=[], dist_reduce_fx="cat")
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("noisy", default=[], dist_reduce_fx="cat")

    def update(self, values: Tensor, noisy: Tensor, rows: Tensor | None = None) -> None:
        values = torch.as_tensor(values).detach().reshape(-1).double()
        noisy = torch.as_tensor(noisy).reshape(-1).bool()
        if rows is None:
            rows = torch.arange(values.numel(), device=values.device)
        if not (values.numel() == noisy.numel() == torch.as_tensor(rows).numel()):
            raise ValueError("`values`, `noisy` and `rows` must have one entry per row.")
        self.rows.append(torch.as_tensor(rows).reshape(-1).long())
        self.values.append(values)
        self.noisy.append(noisy)

    def _dedup(self) -> tuple[Tensor, Tensor]:
        rows, vals, noisy = (dim_zero_cat(x).cpu() for x in (self.rows, self.values, self.noisy))
        # DistributedSampler pads with repeated rows: keep one entry per row, scattered by index.
        both, seen = scatter_rows(rows, torch.stack([vals, noisy.double()], dim=1))
        return both[seen, 0], both[seen, 1].bool()


class DetectionF1(_RowMetric):
    """2-means detection F1 as a torchmetrics metric (functional form: :func:`kmeans_f1`).

    Example:
        >>> m = DetectionF1()
        >>> m.update(torch.tensor([0.0, 0.1, 5.0]), torch.tensor([True, True, False]))
        >>> float(m.compute())
        1.0
    """

    def compute(self) -> Tensor:
        v, t = self._dedup()
        return torch.tensor(kmeans_f1(v, t))


class DetectionAUROC(_RowMetric):
    """AUROC of ``-value`` for noisy rows as a torchmetrics metric (functional: :func:`detection_auroc`).

    Example:
        >>> m = DetectionAUROC()
        >>> m.update(torch.tensor([0.0, 0.1, 5.0]), torch.tensor([True, False, False]))
        >>> float(m.compute())
        1.0
    """

    def compute(self) -> Tensor:
        v, t = self._dedup()
        return torch.tensor(detection_auroc(v, t))
