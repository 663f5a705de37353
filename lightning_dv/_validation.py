"""Argument checks shared by the public constructors, so every error reads the same way."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


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
