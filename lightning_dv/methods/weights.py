"""The learnable per-sample weight vector, kept in float32 whatever the trainer's precision."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_dv._float32 import Float32Module
from lightning_dv._validation import check_choice

CONSTRAINTS = ("none", "softplus", "clamp")
__all__ = ["CONSTRAINTS", "Float32Module", "SampleWeights"]


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
