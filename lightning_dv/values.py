"""`DataValues`: the result every valuation method returns, indexed by dataset row."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_dv.io import atomic_write, check_export_path


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
        metadata: Free-form facts about the run (epochs, settings).

    Example:
        >>> dv = DataValues([0.3, -1.0, 2.0], method="demo")
        >>> dv.lowest(1).index.tolist()
        [1]
        >>> dv.highest(2).values.tolist()
        [2.0, 0.3]
    """

    values: np.ndarray
    method: str = "unknown"
    index: np.ndarray | None = None
    ids: np.ndarray | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    trajectory: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = _to_numpy(self.values, np.float64).reshape(-1)
        n = self.values.shape[0]
        self.index = np.arange(n, dtype=np.int64) if self.index is None else _to_numpy(self.index, np.int64)
        if self.index.shape != (n,):
            raise ValueError(f"`index` has shape {self.index.shape}; expected ({n},) to match `values`.")
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

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __repr__(self) -> str:
        ep = "" if self.trajectory is None else f", epochs={self.trajectory.shape[0]}"
        return f"DataValues(method={self.method!r}, rows={len(self)}{ep})"

    # -- selection --------------------------------------------------------------------------
    def _take(self, order: np.ndarray) -> DataValues:
        return DataValues(
            values=self.values[order],
            method=self.method,
            index=self.index[order],
            ids=None if self.ids is None else self.ids[order],
            columns={k: v[order] for k, v in self.columns.items()},
            trajectory=None if self.trajectory is None else self.trajectory[:, order],
            metadata=dict(self.metadata),
        )

    def lowest(self, k: int = 10) -> DataValues:
        """The ``k`` least valuable rows (most suspicious first)."""
        order = np.argsort(self.values, kind="stable")[: max(int(k), 0)]
        return self._take(order)

    def highest(self, k: int = 10) -> DataValues:
        """The ``k`` most valuable rows (most valuable first)."""
        order = np.argsort(-self.values, kind="stable")[: max(int(k), 0)]
        return self._take(order)

    def sorted_by_row(self) -> DataValues:
        """The same values ordered by dataset row index."""
        return self._take(np.argsort(self.index, kind="stable"))

    # -- conversion -------------------------------------------------------------------------
    def to_dict(self, trajectory: bool = True) -> dict[str, np.ndarray]:
        """Columns as a dict of arrays: ``row``, ``id`` (if any), ``value``, extras, ``value_epoch_<e>``.

        The trajectory is in WIDE format: one column ``value_epoch_<e>`` per recorded epoch ``e``
        (1-based, the value at the end of that epoch).
        """
        out: dict[str, np.ndarray] = {"row": self.index}
        if self.ids is not None:
            out["id"] = self.ids
        out["value"] = self.values
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
        data: dict[str, Any] = {"row": np.tile(self.index, e)}
        if self.ids is not None:
            data["id"] = np.tile(self.ids, e)
        data["epoch"] = np.repeat(np.arange(1, e + 1), n)
        data["value"] = self.trajectory.reshape(-1)
        return pd.DataFrame(data)

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, trajectory: bool = True) -> Path:
        """Write the values atomically; the format follows the extension.

        ``.csv`` and ``.parquet`` hold one row per dataset row (wide trajectory columns);
        ``.npz`` holds the arrays (``row``, ``value``, ``id``, extra columns, ``trajectory``).

        Args:
            path: Destination ending in .csv, .parquet or .npz.
            trajectory: Also write the per-epoch values when present.

        Returns:
            The written path.
        """
        p = check_export_path(path, argument="path")
        suffix = p.suffix.lower()
        if suffix == ".npz":

            def write(tmp: Path) -> None:
                arrays = {"row": self.index, "value": self.values}
                if self.ids is not None:
                    arrays["id"] = self.ids
                for k, v in self.columns.items():
                    arrays[f"col_{k}"] = v
                if trajectory and self.trajectory is not None:
                    arrays["trajectory"] = self.trajectory
                arrays["method"] = np.array(self.method)
                with open(tmp, "wb") as fh:
                    np.savez(fh, **arrays)

        elif suffix == ".csv":
            data = self.to_dict(trajectory=trajectory)

            def write(tmp: Path) -> None:
                _write_csv(tmp, data)

        else:  # parquet
            df = self.to_pandas(trajectory=trajectory)

            def write(tmp: Path) -> None:
                try:
                    df.to_parquet(tmp, index=False)
                except ImportError as err:
                    raise ImportError(
                        "writing .parquet needs pyarrow: `pip install lightning-dv[parquet]`, "
                        "or save to .csv / .npz instead."
                    ) from err

        return atomic_write(p, write)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DataValues:
        """Read values written by :meth:`save` (any of the three formats)."""
        p = Path(path)
        suffix = p.suffix.lower()
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                cols = {k[4:]: z[k] for k in z.files if k.startswith("col_")}
                return cls(
                    values=z["value"],
                    index=z["row"],
                    ids=z["id"] if "id" in z.files else None,
                    columns=cols,
                    trajectory=z["trajectory"] if "trajectory" in z.files else None,
                    method=str(z["method"]) if "method" in z.files else "unknown",
                )
        pd = _import_pandas()
        df = pd.read_csv(p) if suffix == ".csv" else pd.read_parquet(p)
        epoch_cols = sorted(
            (c for c in df.columns if str(c).startswith("value_epoch_")), key=lambda c: int(c.split("_")[-1])
        )
        known = {"row", "id", "value", *epoch_cols}
        traj = df[epoch_cols].to_numpy().T if epoch_cols else None
        return cls(
            values=df["value"].to_numpy(),
            index=df["row"].to_numpy(),
            ids=df["id"].to_numpy() if "id" in df.columns else None,
            columns={c: df[c].to_numpy() for c in df.columns if c not in known},
            trajectory=traj,
        )


def _import_pandas():
    try:
        import pandas as pd
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("this needs pandas: `pip install lightning-dv[pandas]`.") from err
    return pd


def _write_csv(path: Path, data: Mapping[str, Sequence[Any]]) -> None:
    """Plain CSV writer so .csv export works without pandas."""
    import csv

    names = list(data)
    cols = [np.asarray(data[k]) for k in names]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        for i in range(len(cols[0]) if cols else 0):
            w.writerow([c[i].item() if hasattr(c[i], "item") else c[i] for c in cols])
