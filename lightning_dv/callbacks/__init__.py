"""Lightning callbacks: training-time valuation, whole-set valuation, and their shared reporting."""

from lightning_dv.callbacks.data_valuation import DataValuation

__all__ = ["DataValuation"]
