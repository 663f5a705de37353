"""Rows that coincide after L2 normalisation: found, merged (same label) or set aside (conflicting labels).

Identical normalised rows make the NTK Gram matrix singular; for distinct directions it is
positive definite. Copies with the SAME label are kept once in every problem and score
``CG = 0``, the exact ``ridge -> 0`` limit (removing one copy leaves the fit unchanged). Copies
with DIFFERENT labels have an infinite gap at ``ridge = 0``: they are left out of every problem
and scored as the most suspicious rows, so every other row is scored exactly as on the data
without them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_dv.methods.complexity_gap.problems import _item

#: Normalised rows equal after rounding to this grid are duplicates: their inner product is 1 in
#: float64, so H has two equal rows. Exact and rescaled copies land on the same grid point.
DUPLICATE_GRID = 2.0**-32


def normalise(x: Tensor) -> Tensor:
    """L2-normalise rows; all-zero rows stay zero (orthogonal to everything, H_ii = 1/2)."""
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


def find_duplicates(xn: Tensor, codes: Tensor) -> tuple[Tensor, Tensor]:
    """Duplicate normalised rows: each row's group head (its first row) or -1, and mixed-label rows.

    Vectorised (no per-group loop), so datasets with many duplicates stay cheap.

    Example:
        >>> xn = normalise(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
        >>> head, mixed = find_duplicates(xn, torch.tensor([0, 1, 0]))
        >>> head.tolist(), mixed.tolist()
        ([0, 0, -1], [True, True, False])
    """
    n = len(codes)
    keys = torch.round(xn / DUPLICATE_GRID)
    _, inverse, counts = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)
    inverse, counts = inverse.cpu(), counts.cpu()
    u = len(counts)
    head = torch.full((u,), n, dtype=torch.long).scatter_reduce(0, inverse, torch.arange(n), "amin")
    lo = torch.full((u,), n, dtype=torch.long).scatter_reduce(0, inverse, codes, "amin")
    hi = torch.full((u,), -1, dtype=torch.long).scatter_reduce(0, inverse, codes, "amax")
    dup = (counts > 1)[inverse]
    duplicate_of = torch.where(dup, head[inverse], torch.full_like(inverse, -1))
    return duplicate_of, dup & (lo != hi)[inverse]


@dataclass
class Duplicates:
    """How duplicated rows enter the problems.

    Attributes:
        duplicate_of: Each row's group head (first row of its duplicate group), or -1.
        exclude: Rows left out of every problem (extra same-label copies, all conflicting rows).
        merged: Rows scored ``CG = 0`` (same-label groups at ``ridge = 0``).
        conflicting: Rows in groups with different labels, scored as the most suspicious.
        groups: Number of duplicate groups.
    """

    duplicate_of: Tensor
    exclude: Tensor | None
    merged: Tensor
    conflicting: Tensor
    groups: int


def resolve_duplicates(xn: Tensor, codes: Tensor, classes: np.ndarray, ridge: float) -> Duplicates:
    """Find duplicate groups, decide how each enters the problems, and warn with the rows named.

    With ``ridge = 0``: same-label groups are kept once (``merged``), conflicting groups are left
    out (``conflicting``). With ``ridge > 0`` every copy stays in, regularised.
    """
    n = len(codes)
    duplicate_of, mixed = find_duplicates(xn, codes)
    dup = duplicate_of >= 0
    heads = torch.unique(duplicate_of[dup])
    none = torch.zeros(n, dtype=torch.bool)
    if not len(heads):
        return Duplicates(duplicate_of, None, none, none, 0)
    if ridge > 0:
        _warn_duplicates(duplicate_of, codes, classes, heads, f"they stay in, regularised by ridge={ridge}")
        return Duplicates(duplicate_of, None, none, none, len(heads))
    conflicting = mixed
    merged = dup & ~conflicting
    extra_copy = merged & (duplicate_of != torch.arange(n))
    exclude = torch.nonzero(extra_copy | conflicting).reshape(-1)
    action = "same-label groups are kept once and all their rows score CG = 0 (the exact ridge -> 0 limit)"
    if conflicting.any():
        action += (
            "; groups with DIFFERENT labels are left out of every problem and scored as the most "
            "suspicious rows (their gap is infinite at ridge=0; pass ridge=1e-3 to score them finitely)"
        )
    _warn_duplicates(duplicate_of, codes, classes, heads, action)
    return Duplicates(duplicate_of, exclude, merged, conflicting, len(heads))


def _warn_duplicates(
    duplicate_of: Tensor, codes: Tensor, classes: np.ndarray, heads: Tensor, action: str
) -> None:
    def describe(head: int) -> str:
        rows = torch.nonzero(duplicate_of == head).reshape(-1)
        names: list[Any] = sorted({_item(classes[int(c)]) for c in codes[rows]}, key=str)
        return f"rows {rows.tolist()} (labels {names})"

    more = f" and {len(heads) - 5} more groups" if len(heads) > 5 else ""
    warnings.warn(
        f"complexity_gap: {len(heads)} groups of rows have identical (normalised) features: "
        f"{'; '.join(describe(int(h)) for h in heads[:5])}{more}; {action}.",
        UserWarning,
        stacklevel=4,
    )
