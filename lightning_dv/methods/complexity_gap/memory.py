"""Memory a complexity-gap problem needs, the memory available, and the error that names a fix."""

from __future__ import annotations

import math
import os

import torch

from lightning_dv.methods.complexity_gap.problems import CGProblem


def problem_memory_bytes(m: int, num_scored: int, d: int, block_size: int) -> int:
    """Bytes one problem of ``m`` rows needs: the Gram matrix, its working blocks and the features.

    Example:
        >>> problem_memory_bytes(10_000, 5_000, 784, 1024) / 2**30 > 0.745   # the m x m matrix dominates
        True
    """
    b = min(block_size, m)
    return 8 * (m * m + 2 * b * m + m * d + 2 * b * num_scored + 4 * m)


def available_memory(device: torch.device) -> int:
    """Free memory of ``device`` in bytes (CPU: ``MemAvailable``; CUDA: free plus cached)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 2**62


def memory_message(
    p: CGProblem,
    need: int,
    limit: int,
    d: int,
    block_size: int,
    mode: str,
    ratio: float,
    user_limit: int | None,
) -> str:
    m = len(p.rows)
    per_scored = m / p.num_scored  # rows per scored row: 1 + ratio (ovr), 1 (binary)
    fit = p.num_scored
    while fit > 2 and problem_memory_bytes(int(math.ceil(fit * per_scored)), fit, d, block_size) > limit:
        fit = int(fit * 0.9)
    where = "max_memory_bytes" if user_limit is not None else "free memory"
    lower = " or a smaller `ratio=`" if mode == "ovr" and ratio > 0 else ""
    return (
        f"complexity_gap: the largest problem ({p.describe()}) needs about {need / 2**30:.2f} GiB "
        f"(a {m} x {m} float64 Gram matrix is {8 * m * m / 2**30:.2f} GiB) but only {limit / 2**30:.2f} GiB "
        f"is allowed ({where}). Pass subsample={max(fit, 2)} (at most that many scored rows per problem; every row "
        f"is still scored, against a smaller context){lower}, or compute on a device with more memory."
    )
