"""lightning-dv: data valuation as a by-product of PyTorch Lightning training."""

from lightning_dv.callbacks import ComplexityGapValuation, DataValuation, EcoValValuation, WholeSetValuation
from lightning_dv.data import IndexedDataset
from lightning_dv.methods import AUM, NDDV, LossVal, ValuationObjective, ValuationState, ValuationStep
from lightning_dv.methods.aum import with_forest
from lightning_dv.methods.complexity_gap import ComplexityGap, complexity_gap
from lightning_dv.methods.ecoval import EcoVal
from lightning_dv.methods.nddv.dynamics import ControlledDynamicsNet
from lightning_dv.metrics import (
    DetectionAUROC,
    DetectionF1,
    detection_auroc,
    discovery_curve,
    kmeans_f1,
    two_means_split,
)
from lightning_dv.mixin import DataValuationMixin
from lightning_dv.valuate import valuate
from lightning_dv.values import DataValues

__all__ = [
    "AUM",
    "DataValuation",
    "DataValuationMixin",
    "ComplexityGap",
    "ComplexityGapValuation",
    "ControlledDynamicsNet",
    "LossVal",
    "NDDV",
    "ValuationObjective",
    "ValuationState",
    "ValuationStep",
    "WholeSetValuation",
    "DataValues",
    "DetectionAUROC",
    "DetectionF1",
    "EcoVal",
    "EcoValValuation",
    "IndexedDataset",
    "complexity_gap",
    "detection_auroc",
    "discovery_curve",
    "kmeans_f1",
    "two_means_split",
    "valuate",
    "with_forest",
]
__version__ = "0.1.0"
