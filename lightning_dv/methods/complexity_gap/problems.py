"""The kernel problems of the complexity gap: one-vs-rest with sampled negatives, or binary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

MODES = ("ovr", "binary")


@dataclass
class CGProblem:
    """One kernel problem: the rows it holds, their +-1 targets, and which of them are scored.

    Attributes:
        rows: Dataset rows in problem order: context rows (negatives) first, scored rows LAST.
        targets: +1 / -1 target of each row, same order.
        num_scored: How many trailing rows are scored.
        label: The class scored (one-vs-rest), or None (binary).
        rep: Repetition number.
    """

    rows: Tensor
    targets: Tensor
    num_scored: int
    label: Any = None
    rep: int = 0

    @property
    def scored_rows(self) -> Tensor:
        return self.rows[len(self.rows) - self.num_scored :]

    def describe(self) -> str:
        what = "binary" if self.label is None else f"class {self.label!r}"
        return f"{what}, rep {self.rep}: {len(self.rows)} rows ({self.num_scored} scored)"


def plan_problems(
    labels: Tensor | np.ndarray | Sequence[Any],
    *,
    mode: Literal["ovr", "binary"] = "ovr",
    ratio: float = 1.0,
    rep: int = 1,
    seed: int = 0,
    subsample: int | None = None,
    exclude: Tensor | None = None,
) -> list[CGProblem]:
    """The kernel problems :func:`complexity_gap` solves, with the negatives it samples.

    One-vs-rest (the authors' scheme): for every class ``c`` and repetition, the ``n_c`` rows of
    ``c`` get +1 and are scored; ``min(int(n_c * ratio), N - n_c)`` rows drawn uniformly without
    replacement from the other classes get -1 and are context only. Binary: the whole set is one
    problem (the larger label +1), every row scored; repetitions add nothing there and are skipped
    unless ``subsample`` makes the problems random.

    Args:
        labels: One label per row.
        mode: ``"ovr"`` or ``"binary"``.
        ratio: Negatives per positive (one-vs-rest).
        rep: Repetitions with fresh negatives (and fresh parts when ``subsample`` is set).
        seed: Seed of the sampling (a CPU generator, so plans agree across devices).
        subsample: At most this many scored rows per problem: larger classes (binary: the whole
            set) are split at random into near-equal parts, one problem each.
        exclude: Rows to leave out of every problem (the extra copies of duplicated rows).

    Example:
        >>> probs = plan_problems([0, 0, 0, 1, 1, 2], ratio=1.0, seed=0)
        >>> [(p.label, p.num_scored, len(p.rows)) for p in probs]
        [(0, 3, 6), (1, 2, 4), (2, 1, 2)]
    """
    if mode not in MODES:
        raise ValueError(f"`mode={mode!r}` is not supported; use 'ovr' (one-vs-rest per class) or 'binary'.")
    if not ratio > 0:
        raise ValueError(f"`ratio` (negatives per positive) must be > 0; got {ratio}.")
    if int(rep) < 1:
        raise ValueError(f"`rep` (repetitions) must be >= 1; got {rep}.")
    if subsample is not None and int(subsample) < 2:
        raise ValueError(f"`subsample` (scored rows per problem) must be >= 2 or None; got {subsample}.")
    codes, classes = _encode_labels(labels)
    pool = torch.ones(len(codes), dtype=torch.bool)
    if exclude is not None and len(exclude):
        pool[torch.as_tensor(exclude, dtype=torch.long)] = False
    if len(classes) < 2:
        raise ValueError(f"the complexity gap needs at least two classes; the labels hold {len(classes)}.")
    if mode == "binary" and len(classes) != 2:
        raise ValueError(
            f"`mode='binary'` needs exactly two classes; the labels hold {len(classes)}. Use mode='ovr'."
        )
    gen = torch.Generator().manual_seed(int(seed))
    problems: list[CGProblem] = []

    def parts(rows: Tensor) -> list[Tensor]:
        if subsample is None or len(rows) <= subsample:
            return [rows]
        k = math.ceil(len(rows) / int(subsample))
        shuffled = rows[torch.randperm(len(rows), generator=gen)]
        return list(torch.tensor_split(shuffled, k))

    if mode == "binary":
        rows = torch.nonzero(pool).reshape(-1)
        y_all = torch.where(codes == 1, 1.0, -1.0).double()
        for r in range(int(rep) if subsample is not None else 1):
            for part in parts(rows):
                part = part.sort().values
                problems.append(CGProblem(part, y_all[part], len(part), None, r))
        return problems

    for r in range(int(rep)):
        for c in range(len(classes)):
            pos = torch.nonzero(pool & (codes == c)).reshape(-1)
            others = torch.nonzero(pool & (codes != c)).reshape(-1)
            if len(pos) == 0:
                continue
            for part in parts(pos):
                part = part.sort().values
                k = min(int(len(part) * ratio), len(others))
                neg = others[torch.randperm(len(others), generator=gen)[:k]].sort().values
                rows = torch.cat([neg, part])
                y = torch.cat([-torch.ones(len(neg)), torch.ones(len(part))]).double()
                problems.append(CGProblem(rows, y, len(part), _item(classes[c]), r))
    return problems


def _encode_labels(labels: Tensor | np.ndarray | Sequence[Any]) -> tuple[Tensor, np.ndarray]:
    """Labels as class codes ``0..C-1`` (CPU long tensor) and the sorted class values."""
    arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    arr = arr.reshape(-1)
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError("`labels` contain NaN; give a class label for every row.")
    classes, codes = np.unique(arr, return_inverse=True)
    return torch.as_tensor(codes.reshape(-1), dtype=torch.long), classes


def _item(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
