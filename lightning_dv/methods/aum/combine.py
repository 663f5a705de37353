"""AUM's in-training margin combined with a second opinion: a margin from models that never trained on the row.

::

    c_i = a_i / s_a + w * o_i / s_o      (a: AUM's mean in-training margin; o: the second opinion's margin
                                          of the row's assigned label; s: 1.4826 MAD of each)
    value_i = calibrate(c)(i), flagged below AUM's gate (c_i < -0.1 s_c)

Each part is divided by its robust spread but not centred, so 0 keeps its meaning ("the assigned
label loses") in both and AUM's gate applies to the sum. Why a second opinion: AUM reads the
user's model while it trains, and must stop before the model memorises the flipped rows; a model
that never saw a row cannot memorise it, and one of another family makes other mistakes. The
two second opinions are the user's model cross-fitted (:mod:`~lightning_dv.methods.aum.crossfit`)
and an extremely randomised forest's out-of-bag margin (:mod:`~lightning_dv.methods.aum.forest`).

Example:
    >>> import torch
    >>> a = torch.tensor([-2.0, 1.0, 2.0, 3.0, 2.5, 1.5, 2.0, -0.5])
    >>> o = torch.tensor([-1.0, 0.5, 1.0, 2.0, 1.5, 1.0, 1.2, 0.8])
    >>> from lightning_dv.metrics import two_means_split
    >>> two_means_split(combine_margins(a, o)).tolist()  # row 7: AUM < 0 but the second opinion agrees
    [True, False, False, False, False, False, False, False]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_dv._validation import check_nonnegative
from lightning_dv.methods.calibration import GATE_TOLERANCE, _center_scale, calibrate
from lightning_dv.values import DataValues


def combine_margins(
    in_training: Tensor,
    held_out: Tensor,
    weight: float = 0.5,
    gate: float | None = 0.0,
    gate_tolerance: float = GATE_TOLERANCE,
) -> Tensor:
    """Calibrated values of ``a / s_a + weight * o / s_o`` (``s``: 1.4826 MAD), gated as AUM's.

    Example:
        >>> combine_margins(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 1.0]), gate=None).shape
        torch.Size([3])
    """
    check_nonnegative("weight", weight, "0: AUM alone")
    a = torch.as_tensor(in_training, dtype=torch.float64)
    o = torch.as_tensor(held_out, dtype=torch.float64)
    if a.shape != o.shape:
        raise ValueError(
            f"one margin per row in both: in_training {tuple(a.shape)}, held_out {tuple(o.shape)}."
        )
    return calibrate(_unit(a) + weight * _unit(o), gate=gate, gate_tolerance=gate_tolerance)


def _unit(x: Tensor) -> Tensor:
    """``x / (1.4826 MAD(x))`` (``x`` itself when the spread is 0): scaled, not centred."""
    scale = float(_center_scale(x)[1])
    return x / scale if scale > 0 else x


def check_second_opinion(method: str, folds: object, forest: object, calibration: str) -> None:
    """Refuse a second opinion (``folds=``, ``forest=True``) that cannot apply, naming the fix.

    Example:
        >>> check_second_opinion("aum", None, True, "robust")  # fine: returns None
        >>> check_second_opinion("nddv", None, True, "robust")
        Traceback (most recent call last):
        ...
        ValueError: `forest=True` adds a second opinion to AUM's margins; it is not available with method='nddv'. Use method='aum' or leave `forest` unset.
    """
    if not (isinstance(forest, bool) or forest == "auto"):
        raise ValueError(f"`forest` must be True, False or 'auto'; got {forest!r}.")
    for name, given in ((f"folds={folds}", folds is not None), (f"forest={forest!r}", forest is not False)):
        if given and method != "aum":
            raise ValueError(
                f"`{name}` adds a second opinion to AUM's margins; it is not available with "
                f"method={method!r}. Use method='aum' or leave `{name.split('=')[0]}` unset."
            )
        if given and calibration != "robust":
            raise ValueError(f"`{name}` combines calibrated margins: leave AUM's `calibration` at 'robust'.")
    if forest is not False and folds is not None:
        raise ValueError(
            f"`forest={forest!r}` and `folds=` are two second opinions for AUM; pick one (forest=True costs "
            "less and measured better: benchmarks/README.md 2f)."
        )


def aum_margins_in_row_order(values: DataValues, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, margins)``: the permutation that sorts ``values`` by row and AUM's margins in row order.

    Raises a ``ValueError`` naming the fix when ``values`` do not come from AUM or do not cover
    ``num_rows`` rows.
    """
    if "aum_margin" not in values.columns:
        raise ValueError(
            "`values` must come from AUM (a DataValuation(AUM(...)) fit or valuate(method='aum')): "
            "no `aum_margin` column."
        )
    order = np.argsort(values.index)
    if len(order) != num_rows:
        raise ValueError(
            f"{len(order)} values but {num_rows} rows of features; give the features and labels of the rows AUM valued."
        )
    return order, np.asarray(values.columns["aum_margin"])[order]


def with_second_opinion(
    values: DataValues,
    order: np.ndarray,
    in_training: np.ndarray,
    held_out: np.ndarray,
    weight: float,
    gate: float | None,
    gate_tolerance: float,
    columns: dict[str, np.ndarray],
    metadata: dict[str, Any],
) -> DataValues:
    """AUM's ``values`` replaced by :func:`combine_margins`, one per row in row order.

    Keeps AUM's per-row columns (sorted by row), adds ``aum_value`` (AUM alone) and ``columns``
    (the second opinion's), and merges ``metadata`` into AUM's.
    """
    combined = combine_margins(
        torch.as_tensor(in_training), torch.as_tensor(held_out), weight, gate, gate_tolerance
    )
    out = {k: np.asarray(v)[order] for k, v in values.columns.items() if np.ndim(v) == 1}
    out.update(aum_value=np.asarray(values.values)[order], **columns)
    return DataValues(
        combined.numpy(), method=values.method, columns=out, metadata=dict(values.metadata, **metadata)
    )


def label_margins(proba: np.ndarray, classes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``p_y - max_{k != y} p_k`` per row from ``(N, K)`` probabilities whose columns follow ``classes``.

    Example:
        >>> label_margins(np.array([[0.7, 0.3], [0.2, 0.8]]), np.array(["a", "b"]), np.array(["a", "a"])).round(2).tolist()
        [0.4, -0.6]
    """
    p = np.array(proba, dtype=np.float64)
    rows = np.arange(len(p))
    own = np.searchsorted(classes, np.asarray(labels))
    label = p[rows, own].copy()
    p[rows, own] = -np.inf
    return label - p.max(1) if p.shape[1] > 1 else label
