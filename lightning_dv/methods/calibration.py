"""Calibration shared by the training-time methods: a clipped, upper-compressed robust standard score.

For raw per-row values ``x`` (any scale, any tail)::

    z_i = (x_i - median(x)) / s,  s = 1.4826 MAD(x)                 (robust standard score)
    c_i = clip(z_i, -fence, fence) * (upper_scale if z_i > 0 else 1)  (the exported value)

with ``fence = max(3, 0.5 sqrt(N))`` by default. With a ``gate`` (AUM: margin 0), the rows
flagged are those of the low 2-means cluster of ``c`` whose raw value is also below the gate by
more than ``tolerance * s`` (default 0.1 robust standard deviations), and the exported values
carry that decision (:func:`gate_low_cluster`). Why: detection by 2-means on the values (the
OpenDataVal protocol, and what a user's "flag the low cluster" does) is ruined by a heavy tail,
one extreme row owns a cluster, and by a long upper tail of clean rows, the cut then falls inside
the clean bulk; the map is strictly increasing below the fence, so the ranking (AUROC) is kept.
Measurements: docs/nddv.md (NDDV) and benchmarks/README.md (AUM, the gate and its tolerance).

Example:
    >>> import torch
    >>> margins = torch.tensor([-2.0, -1.5, 3.0, 3.5, 4.0, 4.5, 50.0])
    >>> [round(v, 2) for v in calibrate(margins).tolist()]  # clipped at 3, clean tail compressed
    [-3.0, -3.0, -0.34, 0.0, 0.03, 0.07, 0.3]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_dv._validation import check_choice, check_nonnegative
from lightning_dv.metrics import two_means_split

CALIBRATIONS = ("robust", "none")
#: Default margin below the gate, in robust standard deviations, that a flagged row needs.
GATE_TOLERANCE = 0.1
_CHUNK = 1 << 16


def _center_scale(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(median, 1.4826 MAD)`` of ``x`` as float64 0-d tensors (the mean absolute deviation if MAD is 0).

    Memory: one float64 copy of ``x`` (the absolute deviations, selected in place).
    """
    # The median of a float input is the same number in its own dtype: no float64 copy to select in.
    med = (x if x.is_floating_point() else x.double()).median().to(torch.float64)
    if bool(torch.isnan(med)):  # a NaN row: no score (a NaN scale)
        return med, med
    dev = x.to(torch.float64, copy=True).sub_(med).abs_()
    if dev.device.type == "cpu":
        # torch's median (the lower middle, index (n - 1) // 2 in order) by numpy's in-place
        # selection: torch.median would copy dev first
        k = (dev.numel() - 1) // 2
        dev.numpy().partition(k)
        scale = 1.4826 * dev[k]
    else:
        scale = 1.4826 * dev.median()
    if not scale > 0:  # more than half the rows tie
        del dev
        scale = x.to(torch.float64, copy=True).sub_(med).abs_().mean()
    return med, scale


def _scores(x: Tensor, med: Tensor, scale: Tensor, lo: int, hi: int) -> Tensor:
    """The robust score of rows ``lo:hi`` (float64)."""
    return x[lo:hi].to(torch.float64, copy=True).sub_(med).div_(scale)


def robust_score(x: Tensor) -> Tensor:
    """Median/MAD standard score ``(x - median) / (1.4826 MAD)`` (the mean absolute deviation if MAD is 0).

    Example:
        >>> robust_score(torch.tensor([1.0, 2.0, 3.0, 100.0])).round(decimals=2).tolist()
        [-0.67, 0.0, 0.67, 66.1]
    """
    med, scale = _center_scale(x)
    if not scale > 0:
        return torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    return _scores(x, med, scale, 0, x.shape[0])


def robust_clip(x: Tensor, fence: float | None = None, upper_scale: float = 1.0) -> Tensor:
    """Robust standard score clipped to ``[-fence, fence]``: the bulk is untouched, no row can own a cluster.

    A single row at distance ``d`` from ``n`` others of standard deviation ``s`` forms its own
    2-means cluster only when ``d^2 > (2 / pi) n s^2``, i.e. ``d > ~0.8 sqrt(n) s``. The default
    fence ``max(3, 0.5 sqrt(n))`` robust standard deviations stays below that, whatever the tail.
    ``upper_scale < 1`` then compresses the scores above the median (strictly monotone, so the
    order of the rows, hence AUROC and any ranking, is unchanged). Computed in float64, returned
    in float32, a chunk of rows at a time (the float64 scores are never held for all rows).

    Example:
        >>> v = torch.cat([torch.linspace(-1, 1, 99), torch.tensor([1e6])])
        >>> out = robust_clip(v)
        >>> float(out.max()) == 0.5 * 100 ** 0.5 and bool((out.argsort()[:99] == v.argsort()[:99]).all())
        True
    """
    return _clip(x, *_center_scale(x), fence, upper_scale)


def _clip(x: Tensor, med: Tensor, scale: Tensor, fence: float | None, upper_scale: float) -> Tensor:
    """:func:`robust_clip` given the center and scale of ``x``."""
    fence = max(3.0, 0.5 * x.numel() ** 0.5) if fence is None else float(fence)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    if not scale > 0:
        return out
    for lo in range(0, x.shape[0], _CHUNK):
        z = _scores(x, med, scale, lo, lo + _CHUNK).clamp_(-fence, fence)
        out[lo : lo + _CHUNK] = torch.where(z > 0, z * upper_scale, z)
    return out


def gate_low_cluster(scores: Tensor, allowed: Tensor) -> Tensor:
    """Scores whose 2-means low cluster is exactly ``two_means_split(scores) & allowed``.

    ``flag = low 2-means cluster of the scores AND allowed`` (``allowed``: e.g. AUM's "the
    assigned label loses to another class on average", a noise-rate-free rule). The flagged rows
    are moved down by ``G = R sqrt(N) + 1`` (``R`` the range of the scores); any 2-means split that
    does not fall in that gap keeps it inside one cluster, costing at least ``G^2 / 2`` of squared
    error, more than the ``N R^2 / 4`` the gap split can cost at most, so 2-means on the output
    flags exactly those rows. Why: 2-means alone cuts where the bulk of the scores says, which on
    data with overlapping classes puts 17-24% of the rows in the low cluster at 10% noise; rows the
    model still labels as given are not label errors. When both ``scores`` and ``allowed`` are
    monotone in one raw value (AUM: the clipped score and ``margin < 0``), the flagged rows are a
    lower set and the order of the rows (AUROC) is kept. Reference: Pleiss et al. (NeurIPS 2020)
    also flag below a margin threshold, estimated there from rows given a fake extra class (which
    changes training); 0 needs no change to training. If no row (or every row) would be
    flagged, the scores come back unchanged: 2-means always flags at least one row.

    Example:
        >>> s = torch.tensor([-3.0, -2.9, -0.2, -0.1, 0.0, 0.1, 0.2])
        >>> out = gate_low_cluster(s, torch.tensor([True, False, False, False, False, False, False]))
        >>> two_means_split(out).tolist()  # 2-means alone would flag rows 0 and 1
        [True, False, False, False, False, False, False]
    """
    low = two_means_split(scores).to(scores.device) & allowed.bool()
    if not bool(low.any()) or bool(low.all()):
        return scores
    spread = float(scores.max() - scores.min())
    gap = spread * math.sqrt(scores.numel()) + 1.0
    out = scores.clone()
    out[low] -= gap  # what torch.where(low, scores - gap, scores) gives, without a second copy
    return out


def check_calibration(
    calibration: str, fence: float | None, upper_scale: float, tolerance: float = GATE_TOLERANCE
) -> None:
    """Validate the calibration arguments of an objective (the errors name the argument)."""
    check_choice("calibration", calibration, CALIBRATIONS)
    if not 0 < upper_scale <= 1:
        raise ValueError(f"`upper_scale` must lie in (0, 1]; got {upper_scale}.")
    if fence is not None and fence <= 0:
        raise ValueError(f"`fence` must be > 0 (robust standard deviations); got {fence}.")
    check_nonnegative(
        "gate_tolerance", tolerance, "robust standard deviations below the gate; 0: exactly below the gate"
    )


def calibrate(
    values: Tensor,
    calibration: str = "robust",
    fence: float | None = None,
    upper_scale: float = 0.1,
    seen: Tensor | None = None,
    gate: float | None = None,
    gate_tolerance: float = GATE_TOLERANCE,
) -> Tensor:
    """Exported values from raw per-row values: ``robust_clip`` over the ``seen`` rows, or unchanged.

    Rows not ``seen`` (never visited in a finished epoch) sit at the median, 0. ``"none"`` returns
    the raw values (unseen rows keep theirs). ``gate``: only seen rows whose raw value is below
    ``gate - gate_tolerance * s`` (``s = 1.4826 MAD`` of the seen raw values, the calibration's
    own scale) may be in the low 2-means cluster (:func:`gate_low_cluster`; ignored with
    ``"none"``). Why the tolerance: rows within a tenth of a robust standard deviation of the gate
    are ties the model has not decided (on AUM's margins: boundary rows of overlapping classes);
    flagging them cost F1 at 10% label noise on the selection seeds (benchmarks/README.md, 2d).

    Example:
        >>> m = torch.tensor([-1.0, -0.8, -0.05, 1.0, 1.1, 1.2, 1.5, 2.0, 2.2, 2.5])
        >>> from lightning_dv.metrics import two_means_split
        >>> two_means_split(calibrate(m, gate=0.0, gate_tolerance=0.0)).tolist()[:4]  # -0.05 < 0: flagged
        [True, True, True, False]
        >>> two_means_split(calibrate(m, gate=0.0)).tolist()[:4]  # within 0.1 s (0.13) of the gate: kept
        [True, True, False, False]
    """
    check_calibration(calibration, fence, upper_scale, gate_tolerance)
    values = values.detach()
    if calibration == "none":
        return values.clone()
    if seen is None or bool(seen.all()):  # every row seen: no masked copies
        return _calibrated(values, fence, upper_scale, gate, gate_tolerance)
    seen = seen.bool()
    out = torch.zeros_like(values)
    if bool(seen.any()):
        out[seen] = _calibrated(values[seen], fence, upper_scale, gate, gate_tolerance).to(out)
    return out


def _calibrated(
    values: Tensor, fence: float | None, upper_scale: float, gate: float | None, tolerance: float
) -> Tensor:
    """``robust_clip`` of ``values``, then gated at ``gate - tolerance * scale`` (one center/scale pass)."""
    med, scale = _center_scale(values)
    scores = _clip(values, med, scale, fence, upper_scale).to(values.dtype)  # gated in the values' dtype
    if gate is None:
        return scores
    below = gate - tolerance * float(scale) if scale > 0 else gate
    return gate_low_cluster(scores, values < below)
