"""Training-time valuation objectives: loss wrappers that learn a value per training row."""

from lightning_dv.objectives.base import ValuationObjective, ValuationStep
from lightning_dv.objectives.lossval import LossVal
from lightning_dv.objectives.nddv import NDDV

__all__ = ["LossVal", "NDDV", "ValuationObjective", "ValuationStep"]
