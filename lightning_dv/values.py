"""`DataValues`: the result every valuation method returns, indexed by dataset row."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_dv.formats import DataValuesFileError, read_values, write_values
from lightning_dv.io import atomic_write, check_export_path

__all__ = ["DataValues", "DataValuesFileError"]

#: How many of the lowest rows ``repr(values)`` shows.
REPR_ROWS = 5


def _to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


@dataclass
class DataValues:
    """Per-row data values: HIGHER = MORE VALUABLE.

    Args:
        values: One float per row.
        method: Name of the method that produced the values.
        index: Dataset row index of each value (defaults to ``0..N-1``).
        ids: Optional user ids, one per row (strings or integers).
        columns: Extra per-row columns, e.g. the raw score of a method whose raw score means
            "suspicious when high" (``cg_score``), or a cluster id.
        trajectory: Optional ``(epochs, N)`` array of the values recorded at the end of every epoch.
        metadata: Free-form facts about the run (epochs, settings); JSON-able values survive
            :meth:`save` / :meth:`load`.
        flagged: One boolean per row: the method's own decision of which rows are LOW value.
            Default: the low cluster of the exact 1-D 2-means split of the values
            (:func:`~lightning_dv.metrics.two_means_split`, the OpenDataVal protocol's rule);
            non-finite values are always flagged. ``metadata["flagged_by"]`` says which rule.
        labels: The rows' labels where known (any type, e.g. strings).

    Example:
        >>> dv = DataValues([0.3, -1.0, 2.0, 2.1], method="demo", labels=["a", "b", "a", "b"])
        >>> dv.lowest(1).index.tolist()
        [1]
        >>> dv.highest(2).values.tolist()
        [2.1, 2.0]
        >>> dv.flagged.tolist()
        [True, True, False, False]
        >>> dv
        DataValues(method='demo', rows=4, flagged=2)
           row  label    value  flagged
             1  b      -1.0000  yes
             0  a       0.3000  yes
             2  a       2.0000  no
             3  b       2.1000  no
    """

    values: np.ndarray
    method: str = "unknown"
    index: np.ndarray | None = None
    ids: np.ndarray | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    trajectory: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    flagged: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.values = _to_numpy(self.values, np.float64).reshape(-1)
        n = self.values.shape[0]
        # the 2-means flags first, while only the values exist (its sorted copy is the largest transient)
        flags = _two_means_flags(self.values) if self.flagged is None else None
        if self._index is not None:  # None: the rows 0..N-1, made only when read (8 bytes per row)
            self._index = _to_numpy(self._index, np.int64)
            if self._index.shape != (n,):
                raise ValueError(f"`index` has shape {self._index.shape}; expected ({n},) to match `values`.")
        if self.ids is not None:
            self.ids = np.asarray(self.ids)
            if self.ids.shape != (n,):
                raise ValueError(f"`ids` has {self.ids.shape[0]} entries; expected {n}, one per row.")
        cols = {}
        for name, col in self.columns.items():
            arr = _to_numpy(col)
            if arr.shape[:1] != (n,):
                raise ValueError(f"column {name!r} has {arr.shape[0]} entries; expected {n}, one per row.")
            cols[name] = arr
        self.columns = cols
        if self.trajectory is not None:
            traj = _to_numpy(self.trajectory, np.float64)
            if traj.ndim != 2 or traj.shape[1] != n:
                raise ValueError(f"`trajectory` has shape {traj.shape}; expected (epochs, {n}).")
            self.trajectory = traj
        self.metadata = dict(self.metadata)
        if self.labels is not None:
            self.labels = _to_numpy(self.labels)
            if self.labels.shape[:1] != (n,):
                raise ValueError(f"`labels` has {self.labels.shape[0]} entries; expected {n}, one per row.")
        if self.flagged is None:
            self.flagged = flags
            self.metadata.setdefault("flagged_by", "two_means")
        else:
            self.flagged = _to_numpy(self.flagged).astype(bool).reshape(-1)
            if self.flagged.shape != (n,):
                raise ValueError(f"`flagged` has {self.flagged.shape[0]} entries; expected {n}, one per row.")

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __repr__(self) -> str:
        ep = "" if self.trajectory is None else f", epochs={self.trajectory.shape[0]}"
        head = f"DataValues(method={self.method!r}, rows={len(self)}, flagged={int(self.flagged.sum())}{ep})"
        if not len(self):
            return head
        return head + "\n" + self.format_table(self.lowest(REPR_ROWS))

    @staticmethod
    def format_table(rows: DataValues) -> str:
        """Plain-text table of ``rows`` (row, id, label, predicted label, value, flagged)."""
        cols: list[tuple[str, list[str]]] = [("row", [str(r) for r in rows.index])]
        if rows.ids is not None:
            cols.append(("id", [str(i) for i in rows.ids]))
        if rows.labels is not None:
            cols.append(("label", [str(v) for v in rows.labels]))
        if "predicted_label" in rows.columns:
            cols.append(("predicted", [str(v) for v in rows.columns["predicted_label"]]))
        cols.append(("value", [f"{v:.4f}" for v in rows.values]))
        cols.append(("flagged", ["yes" if f else "no" for f in rows.flagged]))
        widths = [max(len(name), *(len(c) for c in cells)) for name, cells in cols]
        right = {"row", "value"}
        lines = []
        for i in range(-1, len(rows)):
            parts = []
            for (name, cells), w in zip(cols, widths):
                text = name if i < 0 else cells[i]
                parts.append(text.rjust(w) if name in right else text.ljust(w))
            lines.append("   " + "  ".join(parts).rstrip())
        return "\n".join(lines)

    # -- selection --------------------------------------------------------------------------
    def _take(self, order: np.ndarray) -> DataValues:
        return DataValues(
            values=self.values[order],
            method=self.method,
            index=order.astype(np.int64) if self._index is None else self._index[order],
            ids=None if self.ids is None else self.ids[order],
            columns={k: v[order] for k, v in self.columns.items()},
            trajectory=None if self.trajectory is None else self.trajectory[:, order],
            metadata=dict(self.metadata),
            flagged=self.flagged[order],
            labels=None if self.labels is None else self.labels[order],
        )

    def lowest(self, k: int = 10) -> DataValues:
        """The ``k`` least valuable rows (most suspicious first; ties in row order)."""
        return self._take(_first_k(self.values, max(int(k), 0)))

    def highest(self, k: int = 10) -> DataValues:
        """The ``k`` most valuable rows (most valuable first; ties in row order)."""
        return self._take(_first_k(self.values, max(int(k), 0), negate=True))

    def sorted_by_row(self) -> DataValues:
        """The same values ordered by dataset row index."""
        if self._index is None:
            return self._take(np.arange(len(self)))
        return self._take(np.argsort(self._index, kind="stable"))

    # -- conversion -------------------------------------------------------------------------
    def to_dict(self, trajectory: bool = True) -> dict[str, np.ndarray]:
        """Columns as a dict of arrays: ``row``, ``id`` (if any), ``value``, ``flagged``, ``label`` (if
        known), extras, ``value_epoch_<e>``.

        The trajectory is in WIDE format: one column ``value_epoch_<e>`` per recorded epoch ``e``
        (1-based, the value at the end of that epoch).
        """
        out: dict[str, np.ndarray] = {"row": _row_index(self)}
        if self.ids is not None:
            out["id"] = self.ids
        out["value"] = self.values
        out["flagged"] = self.flagged
        if self.labels is not None:
            out["label"] = self.labels
        for k, v in self.columns.items():
            if v.ndim == 1:
                out[k] = v
        if trajectory and self.trajectory is not None:
            for e in range(self.trajectory.shape[0]):
                out[f"value_epoch_{e + 1}"] = self.trajectory[e]
        return out

    def to_pandas(self, trajectory: bool = True):
        """A :class:`pandas.DataFrame` with one row per dataset row (requires ``pandas``)."""
        pd = _import_pandas()
        return pd.DataFrame(self.to_dict(trajectory=trajectory))

    def trajectory_long(self):
        """The trajectory in LONG format: a DataFrame with columns ``row``, (``id``), ``epoch``, ``value``."""
        if self.trajectory is None:
            raise ValueError(
                "these values carry no trajectory; it is recorded by the DataValuation callback."
            )
        pd = _import_pandas()
        e, n = self.trajectory.shape
        data: dict[str, Any] = {"row": np.tile(_row_index(self), e)}
        if self.ids is not None:
            data["id"] = np.tile(self.ids, e)
        data["epoch"] = np.repeat(np.arange(1, e + 1), n)
        data["value"] = self.trajectory.reshape(-1)
        return pd.DataFrame(data)

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, trajectory: bool = True) -> Path:
        """Write the values atomically; the format follows the extension.

        ``.csv`` and ``.parquet`` hold one row per dataset row (wide trajectory columns);
        ``.npz`` holds the arrays. All three keep the method, the metadata and the row count
        (see :mod:`lightning_dv.formats`; CSV starts with a ``# lightning-dv`` line: read it with
        :meth:`load` or ``pd.read_csv(path, skiprows=1)``).

        Args:
            path: Destination ending in .csv, .parquet or .npz.
            trajectory: Also write the per-epoch values when present.

        Returns:
            The written path.
        """
        p = check_export_path(path, argument="path")
        return atomic_write(p, lambda tmp: write_values(self, tmp, trajectory=trajectory))

    @classmethod
    def load(cls, path: str | os.PathLike) -> DataValues:
        """Read values written by :meth:`save` (any of the three formats), validating the file.

        Raises:
            DataValuesFileError: A truncated file, a missing column, a row listed twice or a value
                that is not a number (the message names which).
        """
        return read_values(path)


#: Rows per chunk of :func:`_first_k`.
_CHUNK = 1 << 16


def _first_k(values: np.ndarray, k: int, negate: bool = False) -> np.ndarray:
    """``np.argsort(values, kind="stable")[:k]`` (of ``-values`` with ``negate``) in ``O(chunk + k)`` memory.

    Each chunk's ``k`` first positions join the ``k`` best so far, which are re-ranked by
    ``(value, position)``: the stable sort's order, ties by position, NaN last.

    Example:
        >>> _first_k(np.array([3.0, 1.0, 2.0, 1.0]), 3).tolist()
        [1, 3, 2]
    """
    n = values.shape[0]
    if k >= n:
        return np.argsort(-values if negate else values, kind="stable")
    best = np.zeros(0, dtype=np.intp)
    for lo in range(0, n, _CHUNK):
        chunk = values[lo : lo + _CHUNK]
        chunk = -chunk if negate else chunk
        cand = np.concatenate([best, lo + np.argsort(chunk, kind="stable")[:k]])
        keys = -values[cand] if negate else values[cand]
        best = cand[np.lexsort((cand, keys))[:k]]
    return best


def _import_pandas():
    try:
        import pandas as pd
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("this needs pandas: `pip install lightning-dv[pandas]`.") from err
    return pd


def _two_means_flags(values: np.ndarray) -> np.ndarray:
    """The low 2-means cluster of the finite values; non-finite values are flagged too."""
    from lightning_dv.metrics import two_means_split

    finite = np.isfinite(values)
    if finite.all():  # the usual case: no masked copy of the values
        return two_means_split(values).numpy() if len(values) >= 2 else np.zeros(len(values), dtype=bool)
    flags = ~finite
    if finite.sum() >= 2:
        flags[finite] = two_means_split(values[finite]).numpy()
    return flags


def _row_index(self: DataValues) -> np.ndarray:
    """The row index without keeping it: a fresh ``0..N-1`` while none was given or read."""
    return np.arange(len(self.values), dtype=np.int64) if self._index is None else self._index


def _get_index(self: DataValues) -> np.ndarray:
    """Dataset row index of each value (``0..N-1`` unless given); made and kept at the first read."""
    if self._index is None:
        self._index = _row_index(self)
    return self._index


def _set_index(self: DataValues, index: Any) -> None:
    self._index = index


DataValues.index = property(_get_index, _set_index)  # a dataclass field read through a property
