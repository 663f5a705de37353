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

from lightning_dv.methods.complexity_gap.kernel import NotPositiveDefiniteError, cg_scores, ntk_gram_
from lightning_dv.methods.complexity_gap.problems import CGProblem, plan_problems
from lightning_dv.methods.complexity_gap.score import ComplexityGap, complexity_gap

__all__ = [
    "CGProblem",
    "ComplexityGap",
    "NotPositiveDefiniteError",
    "cg_scores",
    "complexity_gap",
    "ntk_gram_",
    "plan_problems",
]
