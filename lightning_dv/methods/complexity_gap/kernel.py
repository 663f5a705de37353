"""The NTK Gram matrix and the exact complexity-gap scores of one kernel problem.

``CG(i) = ((H^-1 y)_i)^2 / (H^-1)_ii`` from one Cholesky factorisation ``H = L L^T`` (block
inversion); see :mod:`lightning_dv.methods.complexity_gap` for the formula and the reference.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor


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
