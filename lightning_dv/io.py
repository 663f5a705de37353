"""Atomic file export: a bad write never leaves a half-written or corrupted file behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

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


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` only if it succeeded.

    The temporary file lives in the destination folder so the final ``os.replace`` is atomic on
    POSIX file systems: readers see either the old file or the complete new one.

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
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{final.suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final
