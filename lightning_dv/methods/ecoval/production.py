"""EcoVal's production function: Cobb-Douglas fitted over random cluster subsets.

``log U = log A + sum_k alpha_k log n_k``, fitted by ridge-regularised least squares over
trainings on subsets that keep a random fraction of every cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class ProductionFit:
    """A fitted Cobb-Douglas production function ``U = A * prod_k n_k ** alpha_k``.

    Attributes:
        log_a: ``log A`` (total factor productivity).
        alpha: Elasticity of the utility in each cluster's size, shape ``(K,)``.
        r2: Coefficient of determination of the fit in log space.
        stderr: Standard errors of ``alpha`` (sandwich formula of the ridge estimate with the
            residual variance), or None.
    """

    log_a: float
    alpha: np.ndarray
    r2: float
    stderr: np.ndarray | None = None

    def shrunk_alpha(self) -> np.ndarray:
        """Elasticities shrunk towards 0 by their noise: ``alpha_k * max(0, 1 - (se_k / alpha_k)^2)``.

        A positive-part James-Stein factor per coordinate: an elasticity within one standard error
        of zero becomes 0, a well-determined one is barely changed.
        """
        if self.stderr is None:
            return self.alpha
        ratio = np.divide(
            self.stderr**2, self.alpha**2, out=np.full_like(self.alpha, np.inf), where=self.alpha != 0
        )
        return self.alpha * np.clip(1.0 - ratio, 0.0, None)

    def log_utility(self, counts: np.ndarray) -> np.ndarray:
        """Predicted ``log U`` for cluster counts of shape ``(..., K)`` (all counts >= 1)."""
        return self.log_a + np.log(np.asarray(counts, dtype=np.float64)) @ self.alpha

    def marginal_products(self, counts: np.ndarray) -> np.ndarray:
        """``dU/dn_k = alpha_k * U(n) / n_k`` at the counts ``n`` of shape ``(K,)``."""
        counts = np.asarray(counts, dtype=np.float64)
        return self.alpha * math.exp(float(self.log_utility(counts))) / counts


def fit_cobb_douglas(counts: np.ndarray, log_utility: np.ndarray, ridge: float = 1e-3) -> ProductionFit:
    """Fit ``log U = log A + sum_k alpha_k log n_k`` by ridge-regularised least squares.

    Minimises ``mean_s (log U_s - log A - sum_k alpha_k log n_sk)^2 + ridge * ||alpha||^2``;
    ``log A`` is not penalised. The solution is closed-form: centre the log-counts and the target,
    then ``alpha = (Z^T Z / S + ridge I)^-1 Z^T t / S``. With ``ridge=0`` the minimum-norm least
    squares solution is used.

    Args:
        counts: Members of each cluster in each training set, shape ``(S, K)``, all >= 1.
        log_utility: ``log U`` of each training, shape ``(S,)``.
        ridge: Penalty on the elasticities (>= 0).

    Returns:
        The fitted :class:`ProductionFit`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> n = rng.integers(1, 50, size=(200, 3))
        >>> fit = fit_cobb_douglas(n, 0.5 + np.log(n) @ np.array([0.3, -0.2, 0.1]), ridge=0.0)
        >>> np.round(fit.alpha, 6).tolist(), round(fit.log_a, 6)
        ([0.3, -0.2, 0.1], 0.5)
    """
    n = np.asarray(counts, dtype=np.float64)
    t = np.asarray(log_utility, dtype=np.float64).reshape(-1)
    if n.ndim != 2 or n.shape[0] != t.shape[0]:
        raise ValueError(
            f"`counts` must have shape (S, K) with S = len(log_utility) = {t.shape[0]}; got {n.shape}."
        )
    if np.any(n < 1):
        raise ValueError("every count must be >= 1: the Cobb-Douglas form needs log(n_k); keep >= 1 member.")
    if not np.all(np.isfinite(t)):
        raise ValueError(
            "`log_utility` holds NaN or infinite entries; a utility must be > 0 to take its log."
        )
    if ridge < 0:
        raise ValueError(f"`ridge` must be >= 0; got {ridge}.")
    z = np.log(n)
    z_mean, t_mean = z.mean(0), t.mean()
    zc, tc = z - z_mean, t - t_mean
    s = n.shape[0]
    if ridge > 0:
        alpha = np.linalg.solve(zc.T @ zc / s + ridge * np.eye(n.shape[1]), zc.T @ tc / s)
    else:
        alpha = np.linalg.lstsq(zc, tc, rcond=None)[0]
    sst = float(tc @ tc)
    resid = tc - zc @ alpha
    sse = float(resid @ resid)
    r2 = 1.0 - sse / sst if sst > 0 else 1.0
    # sandwich covariance of the ridge estimate: sigma^2 G^-1 Z^T Z G^-1, G = Z^T Z + S * ridge * I
    sigma2 = sse / max(s - n.shape[1] - 1, 1)
    g_inv = np.linalg.pinv(zc.T @ zc + s * ridge * np.eye(n.shape[1]))
    cov = sigma2 * g_inv @ (zc.T @ zc) @ g_inv
    stderr = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    return ProductionFit(log_a=float(t_mean - z_mean @ alpha), alpha=alpha, r2=r2, stderr=stderr)


def sample_subsets(
    cluster: np.ndarray,
    n_subsets: int,
    fraction_range: tuple[float, float] = (0.2, 1.0),
    seed: int = 0,
    include_full: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Random training sets that keep a random fraction of every cluster.

    In subset ``s`` cluster ``k`` keeps ``ceil(f_sk * |k|)`` members drawn without replacement,
    ``f_sk ~ U(fraction_range)`` independently, so every cluster keeps at least one member.

    Args:
        cluster: Cluster id of every row, shape ``(N,)``, ids ``0..K-1``.
        n_subsets: Number of training sets ``S``.
        fraction_range: ``(low, high)`` with ``0 < low <= high <= 1``.
        seed: Seed of the draw.
        include_full: Make the first subset the full data.

    Returns:
        ``(masks, counts)``: boolean ``(S, N)`` row masks and ``(S, K)`` members kept per cluster.

    Example:
        >>> masks, counts = sample_subsets(np.array([0, 0, 1, 1, 1]), 3, (0.5, 0.5))
        >>> masks.shape, counts.tolist()
        ((3, 5), [[2, 3], [1, 2], [1, 2]])
    """
    lo, hi = fraction_range
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"`fraction_range` must satisfy 0 < low <= high <= 1; got {fraction_range}.")
    if n_subsets < 1:
        raise ValueError(f"`n_subsets` must be >= 1; got {n_subsets}.")
    cluster = np.asarray(cluster, dtype=np.int64)
    k_total = int(cluster.max()) + 1
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_subsets, cluster.shape[0]), dtype=bool)
    counts = np.zeros((n_subsets, k_total), dtype=np.int64)
    for k in range(k_total):
        rows = np.flatnonzero(cluster == k)
        if rows.size == 0:
            raise ValueError(f"cluster {k} is empty; cluster ids must be 0..K-1 with every id used.")
        keep = np.ceil(rng.uniform(lo, hi, size=n_subsets) * rows.size).astype(np.int64)
        keep = np.clip(keep, 1, rows.size)
        if include_full:
            keep[0] = rows.size
        # rank of each member in a random order, per subset: keep the first `keep` of them
        rank = np.argsort(np.argsort(rng.random((n_subsets, rows.size)), axis=1), axis=1)
        masks[:, rows] = rank < keep[:, None]
        counts[:, k] = keep
    return masks, counts
