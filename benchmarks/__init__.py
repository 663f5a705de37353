"""Benchmarks: the OpenDataVal protocol, built-in baselines and the training-overhead benchmark.

Run from the shell with ``python -m benchmarks --help`` (protocol) or
``python -m benchmarks overhead --help``; from Python with :func:`run_protocol` and
:func:`write_report`. See ``benchmarks/README.md``.
"""

from benchmarks.baselines import (
    MethodUnavailable,
    cleanlab_label_quality,
    data_oob,
    knn_shapley,
    loss_only,
    random_values,
)
from benchmarks.cli import main
from benchmarks.protocol import evaluate, run_protocol, write_report
from benchmarks.registry import METHODS, Method, register

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
