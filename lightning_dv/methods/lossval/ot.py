"""Debiased Sinkhorn divergence against a FIXED target cloud, with the target's self-term cached.

    S(a, b) = OT(a, b) - OT(a, a) / 2 - OT(b, b) / 2

``OT(b, b)`` depends on the validation cloud alone, so with a fixed ``diameter`` (hence a fixed
epsilon schedule) it is a constant of the fit: computing it once is exact and saves the J x J
problem on every step. The two remaining terms are geomloss's un-debiased ``SamplesLoss``.
"""

from __future__ import annotations

import torch
from geomloss import SamplesLoss
from torch import Tensor


def bounding_diameter(*clouds: Tensor) -> float:
    """Diagonal of the bounding box of the given point clouds (what geomloss uses by default)."""
    pts = torch.cat([c.detach().reshape(c.shape[0], -1).float() for c in clouds])
    return float((pts.max(0).values - pts.min(0).values).norm())


def fixed_target(target: Tensor, target_weights: Tensor) -> tuple[Tensor, Tensor]:
    """The target cloud ``(y, b)`` of an OT term as detached contiguous fp32, its shape checked.

    Example:
        >>> y, b = fixed_target(torch.zeros(3, 2, dtype=torch.float64), torch.ones(3))
        >>> y.dtype, b.shape
        (torch.float32, torch.Size([3]))
    """
    if target.ndim != 2 or target.shape[0] == 0:
        raise ValueError(f"the target cloud must have shape (J, d) with J >= 1; got {tuple(target.shape)}.")
    return target.detach().float().contiguous(), target_weights.detach().float().contiguous()


class CachedSinkhornDivergence:
    """Debiased Sinkhorn divergence ``S((a, x), (b, y))`` for a fixed weighted target ``(b, y)``.

    Args:
        target: Target points ``y``, shape ``(J, d)``.
        target_weights: Target masses ``b``, shape ``(J,)`` (raw, not normalised).
        diameter: Fixed diameter of the problem (fixes geomloss's epsilon schedule).
        p: Exponent of the ground cost ``|x - y|^p / p``.
        blur: Target blur (epsilon = blur^p).
        scaling: Epsilon-scaling ratio.
        backend: geomloss backend: ``"tensorized"`` (CPU, small J), ``"online"`` (KeOps) or ``"auto"``.

    Example:
        >>> y = torch.randn(50, 3)
        >>> div = CachedSinkhornDivergence(y, torch.ones(50), diameter=10.0)
        >>> d = div(torch.ones(8, requires_grad=True), torch.randn(8, 3))
        >>> d.shape
        torch.Size([])
    """

    def __init__(
        self,
        target: Tensor,
        target_weights: Tensor,
        diameter: float,
        p: int = 2,
        blur: float = 0.05,
        scaling: float = 0.5,
        backend: str = "tensorized",
    ) -> None:
        self.y, self.b = fixed_target(target, target_weights)
        self.loss = SamplesLoss(
            "sinkhorn",
            p=p,
            blur=blur,
            scaling=scaling,
            debias=False,
            diameter=float(diameter),
            backend=backend,
        )
        with _keep_grad_mode(), torch.no_grad():
            self.self_term = self.loss(self.b, self.y, self.b, self.y).detach()

    def to(self, device: torch.device) -> CachedSinkhornDivergence:
        self.y, self.b, self.self_term = self.y.to(device), self.b.to(device), self.self_term.to(device)
        return self

    def __call__(self, a: Tensor, x: Tensor) -> Tensor:
        """``S((a, x), (b, y))``; differentiable in ``a`` (and ``x`` if it requires grad)."""
        with _keep_grad_mode():
            a32, x32 = a.float(), x.float()
            cross = self.loss(a32, x32, self.b, self.y)
            own = self.loss(a32, x32, a32, x32)
        return cross - 0.5 * own - 0.5 * self.self_term


class _keep_grad_mode:
    """geomloss can leave autograd's global mode changed after a call: restore it."""

    def __enter__(self) -> None:
        self.mode = torch.is_grad_enabled()

    def __exit__(self, *exc) -> None:
        torch.set_grad_enabled(self.mode)
