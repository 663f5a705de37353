"""LossVal: per-row weights learned through a weighted loss scaled by an optimal-transport distance."""

from lightning_dv.methods.lossval.objective import LossVal

__all__ = ["LossVal"]
