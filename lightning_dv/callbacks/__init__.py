"""Lightning callbacks: training-time valuation, whole-set valuation, and their shared reporting."""

from lightning_dv.callbacks.data_valuation import DataValuation
from lightning_dv.callbacks.whole_set import ComplexityGapValuation, EcoValValuation, WholeSetValuation

__all__ = ["ComplexityGapValuation", "DataValuation", "EcoValValuation", "WholeSetValuation"]
