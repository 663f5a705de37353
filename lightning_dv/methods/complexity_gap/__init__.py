"""The complexity-gap score: training-free leave-one-out NTK complexity, in closed form."""

from lightning_dv.methods.complexity_gap.core import (
    ComplexityGapValuation,
    NotPositiveDefiniteError,
    cg_scores,
    complexity_gap,
)

__all__ = ["ComplexityGapValuation", "NotPositiveDefiniteError", "cg_scores", "complexity_gap"]
