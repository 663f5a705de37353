"""Training-time valuation objectives: loss wrappers that learn a value per training row."""

from lightning_dv.objectives.base import ValuationObjective, ValuationStep
from lightning_dv.objectives.lossval import LossVal

__all__ = ["LossVal", "ValuationObjective", "ValuationStep"]
