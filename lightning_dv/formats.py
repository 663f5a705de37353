"""Reading and writing :class:`~lightning_dv.DataValues` files (.csv, .parquet, .npz).

Every format carries the method name, the metadata and the number of rows the file promises, so a
round trip keeps them and :func:`read_values` can tell a complete file from a damaged one:

- ``.csv``: the first line is one quoted cell ``# lightning-dv {json}`` (a spreadsheet shows it in
  cell A1; pandas reads the table with ``pd.read_csv(path, skiprows=1)``), then a header and one
  line per row. Text cells starting with ``=``, ``+``, ``-``, ``@``, a tab, a carriage return or
  ``'`` are written with a leading ``'`` so that spreadsheets do not run them as formulas (CSV
  injection); :func:`read_values` removes it again.
- ``.parquet``: the same JSON in the schema's key-value metadata (key ``lightning_dv``).
- ``.npz``: the arrays, plus the JSON as a 0-d string array ``meta``.

Why the checks: a CSV cut off by a full disk or a copy that stopped early parses as a shorter,
valid-looking table; the promised row count and the final line break catch both.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lightning_dv.values import DataValues

HEADER = "# lightning-dv "
META_KEY = b"lightning_dv"
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "'")


class DataValuesFileError(ValueError):
    """A values file is damaged or is not a values file; the message names the problem."""


def jsonable(obj: Any) -> Any:
    """Metadata as plain JSON types (numpy scalars and arrays become numbers and lists).

    Example:
        >>> jsonable({"a": np.float32(1.5), "b": (1, np.int64(2)), "c": np.arange(2)})
        {'a': 1.5, 'b': [1, 2], 'c': [0, 1]}
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "tolist") and hasattr(obj, "detach"):  # a torch tensor
        return jsonable(obj.detach().cpu().tolist())
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def escape_cell(text: str) -> str:
    """Prefix ``'`` to text a spreadsheet would run as a formula (reversible by :func:`unescape_cell`).

    Example:
        >>> escape_cell("=SUM(A1)"), escape_cell("plain"), unescape_cell(escape_cell("'x"))
        ("'=SUM(A1)", 'plain', "'x")
    """
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def unescape_cell(text: str) -> str:
    """Undo :func:`escape_cell`."""
    return text[1:] if text.startswith("'") else text


def _is_text(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "OUS"


def _header(dv: DataValues, text_columns: list[str]) -> dict[str, Any]:
    return {
        "format": 1,
        "method": dv.method,
        "rows": len(dv),
        "text_columns": text_columns,
        "metadata": jsonable(dv.metadata),
    }


def write_values(dv: DataValues, path: Path, trajectory: bool = True) -> None:
    """Write ``dv`` to ``path`` (a temporary file; the caller moves it into place atomically)."""
    data = dv.to_dict(trajectory=trajectory)
    text_columns = [k for k, v in data.items() if _is_text(np.asarray(v))]
    header = _header(dv, text_columns)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = {"row": data["row"], "value": dv.values, "flagged": dv.flagged}
        if dv.ids is not None:
            arrays["id"] = np.asarray(dv.ids).astype(str) if _is_text(np.asarray(dv.ids)) else dv.ids
        if dv.labels is not None:
            arrays["label"] = dv.labels.astype(str) if _is_text(dv.labels) else dv.labels
        for k, v in dv.columns.items():
            arrays[f"col_{k}"] = v.astype(str) if _is_text(v) else v
        if trajectory and dv.trajectory is not None:
            arrays["trajectory"] = dv.trajectory
        arrays["method"] = np.array(dv.method)
        arrays["meta"] = np.array(json.dumps(header))
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
    elif suffix == ".csv":
        names = list(data)
        cols = [np.asarray(data[k]) for k in names]
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow([HEADER + json.dumps(header)])
            w.writerow(names)
            for i in range(len(dv)):
                w.writerow([escape_cell(str(c[i])) if _is_text(c) else c[i].item() for c in cols])
    else:
        pa, pq = _import_pyarrow()
        table = pa.Table.from_pandas(dv.to_pandas(trajectory=trajectory), preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[META_KEY] = json.dumps(header).encode()
        pq.write_table(table.replace_schema_metadata(meta), path)


def read_values(path: str | Path) -> DataValues:
    """Read and validate a values file written by :meth:`DataValues.save`.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataValuesFileError: If the file is truncated, misses a column, holds a row twice or a
            value that is not a number; the message names the problem and the file.
    """
    from lightning_dv.values import DataValues

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no values file at {str(p)!r}.")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(str(arrays.pop("meta"))) if "meta" in arrays else {}
        method = str(arrays.pop("method")) if "method" in arrays else header.get("method", "unknown")
        table = {k: v for k, v in arrays.items() if k != "trajectory"}
        traj = arrays.get("trajectory")
        columns = {k[4:]: v for k, v in table.items() if k.startswith("col_")}
    elif suffix in (".csv", ".parquet"):
        df, header = _read_csv(p) if suffix == ".csv" else _read_parquet(p)
        epoch_cols = sorted(
            (c for c in df.columns if str(c).startswith("value_epoch_")), key=lambda c: int(c.split("_")[-1])
        )
        traj = df[epoch_cols].to_numpy(dtype=np.float64).T if epoch_cols else None
        table = {c: df[c].to_numpy() for c in df.columns if c not in epoch_cols}
        method = header.get("method", "unknown")
        known = {"row", "id", "value", "flagged", "label"}
        columns = {c: v for c, v in table.items() if c not in known}
    else:
        raise DataValuesFileError(
            f"{str(p)!r}: unsupported extension {p.suffix!r}; use .csv, .parquet or .npz."
        )
    for name in ("row", "value"):
        if name not in table:
            raise DataValuesFileError(
                f"{str(p)!r} has no {name!r} column (columns: {', '.join(map(str, table))}); "
                "it was not written by DataValues.save or was edited."
            )
    values = _numeric(table["value"], "value", p)
    rows = _numeric(table["row"], "row", p)
    if not np.all(np.isfinite(rows)) or not np.array_equal(rows, np.round(rows)):
        raise DataValuesFileError(f"{str(p)!r}: the 'row' column holds a value that is not a whole number.")
    rows = rows.astype(np.int64)
    uniq, counts = np.unique(rows, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise DataValuesFileError(
            f"{str(p)!r}: row {int(dup[0])} appears {int(counts[counts > 1][0])} times "
            f"({dup.size} duplicated row(s)); every row must appear once."
        )
    promised = header.get("rows")
    if promised is not None and promised != len(rows):
        raise DataValuesFileError(
            f"{str(p)!r} holds {len(rows)} rows but was written with {promised}: the file is truncated "
            "or was edited. Export the values again."
        )
    flagged = table.get("flagged")
    if flagged is not None:
        flagged = _booleans(flagged, p)
    return DataValues(
        values=values,
        method=method,
        index=rows,
        ids=table.get("id"),
        columns=columns,
        trajectory=traj,
        metadata=header.get("metadata", {}),
        flagged=flagged,
        labels=table.get("label"),
    )


def _numeric(col: np.ndarray, name: str, p: Path) -> np.ndarray:
    try:
        return np.asarray(col, dtype=np.float64)
    except (TypeError, ValueError):
        for i, v in enumerate(col):
            try:
                float(v)
            except (TypeError, ValueError):
                raise DataValuesFileError(
                    f"{str(p)!r}: column {name!r} holds {v!r} at data line {i + 1}, which is not a number."
                ) from None
        raise


def _booleans(col: np.ndarray, p: Path) -> np.ndarray:
    if col.dtype == bool:
        return col
    mapping = {"true": True, "false": False, "1": True, "0": False}
    out = [mapping.get(str(v).strip().lower()) for v in col]
    if any(v is None for v in out):
        bad = next(v for v, o in zip(col, out) if o is None)
        raise DataValuesFileError(f"{str(p)!r}: column 'flagged' holds {bad!r}, not True or False.")
    return np.asarray(out, dtype=bool)


def _read_csv(p: Path):
    import pandas as pd

    raw = p.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raise DataValuesFileError(
            f"{str(p)!r} does not end with a line break: the file was cut off (its last row is incomplete). "
            "Export the values again."
        )
    text = raw.decode("utf-8")
    first = text.split("\n", 1)[0]
    header: dict[str, Any] = {}
    cells = next(csv.reader([first]), [""])
    if cells and cells[0].startswith(HEADER):
        try:
            header = json.loads(cells[0][len(HEADER) :])
        except json.JSONDecodeError as err:
            raise DataValuesFileError(
                f"{str(p)!r}: the '# lightning-dv' header line is damaged ({err})."
            ) from err
        text = text.split("\n", 1)[1] if "\n" in text else ""
    text_columns = header.get("text_columns", [])
    try:
        df = pd.read_csv(io.StringIO(text), dtype={c: str for c in text_columns}, keep_default_na=False)
    except pd.errors.ParserError as err:
        raise DataValuesFileError(f"{str(p)!r} is not a valid CSV table: {err}") from err
    for c in text_columns:
        if c in df.columns:
            df[c] = df[c].map(unescape_cell)
    return df, header


def _read_parquet(p: Path):
    pa, pq = _import_pyarrow()
    table = pq.read_table(p)
    meta = (table.schema.metadata or {}).get(META_KEY)
    return table.to_pandas(), (json.loads(meta) if meta else {})


def _import_pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError(
            "reading or writing .parquet needs pyarrow: `pip install lightning-dv[parquet]`, "
            "or use .csv / .npz instead."
        ) from err
    return pa, pq
