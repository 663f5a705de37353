"""Atomic file export: a bad write never leaves a half-written or corrupted file behind."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SUPPORTED_SUFFIXES = (".csv", ".parquet", ".npz")


def check_export_suffix(path: str | os.PathLike, argument: str = "export_path") -> Path:
    """Check only that the extension names a supported format (no file-system access).

    Example:
        >>> check_export_suffix("values.npz").suffix
        '.npz'
    """
    p = Path(path)
    if p.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"`{argument}={str(path)!r}` has an unsupported extension {p.suffix!r}; "
            f"it must end in one of {', '.join(SUPPORTED_SUFFIXES)}."
        )
    return p


def check_export_path(path: str | os.PathLike, argument: str = "export_path") -> Path:
    """Validate an export path before any work is done.

    Args:
        path: Destination file; its suffix picks the format (.csv, .parquet or .npz).
        argument: Name of the user-facing argument, used in error messages.

    Returns:
        The path as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If the suffix is not a supported format.
        PermissionError: If the destination folder cannot be created or written.

    Example:
        >>> check_export_path("values.csv").suffix
        '.csv'
    """
    p = check_export_suffix(path, argument)
    if p.exists() and p.is_dir():
        raise ValueError(f"`{argument}={str(path)!r}` is a directory; give a file name such as 'values.csv'.")
    parent = p.parent if str(p.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(
            f"`{argument}={str(path)!r}`: cannot create the folder {str(parent)!r} ({err.strerror}); "
            "choose a writable location."
        ) from err
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(
            f"`{argument}={str(path)!r}`: the folder {str(parent)!r} is not writable; choose a writable location."
        )
    return p


def _file_mode(final: Path) -> int:
    """The permission bits an ordinary ``open(path, "w")`` would give: the existing file's, else the umask's."""
    try:
        return final.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.dvtmp-"


def remove_stale_temporaries(final: str | os.PathLike, max_age_s: float = 3600.0) -> list[Path]:
    """Delete temporary files that an interrupted export to ``final`` left behind (SIGKILL, power loss).

    A temporary file is named ``.<name>.dvtmp-<host>-<pid>-<random>.tmp<suffix>``. It is stale when
    the process that wrote it on this host is gone, or when it is older than ``max_age_s`` (written
    by another host). A live export's file is never touched.

    Returns:
        The removed paths.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / ".v.csv.dvtmp-nohost-1-x.tmp.csv").write_text("half")
        >>> import os; _ = os.utime(d / ".v.csv.dvtmp-nohost-1-x.tmp.csv", (0, 0))
        >>> [p.name for p in remove_stale_temporaries(d / "v.csv")]
        ['.v.csv.dvtmp-nohost-1-x.tmp.csv']
    """
    final = Path(final)
    prefix = _temp_prefix(final)
    host = socket.gethostname().replace("-", "_")
    removed = []
    try:
        candidates = [p for p in final.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for tmp in candidates:
        parts = tmp.name[len(prefix) :].split("-")
        stale = False
        if len(parts) >= 3 and parts[0] == host and parts[1].isdigit():
            stale = not _pid_alive(int(parts[1]))
        if not stale:
            try:
                stale = time.time() - tmp.stat().st_mtime > max_age_s
            except OSError:
                continue
        if stale:
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` only if it succeeded.

    The temporary file lives in the destination folder so the final ``os.replace`` is atomic on
    POSIX file systems: readers see either the old file or the complete new one. The result gets
    the permissions a plain write would give (the replaced file's, else the umask's), and
    temporaries left by an earlier export that was killed are removed first
    (:func:`remove_stale_temporaries`).

    Args:
        path: Final destination.
        write: Function that writes the complete file to the path it is given.

    Returns:
        The final path.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = atomic_write(d / "a.txt", lambda p: p.write_text("hi"))
        >>> (d / "a.txt").read_text()
        'hi'
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    host = socket.gethostname().replace("-", "_")
    fd, tmp_name = tempfile.mkstemp(
        prefix=f"{_temp_prefix(final)}{host}-{os.getpid()}-", suffix=f".tmp{final.suffix}", dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, _file_mode(final))  # mkstemp creates 0600
        write(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


#: File types :func:`load_if_path` reads.
ARRAY_SUFFIXES = (".pt", ".npz", ".csv")
#: Names of the label column / array / key in those files, first match wins.
LABEL_NAMES = ("y", "label", "labels", "target", "targets")


def load_if_path(value: Any, argument: str = "validation") -> Any:
    """Load a data set given as a file path (e.g. from a LightningCLI YAML); anything else is returned as is.

    - ``.pt``: ``torch.save`` of a tensor, a pair ``(x, y)`` or a dict with ``x`` and a label key;
    - ``.npz``: arrays ``x`` and a label array (or a single array of inputs);
    - ``.csv``: one row per sample; a column named ``y``, ``label``, ``labels``, ``target`` or
      ``targets`` is the label, every other column a feature.

    Returns the inputs as a tensor, or ``(x, y)`` when the file holds labels.

    Example:
        >>> import tempfile, pathlib, torch
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "valid.pt"
        >>> torch.save((torch.zeros(3, 2), torch.tensor([0, 1, 0])), p)
        >>> x, y = load_if_path(str(p))
        >>> tuple(x.shape), y.tolist()
        ((3, 2), [0, 1, 0])
        >>> load_if_path([1, 2])
        [1, 2]
    """
    if not isinstance(value, (str, os.PathLike)):
        return value
    import numpy as np
    import torch

    p = Path(value)
    suffix = p.suffix.lower()
    if suffix not in ARRAY_SUFFIXES:
        raise ValueError(
            f"`{argument}={str(value)!r}`: a data file must end in one of {', '.join(ARRAY_SUFFIXES)}; "
            f"got {p.suffix!r}."
        )
    if not p.is_file():
        raise FileNotFoundError(
            f"`{argument}={str(value)!r}`: no such file (relative paths start at {os.getcwd()})."
        )
    if suffix == ".pt":
        data = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(data, dict):
            data = _pair(data, p, argument)
        elif isinstance(data, list):
            data = tuple(data)
        return data
    if suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: torch.from_numpy(z[k]) for k in z.files}
        return next(iter(arrays.values())) if len(arrays) == 1 else _pair(arrays, p, argument)
    import pandas as pd

    df = pd.read_csv(p)
    label = next((c for c in LABEL_NAMES if c in df.columns), None)
    features = df.drop(columns=[label] if label else [])
    bad = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if bad:
        raise ValueError(f"`{argument}={str(value)!r}`: non-numeric feature column(s) {', '.join(bad)}.")
    x = torch.as_tensor(features.to_numpy(dtype=np.float32))
    return x if label is None else (x, torch.as_tensor(df[label].to_numpy()))


def _pair(data: dict[str, Any], p: Path, argument: str) -> tuple[Any, Any]:
    label = next((k for k in LABEL_NAMES if k in data), None)
    x_key = next((k for k in ("x", "inputs", "features") if k in data), None)
    if x_key is None or label is None:
        raise ValueError(
            f"`{argument}={str(p)!r}` holds the keys {', '.join(map(str, data))}; expected 'x' and one of "
            f"{', '.join(LABEL_NAMES)}."
        )
    return data[x_key], data[label]
