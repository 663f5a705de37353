"""Our own Sinkhorn solver for LossVal's divergence against a FIXED validation cloud.

LossVal needs, per step, the debiased Sinkhorn divergence (Feydy et al., "Interpolating between
Optimal Transport and MMD using Sinkhorn Divergences", AISTATS 2019; geomloss's ``SamplesLoss``)

    S(a, b) = OT(a, b) - OT(a, a) / 2 - OT(b, b) / 2

of the weighted batch ``(a_i, x_i)`` against the validation cloud ``(b_j, y_j)``, and its gradient
in the masses ``a`` only (LossVal's batch features are constants). By the envelope theorem that
gradient is a difference of dual potentials, ``dS/da_i = f_ab(i) - f_aa(i)``, so the loop runs
without autograd and the result is a surrogate with the right value and gradient.

Why a solver of our own: geomloss's loop costs ~8 ms per call at B = 32, J = 100 on one CPU
thread, almost all of it per-call overhead (cost matrices, the debiasing problems, autograd
through the last extrapolation), and it cannot start from the previous step's potentials.

Raw masses. With ``m_a = sum a`` and ``m_b = sum b`` unequal, the balanced Sinkhorn iteration has
no fixed point: geomloss's potentials drift by a constant every iteration, so its value depends on
the epsilon schedule. The iteration splits exactly into the one on the normalised measures
``alpha = a / m_a``, ``beta = b / m_b`` plus scalar offsets. With
``S^eps_beta(g)_i = -eps log sum_j beta_j exp((g_j - C_ij) / eps)``, geomloss's symmetric update
``f <- (f + S_b(g)) / 2`` is ``f_hat <- (f_hat + S_beta(g_hat)) / 2`` and, for the offsets
``f = f_hat + s``, ``g = g_hat + t``:

    s <- (s - t - eps log m_b) / 2,     t <- (t - s - eps log m_a) / 2

from ``s = -eps_0 log m_b``, ``t = -eps_0 log m_a``, and ``s, t <- -t - eps log m_b, -s - eps log m_a``
at the final extrapolation. The offsets are closed-form scalars of the schedule (computed in
float64 here), so only the normalised problem needs the point clouds. ``D`` is dominated by these
offsets (``D ~ 5e4`` at B = 32, J = 100) while the per-row part of ``dD/da`` comes from the
normalised potentials.

The normalised problems follow geomloss's epsilon-annealing schedule (``eps_k`` from
``diameter**p`` down to ``blur**p`` by factors ``scaling**p``, one symmetric step per epsilon, then
the final extrapolation), so the result is geomloss's tensorized one up to float rounding. A
warm start at the final epsilon does not reproduce it: at ``blur = 0.05`` the annealed potentials
are far from converged there (docs/lossval_speed.md).

CPU batches up to ``host.HOST_MAX_ENTRIES`` cost entries run the same loop on the host
(:mod:`~lightning_dv.methods.lossval.host`: numpy float64, kernel domain, one ``exp`` per
epsilon), 2-3x faster at LossVal's sizes where torch's per-op dispatch is the cost.

The target's self-term ``OT(b, b)`` is computed once: exactly (the annealing schedule on the J x J
problem) for ``J <= exact_self_max``, otherwise from the bounds ``0 <= OT_eps(beta, beta) <=
eps H(beta)`` (``H`` the entropy of ``beta``, attained by the identity plan) as the identity
plan's value ``eps H(beta)``: the error is at most ``m_b eps log J / 2`` in ``D`` (0.02 for
uniform masses at J = 10,000, 0 for raw masses of points farther apart than ``blur``), a constant
of the fit either way.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lightning_dv.methods.lossval import host
from lightning_dv.methods.lossval.host import kernel_potentials, normalised_masses
from lightning_dv.methods.lossval.ot import fixed_target

#: geomloss's log-mass for points of zero or negative weight.
ZERO_MASS_LOG = -100000.0


def epsilon_schedule(p: int, diameter: float, blur: float, scaling: float) -> list[float]:
    """geomloss's epsilon-annealing schedule: ``diameter**p``, then every ``scaling**p`` step down to
    ``blur**p`` (``diameter**p`` appears twice and ``blur**p`` closes the list, as in geomloss).

    Example:
        >>> [round(e, 4) for e in epsilon_schedule(2, 1.0, 0.25, 0.5)]
        [1.0, 1.0, 0.25, 0.0625]
    """
    start, stop, step = p * math.log(diameter), p * math.log(blur), p * math.log(scaling)
    n = max(0, math.ceil((stop - start) / step))
    return [diameter**p] + [math.exp(start + k * step) for k in range(n)] + [blur**p]


def check_schedule(
    diameter: float | None = None,
    blur: float = 0.05,
    scaling: float = 0.5,
    solve_scaling: float | None = None,
    solve_name: str = "solve_scaling",
) -> None:
    """Validate the Sinkhorn schedule's arguments (``solve_name``: the caller's name for
    ``solve_scaling`` in the messages).

    Example:
        >>> check_schedule(blur=0.05, scaling=1.5)
        Traceback (most recent call last):
        ...
        ValueError: `scaling` must be in (0, 1) (each epsilon step multiplies epsilon by scaling**p); got 1.5.
    """
    if diameter is not None and not diameter > 0:
        raise ValueError(f"`diameter` must be > 0; got {diameter}.")
    if not blur > 0:
        raise ValueError(f"`blur` must be > 0 (the final epsilon is blur**p); got {blur}.")
    for name, value in (("scaling", scaling), (solve_name, solve_scaling)):
        if value is not None and not 0 < value < 1:
            raise ValueError(
                f"`{name}` must be in (0, 1) (each epsilon step multiplies epsilon by scaling**p); got {value}."
            )


def ground_cost(x: Tensor, y: Tensor, p: int) -> Tensor:
    """geomloss's cost ``|x - y|^p / p`` for ``p`` in {1, 2} (squared distances by the expansion)."""
    sq = (x * x).sum(1, keepdim=True) - 2 * x @ y.T + (y * y).sum(1)
    return sq / 2 if p == 2 else sq.clamp_min(1e-8).sqrt()


def log_weights(w: Tensor) -> Tensor:
    """``log w`` with geomloss's convention: rows of weight <= 0 carry no mass."""
    return torch.where(w > 0, w.clamp_min(torch.finfo(w.dtype).tiny).log(), ZERO_MASS_LOG)


def logsumexp_(z: Tensor, dim: int = 1) -> Tensor:
    """``log sum exp(z)`` along ``dim``, overwriting ``z``.

    The shifted exponents are clamped at ``-80`` before ``exp``: a term ``e^-80`` changes the sum
    by less than fp32 resolution, and the CPU ``exp`` takes a slow path on deeply negative inputs
    (4-30x slower at ``blur = 0.05``, where most exponents are below -1000; docs/lossval_speed.md).

    Example:
        >>> logsumexp_(torch.tensor([[0.0, 0.0], [-5000.0, 1.0]])).tolist()
        [0.6931471824645996, 1.0]
    """
    top = z.amax(dim, keepdim=True)
    return z.sub_(top).clamp_min_(-80.0).exp_().sum(dim).log_().add_(top.squeeze(dim))


def softmin(eps: float, cost: Tensor, h: Tensor) -> Tensor:
    """Soft c-transform ``-eps log sum_j exp(h_j - C_ij / eps)`` along the rows of ``cost``
    (``h = log beta + g / eps``)."""
    return logsumexp_(torch.add(h, cost, alpha=-1.0 / eps)).mul_(-eps)


def mass_offsets(eps_list: list[float], log_ma: float, log_mb: float) -> tuple[float, float]:
    """The scalar offsets ``(s, t)`` of geomloss's raw-mass potentials over the normalised ones.

    Example:
        >>> mass_offsets([1.0, 1.0, 0.5], 0.0, 0.0) == (0.0, 0.0)  # unit masses: no offset
        True
    """
    s, t = -eps_list[0] * log_mb, -eps_list[0] * log_ma
    for eps in eps_list:
        s, t = 0.5 * (s - t - eps * log_mb), 0.5 * (t - s - eps * log_ma)
    eps = eps_list[-1]
    return -t - eps * log_mb, -s - eps * log_ma


def offset_coefficients(eps_list: list[float]) -> tuple[tuple[float, float], tuple[float, float]]:
    """The offsets are linear in ``(log m_a, log m_b)``: ``s = cs . (log m_a, log m_b)``,
    ``t = ct . (log m_a, log m_b)``; returns ``(cs, ct)`` so a step needs no host round trip.

    Example:
        >>> offset_coefficients([1.0, 1.0, 0.5])
        ((1.25, -1.5), (-1.5, 1.25))
    """
    s_a, t_a = mass_offsets(eps_list, 1.0, 0.0)
    s_b, t_b = mass_offsets(eps_list, 0.0, 1.0)
    return (s_a, s_b), (t_a, t_b)


def _normalised(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """``(log alpha, log m)`` of geomloss-style log-weights (``log m`` a float64 0-d tensor)."""
    log_m = torch.logsumexp(log_w.double(), 0)
    return log_w - log_m.float(), log_m


def annealed_potentials(
    eps_list: list[float], c_cols: Tensor, log_alpha: Tensor, log_beta: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """geomloss's symmetric annealed Sinkhorn on the normalised problems ``OT(alpha, beta)`` and
    ``OT(alpha, alpha)``: ``(f_hat, g_hat, f_hat_aa)`` after the final extrapolation.

    ``c_cols`` is ``[C_xy | C_xx]``, shape ``(B, J + B)``. Each epsilon costs two reductions: one
    along the rows of ``C_xy`` (the batch potential ``f``), one down the columns of ``c_cols`` (the
    validation potential ``g`` and the batch's own potential ``f_aa`` together); both keep the
    long validation axis contiguous.
    """
    b = c_cols.shape[0]
    j = c_cols.shape[1] - b
    c_xy = c_cols[:, :j]

    def batch_side(eps: float, g: Tensor) -> Tensor:  # log-sum-exp over the validation points
        return logsumexp_(torch.add(torch.add(log_beta, g, alpha=1.0 / eps), c_xy, alpha=-1.0 / eps))

    # rows of `blocks` spread the two batch-side vectors over their column blocks: one addmm
    # builds h_i - C_ik / eps for both blocks (no cat / expand per epsilon)
    blocks = torch.zeros(2, j + b, dtype=c_xy.dtype, device=c_xy.device)
    blocks[0, :j], blocks[1, j:] = 1.0, 1.0
    log_alpha_col = log_alpha.unsqueeze(1)

    def rest_side(eps: float, f: Tensor, rest: Tensor) -> Tensor:  # over the batch points
        h = torch.add(log_alpha_col, torch.stack([f, rest[j:]], 1), alpha=1.0 / eps)
        return logsumexp_(torch.addmm(c_cols, h, blocks, beta=-1.0 / eps), 0)

    eps = eps_list[0]
    zero_f = torch.zeros_like(log_alpha)
    f = batch_side(eps, torch.zeros_like(log_beta)).mul_(-eps)
    rest = rest_side(eps, zero_f, torch.cat([torch.zeros_like(log_beta), zero_f])).mul_(-eps)
    for eps in eps_list:  # symmetric steps: x <- (x + softmin) / 2
        lf, lr = batch_side(eps, rest[:j]), rest_side(eps, f, rest)
        f = torch.add(f, lf, alpha=-eps).mul_(0.5)
        rest = torch.add(rest, lr, alpha=-eps).mul_(0.5)
    eps = eps_list[-1]  # final extrapolation
    f, rest = batch_side(eps, rest[:j]).mul_(-eps), rest_side(eps, f, rest).mul_(-eps)
    return f, rest[:j], rest[j:]


def annealed_self_potential(eps_list: list[float], c_xx: Tensor, log_alpha: Tensor) -> Tensor:
    """The symmetric problem ``OT(alpha, alpha)`` alone: one potential (both sides are equal)."""
    eps = eps_list[0]
    f = softmin(eps, c_xx, log_alpha)
    for eps in eps_list:
        f = torch.add(f, softmin(eps, c_xx, torch.add(log_alpha, f, alpha=1.0 / eps))).mul_(0.5)
    eps = eps_list[-1]
    return softmin(eps, c_xx, torch.add(log_alpha, f, alpha=1.0 / eps))


class SinkhornDivergence:
    """Debiased Sinkhorn divergence ``S((a, x), (b, y))`` for a fixed weighted target ``(b, y)``,
    differentiable in the batch masses ``a`` (the points ``x`` are constants).

    Args:
        target: Target points ``y``, shape ``(J, d)``.
        target_weights: Target masses ``b``, shape ``(J,)`` (raw, not normalised).
        diameter: Fixed diameter of the problem (start of the epsilon schedule).
        p: Exponent of the ground cost ``|x - y|^p / p`` (1 or 2).
        blur: Target blur (``eps = blur**p``).
        scaling: Epsilon-scaling ratio of geomloss's schedule, which fixes ``D``'s raw-mass offsets.
        solve_scaling: Epsilon-scaling ratio the potentials are annealed at (``None``: ``scaling``,
            geomloss's result to float rounding). Smaller: fewer epsilon steps per call; the
            offsets keep ``scaling``'s closed form, so only the normalised potentials change.
        exact_self_max: Largest J whose self-term ``OT(b, b)`` is solved exactly (J x J); above it,
            the identity plan's value (error bounded in the module docstring).
        host_max_entries: CPU batches with ``B * (J + B)`` up to this run the loop on the host
            (:mod:`~lightning_dv.methods.lossval.host`: numpy float64, one ``exp`` per epsilon; same
            values to float rounding, 2-4x faster at LossVal's sizes); larger ones, CUDA tensors, and
            the rare batch whose kernel leaves float64's range take the torch log-domain loop.
            ``0``: always the torch loop; ``None``: :data:`~lightning_dv.methods.lossval.host.HOST_MAX_ENTRIES`.

    Example:
        >>> y = torch.randn(50, 3)
        >>> div = SinkhornDivergence(y, torch.ones(50), diameter=10.0)
        >>> a = torch.ones(8, requires_grad=True)
        >>> d = div(a, torch.randn(8, 3))
        >>> d.backward()
        >>> d.shape, a.grad.shape
        (torch.Size([]), torch.Size([8]))
    """

    def __init__(
        self,
        target: Tensor,
        target_weights: Tensor,
        diameter: float,
        p: int = 2,
        blur: float = 0.05,
        scaling: float = 0.5,
        exact_self_max: int = 2048,
        solve_scaling: float | None = None,
        host_max_entries: int | None = None,
    ) -> None:
        self.y, self.b = fixed_target(target, target_weights)
        if p not in (1, 2):
            raise ValueError(f"`p` must be 1 or 2 (geomloss's point-cloud costs); got {p}.")
        check_schedule(diameter=diameter, blur=blur, scaling=scaling, solve_scaling=solve_scaling)
        self.p = p
        # eps_list fixes D's raw-mass offsets (geomloss's schedule); solve_eps anneals the potentials
        self.eps_list = epsilon_schedule(p, float(diameter), float(blur), float(scaling))
        self.solve_eps = (
            self.eps_list
            if solve_scaling is None
            else epsilon_schedule(p, float(diameter), float(blur), float(solve_scaling))
        )
        self.b64, self.y_half = self.b.double(), (self.y * self.y).sum(1).mul_(0.5)
        self.log_beta, log_mb = _normalised(log_weights(self.b))
        self.log_mb = float(log_mb)
        self.mass_b = float(self.b64.sum())
        (cs_a, cs_b), (ct_a, ct_b) = offset_coefficients(self.eps_list)
        # per step: s = cs_a log m_a + cs_b log m_b (+ the constant of the fixed validation mass)
        self._s = (cs_a, cs_b * self.log_mb)
        self._t = (ct_a, ct_b * self.log_mb)
        self._s_own = cs_a + cs_b
        self.self_term = self._self_term(exact_self_max)
        # host path (CPU, small problems): the target's constants in float64 / transposed once
        self.host_max_entries = host.HOST_MAX_ENTRIES if host_max_entries is None else int(host_max_entries)
        self._b_host = self.b64.cpu().numpy()
        self._beta_host = self.log_beta.double().exp().cpu().numpy()
        self._y_half_host = self.y_half.double().cpu().numpy()
        self._y_t_host = self.y.T.contiguous().cpu().numpy()

    def _self_term(self, exact_self_max: int) -> float:
        s, _ = mass_offsets(self.eps_list, self.log_mb, self.log_mb)
        if self.y.shape[0] <= exact_self_max:
            with torch.no_grad():
                g = annealed_self_potential(
                    self.solve_eps, ground_cost(self.y, self.y, self.p), self.log_beta
                )
            normalised = 2 * float((self.b64 * g.double()).sum())
        else:  # identity plan: eps * H(beta), each point transported onto itself
            beta = self.log_beta.double().exp()
            entropy = -float((beta * self.log_beta.double()).sum())
            normalised = self.mass_b * self.eps_list[-1] * entropy
        return normalised + 2 * s * self.mass_b

    def to(self, device: torch.device) -> SinkhornDivergence:
        self.y, self.b, self.b64 = self.y.to(device), self.b.to(device), self.b64.to(device)
        self.log_beta, self.y_half = self.log_beta.to(device), self.y_half.to(device)
        return self

    def _cost_cols(self, x: Tensor) -> Tensor:
        """``[C_xy | C_xx]`` of the batch ``x``; for ``p = 2`` one matrix product against the
        stacked points, ``|x|^2 / 2 - x.y + |y|^2 / 2`` with the target's norms precomputed."""
        if self.p != 2:
            return torch.cat([ground_cost(x, self.y, self.p), ground_cost(x, x, self.p)], dim=1)
        x_half = (x * x).sum(1).mul_(0.5)
        norms = torch.add(x_half.unsqueeze(1), torch.cat([self.y_half, x_half]))
        return torch.addmm(norms, x, torch.cat([self.y, x]).T, alpha=-1.0)

    def _host_cost(self, x: Tensor) -> np.ndarray:
        """``[C_xy | C_xx]`` in float64 from two float32 products in numpy (no stacked copy of the
        target): ``x y^T`` against the target stored transposed once, and ``x x^T``, which numpy
        computes as a symmetric rank-k update (BLAS ``syrk``: half the flops of a general product,
        exactly symmetric). ``|x|^2`` is read off its diagonal, so ``C_xx``'s diagonal is exactly 0."""
        if self.p != 2:
            return self._cost_cols(x).numpy().astype(np.float64)
        j, xs = self.y.shape[0], x.numpy()
        cost = np.empty((x.shape[0], j + x.shape[0]))
        cost[:, :j], cost[:, j:] = xs @ self._y_t_host, xs @ xs.T
        x_half = np.diagonal(cost[:, j:]) * 0.5
        np.subtract(np.concatenate([self._y_half_host, x_half]), cost, out=cost)
        np.add(cost, x_half[:, None], out=cost)
        return cost

    def _host_solve(self, a32: Tensor, x32: Tensor) -> tuple[Tensor, Tensor] | None:
        """Value and mass gradient on the host (float64), or ``None`` to use the torch loop."""
        a = a32.numpy().astype(np.float64)
        alpha, log_ma = normalised_masses(a, ZERO_MASS_LOG)
        potentials = kernel_potentials(
            self.solve_eps, self._host_cost(x32), alpha, self._beta_host, ZERO_MASS_LOG - log_ma
        )
        if potentials is None:
            return None
        f, g, f_aa = potentials
        grad_offset, value_offset = self._mass_offsets(log_ma)
        grad = f - f_aa + grad_offset
        return torch.tensor(a @ grad + self._b_host @ g + value_offset), torch.from_numpy(grad)

    def _torch_solve(self, a32: Tensor, x32: Tensor) -> tuple[Tensor, Tensor]:
        """Value and mass gradient by the log-domain loop in torch (any device, float32 loop)."""
        log_alpha, log_ma = _normalised(log_weights(a32))
        f, g, f_aa = annealed_potentials(self.solve_eps, self._cost_cols(x32), log_alpha, self.log_beta)
        grad_offset, value_offset = self._mass_offsets(log_ma)
        grad = (f - f_aa).double() + grad_offset
        return (a32.double() * grad).sum() + (self.b64 * g.double()).sum() + value_offset, grad

    def _mass_offsets(self, log_ma):
        """The raw-mass terms both loops add to the normalised potentials: ``(s - s_own log m_a)``
        on the gradient and ``t m_b - S(b, b) / 2`` on the value (``s``, ``t`` linear in ``log m_a``)."""
        s = self._s[0] * log_ma + self._s[1]
        t = self._t[0] * log_ma + self._t[1]
        return s - self._s_own * log_ma, t * self.mass_b - 0.5 * self.self_term

    def solve(self, a: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``S((a, x), (b, y))`` and its gradient ``f_ab - f_aa`` in the masses ``a``, both float64,
        without autograd (LossVal's fixed weights read the gradient directly)."""
        with torch.no_grad():
            a32, x32 = a.detach().float(), x.detach().float().contiguous()
            solved = None
            if (
                x32.device.type == "cpu"
                and x32.shape[0] * (self.y.shape[0] + x32.shape[0]) <= self.host_max_entries
            ):
                solved = self._host_solve(a32, x32)
            return solved if solved is not None else self._torch_solve(a32, x32)

    def __call__(self, a: Tensor, x: Tensor) -> Tensor:
        """``S((a, x), (b, y))`` as a surrogate: its value, and ``f_ab - f_aa`` as gradient in ``a``."""
        if x.requires_grad:
            raise ValueError(
                "the fast Sinkhorn path differentiates in the masses only; the points must not require "
                "grad. Detach them, or use LossVal(ot='exact') to differentiate through the points."
            )
        value, grad = self.solve(a, x)
        return _MassSurrogate.apply(a, value.to(a.dtype), grad.to(a.dtype))


class _MassSurrogate(torch.autograd.Function):
    """``value`` in the forward, ``grad_output * grad`` as the gradient in the masses ``a``: one
    autograd node instead of the ``value + ((a - a.detach()) * grad).sum()`` graph."""

    @staticmethod
    def forward(ctx, a: Tensor, value: Tensor, grad: Tensor) -> Tensor:
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return grad_output * grad, None, None
