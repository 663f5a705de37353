"""Every valuation method by name: its class, its kind and one line of description.

``"objective"`` methods are training-time objectives for
:class:`~lightning_dv.callbacks.DataValuation`; ``"whole_set"`` methods value a labelled set in one
call (``fit(features, labels)``) for :class:`~lightning_dv.callbacks.WholeSetValuation`. The
callbacks' error messages, the command line and the benchmark read this table; adding a method is
one :func:`register` line below. Classes are named as ``"module:Class"`` and imported on use, so
the registry imports no method.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from lightning_dv._validation import check_choice

KINDS = ("objective", "whole_set")


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: Registry key (also the method's ``name`` and the benchmark's method name).
        target: ``"module:Class"`` of its class.
        kind: ``"objective"`` or ``"whole_set"``.
        description: One line for listings.
    """

    name: str
    target: str
    kind: str
    description: str

    def load(self) -> type:
        """Import and return the class."""
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    @property
    def class_name(self) -> str:
        return self.target.partition(":")[2]


METHODS: dict[str, MethodSpec] = {}


def register(name: str, target: str, kind: str, description: str) -> MethodSpec:
    """Add a method to :data:`METHODS` (one line per method).

    Example:
        >>> spec = register("demo_method", "lightning_dv.methods.lossval:LossVal", "objective", "demo")
        >>> get("demo_method").load().__name__
        'LossVal'
        >>> _ = METHODS.pop("demo_method")
    """
    check_choice("kind", kind, KINDS)
    if name in METHODS:
        raise ValueError(f"a method named {name!r} is already registered ({METHODS[name].target}).")
    if ":" not in target:
        raise ValueError(f"`target={target!r}` must be 'module:Class'.")
    METHODS[name] = spec = MethodSpec(name, target, kind, description)
    return spec


def get(name: str) -> MethodSpec:
    """The method registered under ``name``; the error lists every registered name."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(names())}.")
    return METHODS[name]


def names(kind: str | None = None) -> list[str]:
    """Registered names, optionally of one kind, in registration order.

    Example:
        >>> names("whole_set")
        ['complexity_gap', 'ecoval']
    """
    return [n for n, s in METHODS.items() if kind is None or s.kind == kind]


def describe(kind: str) -> str:
    """``"LossVal (lossval), NDDV (nddv)"``: the registered classes of one kind, for error messages."""
    return ", ".join(f"{s.class_name} ({s.name})" for s in METHODS.values() if s.kind == kind)


register(
    "lossval",
    "lightning_dv.methods.lossval:LossVal",
    "objective",
    "LossVal: per-row loss weights learnt against an OT distance to validation data",
)
register(
    "nddv",
    "lightning_dv.methods.nddv:NDDV",
    "objective",
    "NDDV: neural dynamic data valuation, per-row weights from training dynamics",
)
register("aum", "lightning_dv.methods.aum:AUM", "objective", "AUM: area under the margin over training")
register(
    "complexity_gap",
    "lightning_dv.methods.complexity_gap:ComplexityGap",
    "whole_set",
    "complexity gap: training-free leave-one-out NTK complexity",
)
register(
    "ecoval",
    "lightning_dv.methods.ecoval:EcoVal",
    "whole_set",
    "EcoVal: cluster values from a production function",
)
