"""AUM: the area under the margin (Pleiss et al., NeurIPS 2020), and its second opinions."""

from lightning_dv.methods.aum.forest import forest_margins, with_forest
from lightning_dv.methods.aum.objective import AUM, assigned_margin

__all__ = ["AUM", "assigned_margin", "forest_margins", "with_forest"]
