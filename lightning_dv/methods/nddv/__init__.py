"""NDDV: values read from the state and costate of training seen as a controlled dynamical system."""

from lightning_dv.methods.nddv.dynamics import ControlledDynamicsNet
from lightning_dv.methods.nddv.objective import NDDV

__all__ = ["NDDV", "ControlledDynamicsNet"]
