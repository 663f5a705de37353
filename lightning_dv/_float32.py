"""`Float32Module`: valuation state that keeps its precision whatever the trainer's precision."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class Float32Module(nn.Module):
    """A module whose floating-point tensors keep float32 (or float64) under ``.to(dtype)`` / ``.half()``.

    ``precision="bf16-true"`` converts the whole LightningModule to bf16; per-sample weights
    and the statistics of the valuation methods lose too much precision there, so device moves
    are honoured but dtype changes are not (float64 accumulators stay float64).
    """

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True):  # type: ignore[override]
        def keep_fp32(t: Tensor) -> Tensor:
            out = fn(t)
            if t.is_floating_point() and out.is_floating_point() and out.dtype != torch.float32:
                out = out.to(torch.float64 if t.dtype == torch.float64 else torch.float32)
            return out

        return super()._apply(keep_fp32, recurse)
