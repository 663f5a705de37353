"""Benchmarks: the OpenDataVal protocol, built-in baselines and the training-overhead benchmark.

Run from the shell with ``python -m lightning_dv.bench --help`` (protocol) or
``python -m lightning_dv.bench overhead --help``; from Python with :func:`run_protocol` and
:func:`write_report`. See ``benchmarks/README.md``.
"""

from lightning_dv.bench.baselines import (
    MethodUnavailable,
    cleanlab_label_quality,
    data_oob,
    knn_shapley,
    loss_only,
    random_values,
)
from lightning_dv.bench.cli import main
from lightning_dv.bench.protocol import evaluate, run_protocol, write_report
from lightning_dv.bench.registry import METHODS, Method, register

__all__ = [
    "METHODS",
    "Method",
    "MethodUnavailable",
    "cleanlab_label_quality",
    "data_oob",
    "evaluate",
    "knn_shapley",
    "loss_only",
    "main",
    "random_values",
    "register",
    "run_protocol",
    "write_report",
]
