"""The learnable per-sample weight vector, kept in float32 whatever the trainer's precision."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_dv._validation import check_choice

CONSTRAINTS = ("none", "softplus", "clamp")


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


class SampleWeights(Float32Module):
    """One learnable weight per training row.

    Args:
        num_samples: Number of rows in the training set.
        init: Initial weight of every row.
        constraint: ``"none"`` (the paper's unconstrained weights; they may go negative),
            ``"softplus"`` (weight = softplus(raw), always > 0) or ``"clamp"`` (projected back
            to ``>= min_value`` after every optimizer step).
        min_value: Lower bound used by ``"clamp"``.

    Example:
        >>> w = SampleWeights(4, constraint="softplus")
        >>> w(torch.tensor([0, 3])).tolist()
        [1.0, 1.0]
    """

    def __init__(self, num_samples: int, init: float = 1.0, constraint: str = "none", min_value: float = 0.0):
        super().__init__()
        check_choice("constraint", constraint, CONSTRAINTS)
        if num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1; got {num_samples}.")
        if constraint == "softplus" and init <= 0:
            raise ValueError(f"`init={init}` must be > 0 with constraint='softplus'.")
        self.constraint = constraint
        self.min_value = float(min_value)
        raw0 = math.log(math.expm1(init)) if constraint == "softplus" else init
        self.raw = nn.Parameter(torch.full((num_samples,), float(raw0), dtype=torch.float32))

    @property
    def num_samples(self) -> int:
        return int(self.raw.shape[0])

    def transform(self, raw: Tensor) -> Tensor:
        if self.constraint == "softplus":
            return nn.functional.softplus(raw)
        return raw

    def forward(self, idx: Tensor) -> Tensor:
        """Weights of the rows ``idx`` (differentiable)."""
        return self.transform(self.raw[idx])

    def all(self) -> Tensor:
        """All weights, detached."""
        return self.transform(self.raw.detach())

    @torch.no_grad()
    def project_(self) -> None:
        """Apply the ``"clamp"`` projection in place (no-op for the other constraints)."""
        if self.constraint == "clamp":
            self.raw.clamp_(min=self.min_value)
