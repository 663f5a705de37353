"""EcoVal: cluster-level values from a production function, propagated to points and to unseen points."""

from lightning_dv.methods.ecoval.core import EcoVal, EcoValValuation

__all__ = ["EcoVal", "EcoValValuation"]
