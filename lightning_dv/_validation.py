"""Argument checks shared by the public constructors, so every error reads the same way."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch


def check_choice(name: str, value: Any, options: Collection[Any]) -> None:
    """Raise a ValueError naming the argument when ``value`` is not one of ``options``.

    Example:
        >>> check_choice("mass", "raw", ("raw", "uniform"))
        >>> check_choice("mass", "nope", ("raw", "uniform"))
        Traceback (most recent call last):
        ...
        ValueError: `mass='nope'` is not supported; use one of ('raw', 'uniform').
    """
    if value not in options:
        raise ValueError(f"`{name}={value!r}` is not supported; use one of {options}.")


def check_finite_rows(x: torch.Tensor, what: str, fix: str = "drop or impute those rows") -> None:
    """Raise a ValueError naming the rows of ``x`` (first dimension) that hold NaN or infinity.

    Example:
        >>> check_finite_rows(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]), "`validation`")
        Traceback (most recent call last):
        ...
        ValueError: `validation` holds NaN or infinite values in 1 row(s): 1; drop or impute those rows.
    """
    if not x.is_floating_point() or x.numel() == 0:
        return
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).reshape(-1).tolist()
        shown = ", ".join(map(str, rows[:20])) + (" ..." if len(rows) > 20 else "")
        raise ValueError(f"{what} holds NaN or infinite values in {len(rows)} row(s): {shown}; {fix}.")


def check_validation_container(validation: Any, argument: str = "validation") -> None:
    """Refuse the ambiguous shapes of a ``(x_val, y_val)`` argument: empty, or more than two parts.

    Example:
        >>> check_validation_container([])
        Traceback (most recent call last):
        ...
        ValueError: `validation` is empty: pass the validation inputs `x_val` (at least one row) or a pair (x_val, y_val).
    """
    if isinstance(validation, (tuple, list)) and len(validation) == 0:
        raise ValueError(
            f"`{argument}` is empty: pass the validation inputs `x_val` (at least one row) or a pair (x_val, y_val)."
        )
    if isinstance(validation, tuple) and len(validation) > 2:
        raise ValueError(
            f"`{argument}` is a tuple of {len(validation)} parts; pass the inputs `x_val` or a pair "
            "(x_val, y_val), without extra parts."
        )
    if (
        isinstance(validation, tuple)
        and len(validation) == 2
        and all(hasattr(v, "__len__") for v in validation)
    ):
        if len(validation[0]) != len(validation[1]):
            raise ValueError(
                f"`{argument}=(x_val, y_val)` has {len(validation[0])} inputs but {len(validation[1])} labels; "
                "give one label per validation row."
            )


def check_window(window: Any) -> None:
    """Raise a ValueError unless ``window`` (epochs per row that enter a value) is a positive int or None.

    Example:
        >>> check_window(10); check_window(None)
        >>> check_window(0)
        Traceback (most recent call last):
        ...
        ValueError: `window` must be a positive number of epochs or None (all epochs); got 0.
    """
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(
            f"`window` must be a positive number of epochs or None (all epochs); got {window!r}."
        )


def check_nonnegative(name: str, value: Any, meaning: str) -> None:
    """Raise a ValueError naming the argument unless ``value`` is a finite real number >= 0.

    Example:
        >>> check_nonnegative("weight", 0.5, "0: off")
        >>> check_nonnegative("weight", -1, "0: off")
        Traceback (most recent call last):
        ...
        ValueError: `weight` must be a finite number >= 0 (0: off); got -1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"`{name}` must be a finite number >= 0 ({meaning}); got {value!r}.")


def check_class_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Raise a ValueError unless every integer label lies in ``[0, num_classes)``; one host read.

    On CPU NumPy reads the labels in place (a fraction of the cost of tensor reductions on a
    batch); elsewhere one ``aminmax`` is read back.

    Example:
        >>> check_class_labels(torch.tensor([0, 2]), 3)
        >>> check_class_labels(torch.tensor([0, 3]), 3)
        Traceback (most recent call last):
        ...
        ValueError: labels must lie in [0, 3) for outputs with 3 classes; got [0, 3].
    """
    if labels.numel() == 0:
        return
    if labels.device.type == "cpu":
        a = labels.detach().numpy()
        lo, hi = int(a.min()), int(a.max())
    else:
        lo, hi = torch.stack(torch.aminmax(labels)).tolist()
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for outputs with {num_classes} classes; got [{lo}, {hi}]."
        )
