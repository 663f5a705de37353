"""Valuation methods: the declared interface (``base``), the per-row weights, one sub-package per method."""

from lightning_dv.methods.aum import AUM
from lightning_dv.methods.base import ValuationObjective, ValuationState, ValuationStep, WholeSetMethod
from lightning_dv.methods.lossval import LossVal
from lightning_dv.methods.nddv import NDDV

__all__ = [
    "AUM",
    "LossVal",
    "NDDV",
    "ValuationObjective",
    "ValuationState",
    "ValuationStep",
    "WholeSetMethod",
]
