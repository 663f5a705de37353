"""The annealed Sinkhorn loop of small CPU problems on the host: numpy float64, kernel (exp) domain.

Same iteration as :func:`~lightning_dv.methods.lossval.sinkhorn.annealed_potentials` (geomloss's
symmetric epsilon-annealing on the normalised problems ``OT(alpha, beta)`` and ``OT(alpha,
alpha)``), written with the kernel stabilised by the current potentials (Schmitzer, "Stabilized
Sparse Scaling Algorithms for Entropy Regularized Transport Problems", SIAM J. Sci. Comput. 2019):

    K_ik = exp((f_i + g_k - C_ik) / eps)        (g = [g_xy | f_aa] over the columns [C_xy | C_xx])
    softmin_eps(C, log beta + g / eps)_i = f_i - eps log sum_j beta_j K_ij
    softmin_eps(C^T, log alpha + f / eps)_k = g_k - eps log sum_i alpha_i K_ik

so one ``exp`` of the ``B x (J + B)`` matrix and two matrix-vector products give both sides of an
epsilon step (the log domain needs two max-shifted log-sum-exps, four passes each), and every
update is ``x <- x - w eps log(sums)`` with ``w = 1/2`` for the symmetric steps and ``w = 1`` at the
first and the final extrapolation. Mathematically identical; only the rounding differs (float64
here against float32 there).

Why the host: at LossVal's sizes (``B = 32``, ``J = 100``: 4k entries) torch's CPU per-op dispatch
(~5 us) is the cost, not arithmetic; numpy's is ~1 us and the loop needs ~10 ops per epsilon. The
three passes over the matrix (build the exponent, clamp, ``exp``) are the exception: they run as
torch ops on the same memory, because torch's vectorised float64 ``exp`` and clamp take about half
numpy's time from ~10k entries on (the CNN workload's ``128 x 228``, ``J = 1000``), and
``addmm(C, rows, cols, beta=-1/eps, alpha=1/eps)`` builds ``(f_i + g_k - C_ik) / eps`` in one pass.
Why float64: between epsilons the exponents reach ~+30 and the row sums ~``e^-200`` (measured on
Gaussian, digits and image features), outside float32's range, inside float64's. Exponents are
clamped at ``-700`` (``exp`` of deeply negative inputs takes a slow path, and ``e^-700`` is below
float64 resolution of any sum that passes the guard). The guard: if any log-sum leaves
``(-600, 700)`` (a row whose exponents all fell below the floor; measured for features of scale
10 at ``blur = 0.05``, or ``blur <= 0.01``), the loop runs again and recomputes each offending
step's out-of-range sums in the log domain; a potential that is still not finite hands the problem
to the torch loop. A coarse schedule (``LossVal``'s default ``ot_scaling=0.2``: epsilon drops by
25x per step, so the exponents grow by as much) leaves the range on a few rows of most calls with
image-sized features, so it runs checked from the start (docs/lossval_speed.md).
"""

from __future__ import annotations

import numpy as np
import torch

#: Exponents below this are clamped before ``exp`` (slow path; negligible terms).
EXP_FLOOR = -700.0
#: Log-sums outside this range make the kernel result untrusted (the caller falls back).
LOG_SUM_RANGE = (EXP_FLOOR + 100.0, 700.0)
#: Epsilon steps smaller than this ratio (``ot_scaling**p < 0.2``) move the exponents beyond
#: float64's range on a few rows per call (docs/lossval_speed.md), so such schedules run the checked
#: loop at once (each step's log-sums checked, offending rows / columns redone) instead of twice.
COARSE_EPS_RATIO = 0.2
#: From this many cost entries on, the loop's passes over the matrix run as torch ops (module docstring).
TORCH_MIN_ENTRIES = 8192
#: Largest ``B * (J + B)`` solved on the host; above it the torch loop is faster (docs/lossval_speed.md).
HOST_MAX_ENTRIES = 1 << 16


def kernel_potentials(
    eps_list: list[float],
    cost: np.ndarray,
    alpha: np.ndarray,
    beta: np.ndarray,
    zero_log_mass: float = -np.inf,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(f_hat, g_hat, f_hat_aa)`` of the annealed symmetric Sinkhorn loop, or ``None`` if a
    potential is not finite (then use the torch loop).

    ``cost`` is ``[C_xy | C_xx]`` (float64, ``(B, J + B)``, left unchanged), ``alpha`` and ``beta``
    the normalised masses (float64, zero for no mass), ``zero_log_mass`` the normalised log-mass
    geomloss gives a row of no mass (``-100000 - log m_a``). The kernel loop runs unchecked; if a
    log-sum left :data:`LOG_SUM_RANGE` (a row whose exponents all fell below the floor: features
    of large scale, small ``blur``), it runs again checking every step and recomputing an
    offending step's sums by max-shifted log-sum-exps.

    Example:
        >>> c = np.array([[0.0, 1.0, 0.0, 2.0], [1.0, 0.0, 2.0, 0.0]])  # B = 2, J = 2
        >>> f, g, f_aa = kernel_potentials([4.0, 4.0, 1.0], c, np.full(2, 0.5), np.full(2, 0.5))
        >>> f.shape, g.shape, f_aa.shape
        ((2,), (2,), (2,))
    """
    args = (eps_list, cost, alpha, beta, zero_log_mass)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # detected, then redone
        if min((b / a for a, b in zip(eps_list, eps_list[1:]) if a > 0), default=1.0) < COARSE_EPS_RATIO:
            return _kernel_loop(*args, checked=True)  # a coarse schedule: checked from the start
        return _kernel_loop(*args, checked=False) or _kernel_loop(*args, checked=True)


def _kernel_loop(
    eps_list: list[float],
    cost: np.ndarray,
    alpha: np.ndarray,
    beta: np.ndarray,
    zero_log_mass: float,
    checked: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    b, jb = cost.shape
    j = jb - b
    work, kernel = np.empty_like(cost), np.empty_like(cost)
    # a row of zero mass contributes nothing to the column sums, but its own diagonal entry in the
    # C_xx block, (2 f_aa_i - 0) / eps, is unbounded: push that block's row below the floor
    dead = np.where(alpha > 0, 0.0, -1e200)  # (still finite once addmm scales it by 1 / eps)
    # (with zero_log_mass = -inf, rows of no mass contribute exactly nothing: no share to add)
    dead_rows = np.flatnonzero(alpha <= 0) if np.isfinite(zero_log_mass) else np.empty(0, dtype=int)
    # work = rows.T @ cols builds f_i + g_k over [C_xy | C_xx] in one product (C subtracted
    # after): rows = [1; f_aa; f] (3, B), cols = [g over all columns; block 2; block 1] (3, J + B).
    # Both live in one buffer so that [f | g] is one contiguous vector, updated in one operation.
    buf = np.zeros(3 * (b + jb))
    rows, cols = buf[: 3 * b].reshape(3, b), buf[3 * b :].reshape(3, jb)
    potentials = buf[2 * b : 3 * b + jb]  # [f | g | f_aa], aligned with [row sums | column sums]
    rows[0], rows[1] = 1.0, dead
    cols[1, j:], cols[2, :j] = 1.0, 1.0
    f_aa = cols[0, j:]
    steps = [(eps_list[0], 1.0)] + [(eps, 0.5) for eps in eps_list] + [(eps_list[-1], 1.0)]
    logs = np.empty((len(steps), b + jb))
    step = np.empty(b + jb)
    lo, hi = LOG_SUM_RANGE
    # large matrices: the three passes over the matrix as torch ops on the same memory (module docstring)
    in_torch = cost.size >= TORCH_MIN_ENTRIES
    if in_torch:
        work_t, kernel_t, cost_t = torch.from_numpy(work), torch.from_numpy(kernel), torch.from_numpy(cost)
        rows_t, cols_t = torch.from_numpy(rows).T, torch.from_numpy(cols)
    for n, (eps, w) in enumerate(steps):
        if in_torch:
            torch.addmm(cost_t, rows_t, cols_t, beta=-1.0 / eps, alpha=1.0 / eps, out=work_t)
            torch.clamp_min(work_t, EXP_FLOOR, out=kernel_t).exp_()
        else:
            np.matmul(rows.T, cols, out=work)
            np.subtract(work, cost, out=work)
            np.multiply(work, 1.0 / eps, out=work)
            np.maximum(work, EXP_FLOOR, out=kernel)
            np.exp(kernel, out=kernel)
        sums = logs[n]
        np.matmul(kernel[:, :j], beta, out=sums[:b])
        np.matmul(alpha, kernel, out=sums[b:])
        np.log(sums, out=sums)
        if checked and not (sums.min() > lo and sums.max() < hi):
            _stable_log_sums(work, alpha, beta, out=sums, lo=lo, hi=hi)
        if dead_rows.size:
            f_dead = np.stack([rows[2, dead_rows], f_aa[dead_rows]], 1)
            _add_zero_mass_leak(sums[b:], f_dead, cols[0], cost[dead_rows], j, eps, zero_log_mass)
        np.multiply(sums, w * eps, out=step)
        np.subtract(potentials, step, out=potentials)
        np.add(f_aa, dead, out=rows[1])
    ok = np.isfinite(logs).all() if checked else logs.min() > lo and logs.max() < hi  # NaN fails
    return (rows[2].copy(), cols[0, :j].copy(), f_aa.copy()) if ok else None


def _add_zero_mass_leak(
    col_sums: np.ndarray,
    f_dead: np.ndarray,
    g: np.ndarray,
    c_dead: np.ndarray,
    j: int,
    eps: float,
    log_mass: float,
) -> None:
    """Add geomloss's share of the rows of no mass to the log column sums (all ``J + B`` columns).

    geomloss gives such rows the log-mass ``-100000``, not ``-inf``: their term
    ``exp(log_mass + (f_i + g_k - C_ik) / eps)`` is negligible unless the exponent nears ``1e5``,
    which happens at small ``eps`` (right after an epsilon step at ``blur = 0.001``) and on the
    row's own diagonal in ``C_xx`` (``2 f_aa_i / eps`` for a row far from every massive point).
    The kernel excludes these rows; this adds their exact log-domain share (``D x (J + B)``).
    ``f_dead``: the rows' ``[f, f_aa]`` as ``(D, 2)``; ``g``: ``[g | f_aa]``; ``c_dead``: their costs
    (the first ``j`` columns against the target).
    """
    z = np.subtract(g, c_dead)
    z[:, :j] += f_dead[:, :1]
    z[:, j:] += f_dead[:, 1:]
    z *= 1.0 / eps
    z += log_mass
    np.logaddexp(col_sums, _log_sum_exp(z, 0), out=col_sums)


def _stable_log_sums(
    z: np.ndarray, alpha: np.ndarray, beta: np.ndarray, out: np.ndarray, lo: float, hi: float
) -> None:
    """Redo the entries of ``out`` outside ``(lo, hi)`` (NaN included) max-shifted, in the log
    domain: a row's ``log sum_j beta_j e^z_ij`` (over the first ``J`` columns), a column's
    ``log sum_i alpha_i e^z_ik``. An entry inside the range is exact already (an overflow makes its
    sum infinite; the floor's terms are below ``e^-100`` of it), so only the offending rows and
    columns (a few per call) are recomputed."""
    b, j = z.shape[0], beta.shape[0]
    redo = ~((out > lo) & (out < hi))
    rows, cols = np.flatnonzero(redo[:b]), np.flatnonzero(redo[b:])
    with np.errstate(divide="ignore"):
        if rows.size:
            out[rows] = _log_sum_exp(z[rows, :j] + np.log(beta), 1)
        if cols.size:
            out[b + cols] = _log_sum_exp(z[:, cols] + np.log(alpha)[:, None], 0)


def _log_sum_exp(z: np.ndarray, axis: int) -> np.ndarray:
    """``log sum exp z`` along ``axis``, max-shifted; terms below ``e^-100`` of the largest are
    clamped there (below float64 resolution of the sum, and off ``exp``'s slow path)."""
    top = z.max(axis, keepdims=True)
    return np.log(np.exp(np.maximum(z - top, -100.0)).sum(axis)) + top.squeeze(axis)


def normalised_masses(a: np.ndarray, zero_mass_log: float) -> tuple[np.ndarray, float]:
    """``(alpha, log m_a)`` of raw masses ``a`` with geomloss's convention (rows of weight <= 0
    carry log-mass ``zero_mass_log``), in float64.

    Example:
        >>> alpha, log_m = normalised_masses(np.array([1.0, 3.0, -1.0]), -100000.0)
        >>> alpha.round(6).tolist(), round(log_m, 6)
        ([0.25, 0.75, 0.0], 1.386294)
    """
    if a.min() > 0:  # the usual case: every row carries mass
        total = a.sum()
        return a / total, float(np.log(total))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_a = np.where(a > 0, np.log(np.where(a > 0, a, 1.0)), zero_mass_log)
    top = log_a.max()
    log_m = float(top + np.log(np.exp(log_a - top).sum()))
    return np.exp(log_a - log_m), log_m
