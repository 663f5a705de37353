"""Complexity-gap (CG) score: training-free data valuation (Ki, Choi, Chung, ICLR 2023).

For a two-layer ReLU network in the NTK regime, the complexity of a labelled set is
``y^T H^-1 y`` with ``H`` the NTK Gram matrix of the L2-normalised inputs:

    rho_ij = <x_i, x_j> (clamped to [-1, 1]),   H_ij = rho_ij (pi - arccos rho_ij) / (2 pi),   H_ii = 1/2.

The score of row ``i`` is the complexity it adds: ``CG(i) = y^T H^-1 y - y_-i^T (H_-i)^-1 y_-i``.
The authors' code downdates the inverse once per row. Block inversion gives every score exactly
from ONE Cholesky factorisation ``H = L L^T``:

    CG(i) = ((H^-1 y)_i)^2 / (H^-1)_ii  >= 0.

``H^-1 y`` is two triangular solves; ``(H^-1)_ii`` is the squared norm of column ``i`` of
``L^-1``. Scored rows are placed LAST in the problem, so only the trailing block of ``L^-1`` is
needed (for the one-vs-rest problems of the paper, 1/8 of the cost of a full inverse), and it is
produced in column panels, never as a whole matrix.

HIGH CG = irregular, hard or likely mislabelled. The exported value is ``-CG`` (higher = more
valuable); the raw score is kept in the column ``cg_score``.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback
from torch import Tensor

from lightning_dv.callbacks.collect import collect_training_rows
from lightning_dv.callbacks.reporting import as_noisy_mask, export_values, log_values
from lightning_dv.values import DataValues

if TYPE_CHECKING:
    import lightning.pytorch as pl

log = logging.getLogger(__name__)

MODES = ("ovr", "binary")
#: Progress callback: ``progress(done, total, description)`` after every solved problem.
ProgressFn = Callable[[int, int, str], None]


@dataclass
class CGProblem:
    """One kernel problem: the rows it holds, their +-1 targets, and which of them are scored.

    Attributes:
        rows: Dataset rows in problem order: context rows (negatives) first, scored rows LAST.
        targets: +1 / -1 target of each row, same order.
        num_scored: How many trailing rows are scored.
        label: The class scored (one-vs-rest), or None (binary).
        rep: Repetition number.
    """

    rows: Tensor
    targets: Tensor
    num_scored: int
    label: Any = None
    rep: int = 0

    @property
    def scored_rows(self) -> Tensor:
        return self.rows[len(self.rows) - self.num_scored :]

    def describe(self) -> str:
        what = "binary" if self.label is None else f"class {self.label!r}"
        return f"{what}, rep {self.rep}: {len(self.rows)} rows ({self.num_scored} scored)"


def plan_problems(
    labels: Tensor | np.ndarray | Sequence[Any],
    *,
    mode: Literal["ovr", "binary"] = "ovr",
    ratio: float = 1.0,
    rep: int = 1,
    seed: int = 0,
    subsample: int | None = None,
    exclude: Tensor | None = None,
) -> list[CGProblem]:
    """The kernel problems :func:`complexity_gap` solves, with the negatives it samples.

    One-vs-rest (the authors' scheme): for every class ``c`` and repetition, the ``n_c`` rows of
    ``c`` get +1 and are scored; ``min(int(n_c * ratio), N - n_c)`` rows drawn uniformly without
    replacement from the other classes get -1 and are context only. Binary: the whole set is one
    problem (the larger label +1), every row scored; repetitions add nothing there and are skipped
    unless ``subsample`` makes the problems random.

    Args:
        labels: One label per row.
        mode: ``"ovr"`` or ``"binary"``.
        ratio: Negatives per positive (one-vs-rest).
        rep: Repetitions with fresh negatives (and fresh parts when ``subsample`` is set).
        seed: Seed of the sampling (a CPU generator, so plans agree across devices).
        subsample: At most this many scored rows per problem: larger classes (binary: the whole
            set) are split at random into near-equal parts, one problem each.
        exclude: Rows to leave out of every problem (the extra copies of duplicated rows).

    Example:
        >>> probs = plan_problems([0, 0, 0, 1, 1, 2], ratio=1.0, seed=0)
        >>> [(p.label, p.num_scored, len(p.rows)) for p in probs]
        [(0, 3, 6), (1, 2, 4), (2, 1, 2)]
    """
    if mode not in MODES:
        raise ValueError(f"`mode={mode!r}` is not supported; use 'ovr' (one-vs-rest per class) or 'binary'.")
    if not ratio > 0:
        raise ValueError(f"`ratio` (negatives per positive) must be > 0; got {ratio}.")
    if int(rep) < 1:
        raise ValueError(f"`rep` (repetitions) must be >= 1; got {rep}.")
    if subsample is not None and int(subsample) < 2:
        raise ValueError(f"`subsample` (scored rows per problem) must be >= 2 or None; got {subsample}.")
    codes, classes = _encode_labels(labels)
    pool = torch.ones(len(codes), dtype=torch.bool)
    if exclude is not None and len(exclude):
        pool[torch.as_tensor(exclude, dtype=torch.long)] = False
    if len(classes) < 2:
        raise ValueError(f"the complexity gap needs at least two classes; the labels hold {len(classes)}.")
    if mode == "binary" and len(classes) != 2:
        raise ValueError(
            f"`mode='binary'` needs exactly two classes; the labels hold {len(classes)}. Use mode='ovr'."
        )
    gen = torch.Generator().manual_seed(int(seed))
    problems: list[CGProblem] = []

    def parts(rows: Tensor) -> list[Tensor]:
        if subsample is None or len(rows) <= subsample:
            return [rows]
        k = math.ceil(len(rows) / int(subsample))
        shuffled = rows[torch.randperm(len(rows), generator=gen)]
        return list(torch.tensor_split(shuffled, k))

    if mode == "binary":
        rows = torch.nonzero(pool).reshape(-1)
        y_all = torch.where(codes == 1, 1.0, -1.0).double()
        for r in range(int(rep) if subsample is not None else 1):
            for part in parts(rows):
                part = part.sort().values
                problems.append(CGProblem(part, y_all[part], len(part), None, r))
        return problems

    for r in range(int(rep)):
        for c in range(len(classes)):
            pos = torch.nonzero(pool & (codes == c)).reshape(-1)
            others = torch.nonzero(pool & (codes != c)).reshape(-1)
            if len(pos) == 0:
                continue
            for part in parts(pos):
                part = part.sort().values
                k = min(int(len(part) * ratio), len(others))
                neg = others[torch.randperm(len(others), generator=gen)[:k]].sort().values
                rows = torch.cat([neg, part])
                y = torch.cat([-torch.ones(len(neg)), torch.ones(len(part))]).double()
                problems.append(CGProblem(rows, y, len(part), _item(classes[c]), r))
    return problems


def complexity_gap(
    features: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | Sequence[Any],
    *,
    mode: Literal["ovr", "binary"] = "ovr",
    ratio: float = 1.0,
    rep: int = 1,
    seed: int = 0,
    ridge: float = 0.0,
    block_size: int = 1024,
    max_memory_bytes: int | None = None,
    subsample: int | None = None,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    ids: Sequence[Any] | None = None,
) -> DataValues:
    """Complexity-gap score of every row, exact, from one Cholesky factorisation per problem.

    Inputs are flattened and L2-normalised (so the score ignores each row's scale), everything
    runs in float64 on ``device`` (default: where ``features`` lives, so CUDA tensors compute on
    the GPU). The Gram matrix is built in row blocks and factorised in place; per problem the
    memory is one ``m x m`` float64 matrix plus ``O(m * block_size)`` working space. Before
    allocating, the need is checked against the free memory and a :class:`MemoryError` names the
    size and the ``subsample=`` value that fits.

    Duplicates: rows whose normalised features are identical (exact or rescaled copies: equal to
    ``2^-32`` in every coordinate) make ``H`` singular; for distinct directions the NTK Gram matrix
    is positive definite. Duplicates are reported with a warning naming the rows. With ``ridge=0``
    (default) copies with the SAME label are kept once in every problem (so they are also drawn
    once as negatives) and all of them score ``CG = 0``: this is the exact limit
    ``ridge -> 0`` (removing one copy leaves the fit unchanged); copies with DIFFERENT labels have
    an infinite score at ``ridge=0`` and raise a ``ValueError``. ``ridge > 0`` uses
    ``H + ridge * I`` (kernel ridge instead of interpolation): every score changes, copies stay
    in, conflicting copies get large finite scores. Should the factorisation still fail, the
    error names the row and suggests a ridge.

    Args:
        features: ``(N, ...)`` inputs or embeddings; flattened to ``(N, d)``.
        labels: ``(N,)`` class labels (any hashable values).
        mode: ``"ovr"``: the authors' one-vs-rest scheme, one problem per class with sampled
            negatives (see :func:`plan_problems`); ``"binary"``: the whole set as one problem
            (exactly two classes).
        ratio: Negatives per positive in one-vs-rest (the paper uses 1).
        rep: Repetitions with fresh negatives; scores are averaged.
        seed: Seed of the negative sampling.
        ridge: Added to the diagonal of ``H``. Changes every score; see above.
        block_size: Rows per block of the Gram build and columns per panel of ``L^-1``.
        max_memory_bytes: Memory allowed for one problem (default: the free memory of the
            device: ``MemAvailable`` on CPU, ``torch.cuda.mem_get_info`` on CUDA).
        subsample: At most this many scored rows per problem; larger classes (binary: the whole
            set) are split at random into parts. Memory falls quadratically; every row is still
            scored, each against a smaller context, so scores change.
        device: Where to compute (default: the device of ``features``).
        progress: Optional ``progress(done, total, description)`` called after every problem.
            Every problem is also logged at INFO level to the ``lightning_dv.methods.complexity_gap``
            logger with its time.
        ids: Optional user id per row, carried into the result.

    Returns:
        :class:`DataValues` with ``values = -CG`` (higher = more valuable), columns ``cg_score``
        (raw CG, high = suspicious) and ``duplicate_of`` (first row of the row's duplicate group,
        or -1), and the settings in ``metadata``.

    Raises:
        MemoryError: One problem would not fit; the message names the size and ``subsample=``.
        ValueError: Bad arguments, copies with conflicting labels at ``ridge=0``, or a Gram
            matrix that is not numerically positive definite.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(40) % 2
        >>> x = torch.randn(40, 5, generator=g)
        >>> x[:, 0] += 4.0 * y - 2.0               # two classes, two directions
        >>> y[:2] = 1 - y[:2]                      # two flipped labels
        >>> dv = complexity_gap(x, y, seed=0)
        >>> bool((dv.columns["cg_score"] >= 0).all()), dv.values.shape
        (True, (40,))
        >>> sorted(dv.lowest(2).index.tolist())   # the flipped rows are the least valuable
        [0, 1]
    """
    if int(block_size) < 1:
        raise ValueError(f"`block_size` must be >= 1; got {block_size}.")
    if not ridge >= 0:
        raise ValueError(f"`ridge` must be >= 0; got {ridge}.")
    x = features if isinstance(features, Tensor) else torch.as_tensor(np.asarray(features))
    dev = torch.device(device) if device is not None else x.device
    if x.ndim < 2:
        raise ValueError(f"`features` must have shape (N, d) or (N, ...); got shape {tuple(x.shape)}.")
    n = x.shape[0]
    codes, classes = _encode_labels(labels)
    if len(codes) != n:
        raise ValueError(
            f"`labels` has {len(codes)} entries but `features` has {n} rows; give one label per row."
        )
    xn = _normalise(x.reshape(n, -1).to(device=dev, dtype=torch.float64))
    if not torch.isfinite(xn).all():
        bad = torch.nonzero(~torch.isfinite(xn).all(1)).reshape(-1)[:10].tolist()
        raise ValueError(f"`features` hold NaN or inf values (rows {bad}...); clean or impute them first.")

    duplicate_of, conflicted = _duplicates(xn, codes)
    merged = duplicate_of >= 0
    heads = torch.unique(duplicate_of[merged])  # one head (first row) per duplicate group
    exclude = None
    if len(heads):

        def describe(head: int) -> str:
            rows = torch.nonzero(duplicate_of == head).reshape(-1)
            names = sorted({_item(classes[int(c)]) for c in codes[rows]}, key=str)
            return f"rows {rows.tolist()} (labels {names})"

        bad = torch.unique(duplicate_of[conflicted])
        if ridge == 0 and len(bad):
            raise ValueError(
                f"{len(bad)} groups of rows have identical (normalised) features but different labels: "
                f"{'; '.join(describe(int(h)) for h in bad[:5])}. Their complexity gap is infinite without a "
                "ridge. Pass ridge=1e-3 (changes every score slightly; the conflicting rows then score highest) "
                "or remove / relabel those rows."
            )
        if ridge == 0:
            exclude = torch.nonzero(merged & (duplicate_of != torch.arange(n))).reshape(-1)
            action = "each group is kept once and all its rows score CG = 0 (the exact ridge -> 0 limit)"
        else:
            merged = torch.zeros_like(merged)
            action = f"they stay in, regularised by ridge={ridge}"
        more = f" and {len(heads) - 5} more groups" if len(heads) > 5 else ""
        warnings.warn(
            f"complexity_gap: {len(heads)} groups of rows have identical (normalised) features: "
            f"{'; '.join(describe(int(h)) for h in heads[:5])}{more}; {action}.",
            UserWarning,
            stacklevel=2,
        )

    problems = plan_problems(
        codes, mode=mode, ratio=ratio, rep=rep, seed=seed, subsample=subsample, exclude=exclude
    )
    problems = [
        CGProblem(
            p.rows, p.targets, p.num_scored, None if p.label is None else _item(classes[p.label]), p.rep
        )
        for p in problems
    ]
    limit = available_memory(dev) if max_memory_bytes is None else int(max_memory_bytes)
    d = xn.shape[1]
    biggest = max(problems, key=lambda p: len(p.rows))
    need = problem_memory_bytes(len(biggest.rows), biggest.num_scored, d, int(block_size))
    if need > limit:
        raise MemoryError(
            _memory_message(biggest, need, limit, d, int(block_size), mode, ratio, max_memory_bytes)
        )

    total = torch.zeros(n, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.float64)
    start = time.perf_counter()
    for k, p in enumerate(problems):
        t0 = time.perf_counter()
        try:
            cg = cg_scores(
                xn[p.rows.to(dev)], p.targets.to(dev), p.num_scored, ridge=ridge, block_size=block_size
            )
        except NotPositiveDefiniteError as err:
            raise NotPositiveDefiniteError(err.position, ridge, row=int(p.rows[err.position])) from None
        scored = p.scored_rows
        total[scored] += cg.cpu()
        count[scored] += 1
        msg = p.describe()
        log.info(
            "complexity_gap: problem %d/%d (%s) took %.2f s",
            k + 1,
            len(problems),
            msg,
            time.perf_counter() - t0,
        )
        if progress is not None:
            progress(k + 1, len(problems), msg)
    cg_all = total / count.clamp_min(1)
    cg_all[merged] = 0.0
    return DataValues(
        values=-cg_all,
        method="complexity_gap",
        ids=ids,
        columns={"cg_score": cg_all.numpy(), "duplicate_of": duplicate_of.numpy()},
        metadata={
            "mode": mode,
            "ratio": ratio,
            "rep": rep,
            "seed": seed,
            "ridge": ridge,
            "subsample": subsample,
            "problems": len(problems),
            "duplicate_groups": len(heads),
            "seconds": time.perf_counter() - start,
        },
    )


def ntk_gram_(out: Tensor, xn: Tensor, block_size: int = 1024, ridge: float = 0.0) -> Tensor:
    """Fill the UPPER triangle (and diagonal) of ``out`` with the NTK Gram matrix of ``xn``, in row blocks.

    Working memory is two ``block_size x m`` blocks. The strict lower triangle is left untouched:
    the factorisation reads only one triangle.

    Args:
        out: ``(m, m)`` float64 tensor, written in place.
        xn: ``(m, d)`` L2-normalised rows.
        block_size: Rows per block.
        ridge: Added to the diagonal.

    Example:
        >>> xn = torch.eye(2, dtype=torch.float64)
        >>> ntk_gram_(torch.zeros(2, 2, dtype=torch.float64), xn)
        tensor([[0.5000, 0.0000],
                [0.0000, 0.5000]], dtype=torch.float64)
    """
    m = xn.shape[0]
    for r0 in range(0, m, block_size):
        r1 = min(r0 + block_size, m)
        rho = (xn[r0:r1] @ xn[r0:].T).clamp_(-1.0, 1.0)  # rounding can push |rho| past 1: arccos NaN
        angle = torch.arccos(rho)
        rho.mul_(angle.neg_().add_(math.pi)).div_(2.0 * math.pi)
        out[r0:r1, r0:] = rho
        del rho, angle
    out.diagonal().fill_(0.5 + ridge)  # rho_ii = 1 by definition, whatever the rounding
    return out


#: Pivots (squared Cholesky diagonal, at most 1/2) below this are singular to working precision. The
#: kernel has a square-root cusp at rho = 1: one unit of rounding in an inner product moves
#: arccos(rho) by sqrt(2 * eps) ~ 2e-8, so an exact duplicate leaves a pivot of ~1e-8 (or a failed
#: factorisation), depending on the BLAS kernel. Below 1e-7 a row is indistinguishable from a copy.
SINGULAR_PIVOT = 1e-7
#: Pivots below this (but above SINGULAR_PIVOT) make the scores around that row rounding-sensitive.
NEAR_SINGULAR_PIVOT = 1e-5


def cg_scores(
    xn: Tensor, targets: Tensor, num_scored: int, ridge: float = 0.0, block_size: int = 1024
) -> Tensor:
    """Exact CG scores of the last ``num_scored`` rows of one problem.

    ``CG(i) = ((H^-1 y)_i)^2 / (H^-1)_ii`` from one in-place Cholesky factorisation of the NTK
    Gram matrix; ``(H^-1)_ii`` for the trailing scored rows is the squared column norm of the
    inverse of the trailing block of ``L`` (block triangular inverse), computed in panels.

    Args:
        xn: ``(m, d)`` float64 L2-normalised rows, scored rows last.
        targets: ``(m,)`` targets (+-1).
        num_scored: How many trailing rows to score.
        ridge: Added to the diagonal of ``H``.
        block_size: Rows per Gram block and columns per panel.

    Returns:
        ``(num_scored,)`` float64 scores, on ``xn``'s device.

    Example:
        >>> xn = torch.eye(3, dtype=torch.float64)          # orthogonal rows: H = I / 2
        >>> cg_scores(xn, torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64), 2)
        tensor([2., 2.], dtype=torch.float64)
    """
    m = xn.shape[0]
    if not 0 < num_scored <= m:
        raise ValueError(f"`num_scored` must lie in [1, {m}]; got {num_scored}.")
    buf = torch.empty(m, m, dtype=torch.float64, device=xn.device)
    ntk_gram_(buf, xn, block_size, ridge)
    # buf holds H in its upper triangle; buf.mT is column-major (what LAPACK / cuSOLVER use), its
    # lower triangle is H, and factorising the view into itself avoids a second m x m copy.
    chol = buf.mT
    info = torch.zeros((), dtype=torch.int32, device=xn.device)
    torch.linalg.cholesky_ex(chol, upper=False, out=(chol, info))
    # Singularity is decided by a tolerance on the pivots, not by whether the factorisation happened
    # to fail: rounding differs between BLAS code paths (AVX2 / AVX-512), so an exactly singular H can
    # factorise with a tiny positive pivot on one machine and fail on another.
    pivot = chol.diagonal() ** 2  # each row's kernel-space residual given the earlier rows (<= 1/2)
    failed = int(info) - 1 if int(info) > 0 else m
    # a ridge r bounds every exact pivot below by r: then only pivots under r/2 are rounding failures
    tol = SINGULAR_PIVOT if ridge <= 0 else min(SINGULAR_PIVOT, ridge / 2)
    tiny = torch.nonzero(pivot[:failed] < tol).reshape(-1)
    first = min(failed, int(tiny[0]) if tiny.numel() else m)
    if first < m:
        raise NotPositiveDefiniteError(first, ridge)
    y = targets.to(dtype=torch.float64).reshape(-1, 1)
    # two triangular solves on views of the factor: cholesky_solve would copy the m x m factor
    alpha = torch.linalg.solve_triangular(
        chol.mT, torch.linalg.solve_triangular(chol, y, upper=False), upper=True
    )
    alpha = alpha.reshape(-1)
    off = m - num_scored
    diag = _inverse_column_norms(chol, off, block_size)
    if ridge < NEAR_SINGULAR_PIVOT and float(pivot.min()) < NEAR_SINGULAR_PIVOT:
        warnings.warn(
            f"complexity_gap: row position {int(pivot.argmin())} of a {m}-row problem is within "
            f"{NEAR_SINGULAR_PIVOT:g} of the "
            "span of the earlier rows in the NTK feature space: near-duplicates make the scores around it "
            "rounding-dominated. Consider ridge=1e-6 or removing near-duplicates.",
            UserWarning,
            stacklevel=3,
        )
    return alpha[off:] ** 2 / diag


def _inverse_column_norms(chol: Tensor, off: int, block_size: int) -> Tensor:
    """Squared column norms of ``inv(L[off:, off:])`` (= ``diag(H^-1)[off:]``), panel by panel.

    Blocked forward substitution on ``L[off:, off:] X = I``: for a panel of columns ``[j0, j1)``
    only rows ``>= j0`` are non-zero. Triangular solves touch ``block x block`` diagonal blocks and
    the updates are matrix products on strided views of ``L``, so no trailing submatrix is copied.
    """
    m = chol.shape[0]
    s = m - off
    out = torch.zeros(s, dtype=torch.float64, device=chol.device)
    bs = block_size
    for j0 in range(off, m, bs):
        j1 = min(j0 + bs, m)
        rhs = torch.zeros(m - j0, j1 - j0, dtype=torch.float64, device=chol.device)
        rhs[: j1 - j0].fill_diagonal_(1.0)
        for k0 in range(j0, m, bs):
            k1 = min(k0 + bs, m)
            xk = torch.linalg.solve_triangular(chol[k0:k1, k0:k1], rhs[k0 - j0 : k1 - j0], upper=False)
            out[j0 - off : j1 - off] += (xk * xk).sum(0)
            if k1 < m:
                rhs[k1 - j0 :].sub_(chol[k1:, k0:k1] @ xk)
        del rhs
    return out


class NotPositiveDefiniteError(ValueError):
    """The NTK Gram matrix of a problem is not numerically positive definite."""

    def __init__(self, position: int, ridge: float, row: int | None = None) -> None:
        self.position = position
        where = f"row position {position} of the problem" + ("" if row is None else f" (dataset row {row})")
        super().__init__(
            f"the NTK Gram matrix is not numerically positive definite at {where}, ridge={ridge}: that row is "
            "(nearly) a duplicate of earlier rows after L2 normalisation. Pass ridge=1e-6 or larger "
            "(changes every score slightly) or remove near-duplicates."
        )


def problem_memory_bytes(m: int, num_scored: int, d: int, block_size: int) -> int:
    """Bytes one problem of ``m`` rows needs: the Gram matrix, its working blocks and the features.

    Example:
        >>> problem_memory_bytes(10_000, 5_000, 784, 1024) / 2**30 > 0.745   # the m x m matrix dominates
        True
    """
    b = min(block_size, m)
    return 8 * (m * m + 2 * b * m + m * d + 2 * b * num_scored + 4 * m)


def available_memory(device: torch.device) -> int:
    """Free memory of ``device`` in bytes (CPU: ``MemAvailable``; CUDA: free plus cached)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 2**62


def _memory_message(
    p: CGProblem,
    need: int,
    limit: int,
    d: int,
    block_size: int,
    mode: str,
    ratio: float,
    user_limit: int | None,
) -> str:
    m = len(p.rows)
    per_scored = m / p.num_scored  # rows per scored row: 1 + ratio (ovr), 1 (binary)
    fit = p.num_scored
    while fit > 2 and problem_memory_bytes(int(math.ceil(fit * per_scored)), fit, d, block_size) > limit:
        fit = int(fit * 0.9)
    where = "max_memory_bytes" if user_limit is not None else "free memory"
    lower = " or a smaller `ratio=`" if mode == "ovr" and ratio > 0 else ""
    return (
        f"complexity_gap: the largest problem ({p.describe()}) needs about {need / 2**30:.2f} GiB "
        f"(a {m} x {m} float64 Gram matrix is {8 * m * m / 2**30:.2f} GiB) but only {limit / 2**30:.2f} GiB "
        f"is allowed ({where}). Pass subsample={max(fit, 2)} (at most that many scored rows per problem; every row "
        f"is still scored, against a smaller context){lower}, or compute on a device with more memory."
    )


def _encode_labels(labels: Tensor | np.ndarray | Sequence[Any]) -> tuple[Tensor, np.ndarray]:
    """Labels as class codes ``0..C-1`` (CPU long tensor) and the sorted class values."""
    arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    arr = arr.reshape(-1)
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError("`labels` contain NaN; give a class label for every row.")
    classes, codes = np.unique(arr, return_inverse=True)
    return torch.as_tensor(codes.reshape(-1), dtype=torch.long), classes


def _item(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _normalise(x: Tensor) -> Tensor:
    """L2-normalise rows; all-zero rows stay zero (orthogonal to everything, H_ii = 1/2)."""
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


#: Normalised rows equal after rounding to this grid are duplicates: their inner product is 1 in
#: float64, so H has two equal rows. Exact and rescaled copies land on the same grid point.
DUPLICATE_GRID = 2.0**-32


def _duplicates(xn: Tensor, codes: Tensor) -> tuple[Tensor, Tensor]:
    """Duplicate normalised rows: each row's group head (its first row) or -1, and mixed-label rows.

    Vectorised (no per-group loop), so datasets with many duplicates stay cheap.
    """
    n = len(codes)
    keys = torch.round(xn / DUPLICATE_GRID)
    _, inverse, counts = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)
    inverse, counts = inverse.cpu(), counts.cpu()
    u = len(counts)
    head = torch.full((u,), n, dtype=torch.long).scatter_reduce(0, inverse, torch.arange(n), "amin")
    lo = torch.full((u,), n, dtype=torch.long).scatter_reduce(0, inverse, codes, "amin")
    hi = torch.full((u,), -1, dtype=torch.long).scatter_reduce(0, inverse, codes, "amax")
    dup = (counts > 1)[inverse]
    duplicate_of = torch.where(dup, head[inverse], torch.full_like(inverse, -1))
    return duplicate_of, dup & (lo != hi)[inverse]


class ComplexityGapValuation(Callback):
    """Compute the complexity-gap score of the training set when ``fit`` starts; log and export it.

    No training is needed: at ``on_fit_start`` the callback iterates the trainer's train
    dataloader once (batches ``(idx, x, y)`` from :class:`~lightning_dv.IndexedDataset`), maps the
    inputs through ``features`` under ``torch.no_grad()`` (default: flattened inputs; or e.g. a
    frozen encoder), and calls :func:`complexity_gap`. The result is logged once (histogram,
    summary scalars, detection F1 / AUROC when ``known_noisy`` is given), kept in ``.values`` and
    written to ``export_path`` from rank zero.

    Under DDP each rank sees its shard: the ``(row, feature)`` pairs are gathered across ranks
    first, and every rank computes the same deterministic score (so ``.values`` is identical
    everywhere). Rows the loader never yields (``drop_last``, ``limit_train_batches``) get no value.

    Args:
        features: Maps a batch of inputs to ``(B, d)`` features, e.g. a frozen encoder. Default:
            the inputs flattened (in their own precision, then float64).
        export_path: Optional .csv / .parquet / .npz destination.
        known_noisy: Optional indices or boolean mask of rows known to be corrupted (benchmarks).
        mode, ratio, rep, seed, ridge, subsample, block_size, max_memory_bytes: See
            :func:`complexity_gap`.
        device: Where to compute (default: the LightningModule's device).
        prefix: Tag prefix of the logged data.

    Example:
        >>> import lightning as L
        >>> cb = ComplexityGapValuation(export_path="cg.csv", known_noisy=[3, 7])
        >>> # trainer = L.Trainer(callbacks=[cb]); trainer.fit(model, DataLoader(IndexedDataset(ds)))
        >>> # cb.values.lowest(10)  ->  the most suspicious rows
    """

    def __init__(
        self,
        features: Callable[[Tensor], Tensor] | None = None,
        export_path: str | os.PathLike | None = None,
        known_noisy: Any = None,
        mode: Literal["ovr", "binary"] = "ovr",
        ratio: float = 1.0,
        rep: int = 1,
        seed: int = 0,
        ridge: float = 0.0,
        subsample: int | None = None,
        block_size: int = 1024,
        max_memory_bytes: int | None = None,
        device: torch.device | str | None = None,
        prefix: str = "data_values/complexity_gap",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"`mode={mode!r}` is not supported; use 'ovr' or 'binary'.")
        self.features = features
        self.export_path = export_path
        self.known_noisy = known_noisy
        self.options = dict(
            mode=mode,
            ratio=ratio,
            rep=rep,
            seed=seed,
            ridge=ridge,
            subsample=subsample,
            block_size=block_size,
            max_memory_bytes=max_memory_bytes,
        )
        self.device = device
        self.prefix = prefix
        self.values: DataValues | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        data = collect_training_rows(trainer, pl_module, self.features, caller="ComplexityGapValuation")
        seen = data.rows
        device = self.device if self.device is not None else data.features.device
        result = complexity_gap(data.features, data.labels.cpu(), device=device, **self.options)
        # duplicate_of refers to positions among the valued rows: map it back to dataset rows
        dup = result.columns["duplicate_of"]
        result.columns["duplicate_of"] = np.where(dup >= 0, seen.numpy()[np.maximum(dup, 0)], -1)
        self.values = DataValues(
            values=result.values,
            method=result.method,
            index=seen,
            ids=data.ids,
            columns=result.columns,
            metadata={
                **result.metadata,
                "features": "flatten" if self.features is None else repr(self.features),
            },
        )
        noisy = as_noisy_mask(self.known_noisy, data.num_rows)
        log_values(
            trainer,
            torch.as_tensor(self.values.values),
            step=trainer.global_step,
            prefix=self.prefix,
            noisy=None if noisy is None else noisy[seen],
        )
        if self.export_path is not None:
            export_values(trainer, self.values, self.export_path)
