"""AUM: the area under the margin (Pleiss et al., NeurIPS 2020)."""

from lightning_dv.methods.aum.objective import AUM, assigned_margin

__all__ = ["AUM", "assigned_margin"]
