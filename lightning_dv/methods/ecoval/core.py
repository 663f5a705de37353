"""EcoVal: cluster-level data valuation with a production function, including unseen points.

Reference: Tarun, Chundawat, Mandal, Tan, Chen, Kankanhalli, "EcoVal: An Efficient Data Valuation
Framework for Machine Learning", arXiv 2402.09288.

Only the paper's abstract is public. What it states, and this module follows:

* similar points are grouped into clusters and the clusters are valued, then each cluster's
  value is propagated to its members, which needs far fewer trainings than point-level Shapley;
* a point's value has an INTRINSIC and an EXTRINSIC part;
* model performance is treated as an economic PRODUCTION FUNCTION of the data inputs;
* new points are valued OUT OF SAMPLE, without retraining.

Everything below that line is THE PROJECT'S OWN READING of the abstract (not the authors'
method, which is unpublished):

1. Clusters: k-means (scikit-learn, ``n_init=3``) on the raw features, flattened, or on the
   embeddings of a user ``features`` function; by default per class, the total ``n_clusters``
   shared among classes in proportion to their sizes (at least one cluster per class).
2. Trainings: ``n_subsets`` training sets; the first is the full data, every other keeps, in each
   cluster ``k`` independently, ``ceil(f * |k|)`` random members with ``f ~ U(fraction_range)``
   (so every cluster keeps at least one member and its log-count is defined). A model is trained
   on each subset and scored on the validation set. The built-in model is an L2-regularised
   multinomial logistic regression trained for all subsets at once (:func:`train_softmax_batched`);
   a user ``LightningModule`` factory is the high-fidelity option (one ``Trainer`` per subset).
3. Production function: Cobb-Douglas, ``log U = log A + sum_k alpha_k log n_k``, fitted by
   ridge-regularised least squares over the trainings (:func:`fit_cobb_douglas`). The utility is
   the validation accuracy (default) or ``U = exp(-validation cross-entropy)``
   (``utility="log_likelihood"``: the geometric-mean likelihood of the validation labels, so
   ``log U`` is the negative log-loss). Accuracy is the default because its elasticities ranked
   the label-noise rows better on digits and the gaussian set (extrinsic-only AUROC 0.71 vs 0.50
   on digits, 0.56 vs 0.53 on gaussian; 2 seeds, 10% label noise, 60 clusters, 600 trainings).
   The elasticities are then shrunk towards 0 by their standard errors (positive-part
   James-Stein factor ``max(0, 1 - se_k^2 / alpha_k^2)``, ``shrink=True``), because most of
   them are within noise of 0 when the label noise is not clustered.
4. Extrinsic value of a point = the marginal product of its cluster at the full data,
   ``MP_k = dU/dn_k = alpha_k * U / n_k``. A harmful cluster has ``alpha_k < 0``, hence a negative
   marginal product: it comes out low. Duplicating a cluster doubles ``n_k`` and does not
   raise ``alpha_k`` (copies carry no new information), so it does not raise its members' value.
   Euler's theorem gives ``sum_i MP_k(i) = (sum_k alpha_k) * U``: the extrinsic values of all
   points add up to the utility times the returns to scale.
5. Intrinsic value of a point = the share of its ``n_neighbors`` nearest training points (in the
   clustering space) whose label equals its label. The neighbourhood is taken among DISTINCT
   training points and excludes points identical to the query, so copies of a point are no
   evidence for it, a duplicated cluster keeps its intrinsic values, and a held-out copy of a
   training point sees exactly the neighbourhood its original sees.
6. Total value = ``intrinsic + w * e_k`` with the normalised extrinsic score
   ``e_k = (alpha_k / sum_j |alpha_j|) / (n_k / N)``: the marginal product divided by the average
   product ``U / N`` and by the total absolute elasticity, i.e. the cluster's share of the
   elasticity over its share of the data (1: pulls its weight, 0: useless, < 0: harmful). The
   weight is asymmetric: ``w = harm_weight`` (0.3) when ``e_k < 0`` and ``extrinsic_weight``
   (0.1) otherwise. An input with a negative marginal product is a "bad": it must pull its
   members down, while productivity differences among useful clusters matter less than a
   point's own label quality. Chosen by measurement (2 seeds, 10% noise, default settings;
   ``benchmarks/bench_ecoval.py`` has the ``clustered`` noise kind), detection F1 / AUROC:

   ====================  ================  ================  ================  ================
   weights (harm, use)   digits, uniform   gaussian, unif.   digits, groups    gaussian, groups
   ====================  ================  ================  ================  ================
   (0.1, 0.1)            0.81 / 0.995      0.34 / 0.81       0.51 / 0.91       0.27 / 0.72
   (0.3, 0.3)            0.83 / 0.987      0.28 / 0.72       0.68 / 0.98       0.29 / 0.78
   (1, 1)                0.32 / 0.90       0.22 / 0.63       0.52 / 0.98       0.21 / 0.78
   (0.3, 0.1) default    0.84 / 0.992      0.34 / 0.78       0.62 / 0.96       0.35 / 0.78
   (0.5, 0.1)            0.59 / 0.989      0.27 / 0.76       0.79 / 0.97       0.45 / 0.80
   ====================  ================  ================  ================  ================

   Uniform label noise is a point-level defect that the neighbourhood term finds alone (AUROC
   0.997 on digits); a coherent group of wrong labels agrees with itself (neighbourhood AUROC
   0.78 on digits) and is found by its cluster's negative elasticity (extrinsic AUROC 0.99).
7. Out of sample (:meth:`EcoVal.value`): a new point joins the nearest centroid (among the clusters
   of its class when clustering per class), receives that cluster's extrinsic value, and its
   intrinsic value from its neighbourhood in the training set. No model is trained.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_dv.callbacks.collect import collect_training_rows
from lightning_dv.callbacks.reporting import as_noisy_mask, export_values, log_values
from lightning_dv.values import DataValues

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

__all__ = [
    "EcoVal",
    "EcoValValuation",
    "ProductionFit",
    "fit_cobb_douglas",
    "log_and_export",
    "neighbour_agreement",
    "sample_subsets",
    "train_softmax_batched",
]

log = logging.getLogger(__name__)

UTILITIES = ("accuracy", "log_likelihood")


# --------------------------------------------------------------------------------------------
# Production function
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Subsets and trainings
# --------------------------------------------------------------------------------------------
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


def _with_bias(x: Tensor) -> Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)


def train_softmax_batched(
    x: Tensor,
    y: Tensor,
    masks: Tensor,
    num_classes: int,
    steps: int = 200,
    l2: float = 1e-3,
) -> Tensor:
    """Train one multinomial logistic regression per subset, all subsets as one tensor program.

    Subset ``s`` minimises ``sum_i m_si CE(x_i W_s, y_i) / sum_i m_si + l2/2 * ||W_s[:-1]||^2``
    (the bias row, last, is not penalised), the same objective as scikit-learn's
    ``LogisticRegression(C=1 / (l2 * n_s))`` with ``sample_weight=m_s``. The optimiser is
    Nesterov's accelerated gradient with step ``1 / L_s``, ``L_s = lambda_max(X^T M_s X / n_s) / 2
    + l2`` (the softmax Hessian is bounded by half the covariance), for a fixed number of
    full-batch steps; gradients are closed-form, so there is no autograd graph.

    Args:
        x: Features, shape ``(N, d)`` (float32 or float64; the computation keeps the dtype).
        y: Class labels, shape ``(N,)``, in ``0..num_classes-1``.
        masks: Per-subset row weights (0/1 masks or any non-negative weights), shape ``(S, N)``.
        num_classes: Number of classes ``C``.
        steps: Full-batch steps.
        l2: L2 penalty on the weights.

    Returns:
        Weights of shape ``(S, d + 1, C)``; the last row is the bias. Logits: ``[x, 1] @ W_s``.

    Example:
        >>> x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
        >>> w = train_softmax_batched(x, torch.tensor([0, 0, 1, 1]), torch.ones(3, 4), 2, steps=50)
        >>> w.shape, bool((_with_bias(x) @ w[0]).argmax(1).eq(torch.tensor([0, 0, 1, 1])).all())
        (torch.Size([3, 2, 2]), True)
    """
    xb = _with_bias(x)
    n, d1 = xb.shape
    m = masks.to(xb.dtype)
    s = m.shape[0]
    n_s = m.sum(1).clamp_min(torch.finfo(xb.dtype).tiny)
    onehot = F.one_hot(y.long(), num_classes).to(xb.dtype)[:, None, :]
    cov = torch.einsum("sn,nd,ne->sde", m / n_s[:, None], xb, xb)
    lipschitz = torch.linalg.eigvalsh(cov)[:, -1] / 2 + l2
    # Weights live as one (d+1, C*S) matrix, so every step is two large matrix products over all
    # subsets at once (logits: X @ W, gradient: X^T @ R) instead of S small ones. The subset axis
    # is innermost: a softmax over C with S contiguous is ~14x faster on CPU than over a last axis
    # of size C (measured at N=1000, C=10, S=64).
    lr = (1.0 / lipschitz)[None, None, :]
    penal = torch.ones(d1, 1, 1, dtype=xb.dtype, device=xb.device)
    penal[-1] = 0.0
    onehot = onehot.reshape(n, num_classes, 1)
    weight_scale = (m / n_s[:, None]).T[:, None, :]  # (N, 1, S)
    w = torch.zeros(d1, num_classes, s, dtype=xb.dtype, device=xb.device)
    w_prev = w
    for t in range(steps):
        look = w + (t / (t + 3.0)) * (w - w_prev)
        probs = torch.softmax((xb @ look.reshape(d1, -1)).reshape(n, num_classes, s), dim=1)
        resid = ((probs - onehot) * weight_scale).reshape(n, -1)
        grad = (xb.T @ resid).reshape(d1, num_classes, s) + l2 * penal * look
        w_prev, w = w, look - lr * grad
    return w.permute(2, 0, 1).contiguous()


def softmax_log_utility(weights: Tensor, x_valid: Tensor, y_valid: Tensor, utility: str) -> Tensor:
    """``log U`` of each batched softmax model on the validation set, shape ``(S,)``."""
    logits = torch.einsum("nd,sdc->snc", _with_bias(x_valid.to(weights.dtype)), weights)
    return _log_utility_from_logits(logits, y_valid, utility)


def _log_utility_from_logits(logits: Tensor, y_valid: Tensor, utility: str) -> Tensor:
    """``log U`` from validation logits of shape ``(S, Nv, C)``."""
    y = y_valid.long().to(logits.device)
    if utility == "log_likelihood":
        logp = torch.log_softmax(logits.double(), dim=-1)
        return logp.gather(-1, y.expand(logits.shape[0], -1)[..., None])[..., 0].mean(1)
    acc = (logits.argmax(-1) == y).double().mean(1)
    # floor at half a validation row so log U stays finite when a model gets nothing right
    return torch.log(acc.clamp_min(0.5 / y.numel()))


def _train_lightning(
    factory: Callable[[], pl.LightningModule],
    x: Tensor,
    y: Tensor,
    masks: np.ndarray,
    x_valid: Tensor,
    y_valid: Tensor,
    utility: str,
    trainer_kwargs: dict[str, Any],
    batch_size: int,
    seed: int,
) -> np.ndarray:
    """One ``lightning.Trainer`` fit per subset; ``log U`` of each on the validation set."""
    from torch.utils.data import DataLoader, TensorDataset

    kwargs = {
        "max_epochs": 10,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    kwargs.update(trainer_kwargs)
    out = np.zeros(masks.shape[0])
    for s, mask in enumerate(masks):
        rows = torch.from_numpy(np.flatnonzero(mask))
        # fork the RNG so each subset's initialisation and shuffling is reproducible and the
        # caller's global random state is left alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + s)
            module = factory()
            if not isinstance(module, pl.LightningModule):
                raise TypeError(
                    "`utility_model` must return a fresh LightningModule; "
                    f"it returned {type(module).__name__}."
                )
            loader: DataLoader = DataLoader(
                TensorDataset(rows, x[rows], y[rows]), batch_size=batch_size, shuffle=True
            )
            trainer = pl.Trainer(**kwargs)
            trainer.fit(module, loader)
        module.eval()
        with torch.no_grad():
            logits = module(x_valid.to(module.device)).float().cpu()
        if logits.ndim != 2 or logits.shape[0] != x_valid.shape[0]:
            raise ValueError(
                f"the LightningModule's forward must return class logits of shape ({x_valid.shape[0]}, C); "
                f"got {tuple(logits.shape)}."
            )
        out[s] = float(_log_utility_from_logits(logits[None], y_valid, utility)[0])
        log.info("EcoVal: Lightning training %d/%d done (log U = %.4f)", s + 1, masks.shape[0], out[s])
    return out


# --------------------------------------------------------------------------------------------
# Intrinsic term
# --------------------------------------------------------------------------------------------
def neighbour_agreement(
    ref_x: Tensor, ref_y: Tensor, x: Tensor, y: Tensor, n_neighbors: int = 10, chunk: int = 1024
) -> Tensor:
    """Share of a point's nearest DISTINCT reference points, other than itself, sharing its label.

    Reference rows that repeat (same features and label) count once, and reference points
    identical to the query (Euclidean distance exactly 0) are excluded. Hence copies of a point
    are no evidence for it, and a point valued against a reference set that contains it gets the
    same answer as a copy of it would.

    Args:
        ref_x: Reference features, ``(R, d)``.
        ref_y: Reference labels, ``(R,)``.
        x: Query features, ``(n, d)``.
        y: Query labels, ``(n,)``.
        n_neighbors: Neighbourhood size (capped at the number of distinct reference points - 1).
        chunk: Queries per distance block (bounds memory at ``chunk * R``).

    Returns:
        Agreement in [0, 1], shape ``(n,)``.

    Example:
        >>> ref = torch.tensor([[0.0], [0.1], [0.2], [5.0]])
        >>> neighbour_agreement(ref, torch.tensor([0, 0, 1, 1]), ref[:1], torch.tensor([0]), 2).tolist()
        [0.5]
    """
    joint = torch.cat([ref_x.double(), ref_y.double()[:, None]], dim=1)
    uniq = torch.unique(joint, dim=0)
    ux, uy = uniq[:, :-1], uniq[:, -1].long()
    k = min(n_neighbors, uniq.shape[0] - 1)
    if k < 1:
        raise ValueError("the intrinsic term needs at least 2 distinct training points.")
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for start in range(0, x.shape[0], chunk):
        q = x[start : start + chunk].double()
        # exact distances (no matrix-product shortcut) so identical points give exactly 0
        d = torch.cdist(q, ux, compute_mode="donot_use_mm_for_euclid_dist")
        d = d.masked_fill(d == 0, float("inf"))
        dist, nn_idx = torch.topk(d, k, dim=1, largest=False)
        same = (uy[nn_idx] == y[start : start + chunk, None].long()) & torch.isfinite(dist)
        valid = torch.isfinite(dist).sum(1).clamp_min(1)
        out[start : start + chunk] = same.sum(1) / valid
    return out


# --------------------------------------------------------------------------------------------
# EcoVal
# --------------------------------------------------------------------------------------------
def _as_tensor(a: Any, dtype: torch.dtype | None = None) -> Tensor:
    t = a.detach().cpu() if isinstance(a, Tensor) else torch.as_tensor(np.asarray(a))
    return t if dtype is None else t.to(dtype)


class EcoVal:
    """Cluster-level data valuation with a Cobb-Douglas production function (EcoVal reading).

    See the module docstring for the method and which parts are the project's own design.

    Args:
        n_clusters: Total number of clusters (shared among classes in proportion to their sizes
            when ``per_class``). Default: ``max(num_classes, round(N / 20))``, about 20 points each.
        per_class: Cluster each class separately (clusters are then label-pure).
        features: Optional function mapping a batch of inputs (a tensor) to embeddings
            ``(n, d)``; clusters, neighbourhoods and the built-in model use the embeddings.
        utility_model: ``"logistic"`` (built-in, all subsets trained as one batched tensor
            program) or a zero-argument factory returning a fresh ``LightningModule``; that module
            is trained on each subset with a ``lightning.Trainer`` (batches ``(row, x, y)`` from
            the RAW inputs; its ``forward(x)`` must return class logits).
        utility: ``"accuracy"`` (validation accuracy) or ``"log_likelihood"``
            (``U = exp(-validation cross-entropy)``).
        n_subsets: Number of trainings (the first on the full data). Default:
            ``max(200, 10 * n_clusters)`` for the built-in model, ``2 * n_clusters + 1`` otherwise.
        fraction_range: Range of the per-cluster fraction kept in each subset.
        n_neighbors: Neighbourhood size of the intrinsic term.
        extrinsic_weight: Weight of a non-negative normalised extrinsic score in the total value.
        harm_weight: Weight of a negative one (a harmful cluster).
        ridge: Ridge penalty of the production-function fit.
        steps: Full-batch steps of the built-in model.
        l2: L2 penalty of the built-in model.
        subset_batch: Subsets trained together in one tensor program (memory is about
            ``subset_batch * N * C`` floats). Default: as many as fit in 16M floats (64 MB).
        device: Device of the built-in model's trainings (e.g. ``"cuda"``).
        trainer_kwargs: Extra ``lightning.Trainer`` arguments for a LightningModule utility model
            (defaults: ``max_epochs=10``, CPU, one device, no logger, checkpoints or progress bar).
        batch_size: Batch size of the LightningModule trainings.
        seed: Seed of k-means, the subsets and the trainings.
        shrink: Shrink the elasticities towards 0 by their standard errors before valuing.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = np.concatenate([rng.normal(-2, 1, (60, 2)), rng.normal(2, 1, (60, 2))]).astype("float32")
        >>> y = np.repeat([0, 1], 60)
        >>> y[:10] = 1  # a group of flipped labels
        >>> eco = EcoVal(n_clusters=6, n_subsets=60, steps=50)
        >>> dv = eco.fit(x, y, x[::3], np.repeat([0, 1], 60)[::3])
        >>> bool(dv.values[:10].mean() < dv.values[10:].mean())
        True
        >>> new = eco.value(x[:2], y[:2])  # unseen points: no retraining
        >>> len(new), sorted(dv.columns)
        (2, ['cluster', 'extrinsic', 'intrinsic'])
    """

    def __init__(
        self,
        n_clusters: int | None = None,
        per_class: bool = True,
        features: Callable[[Tensor], Tensor] | None = None,
        utility_model: str | Callable[[], pl.LightningModule] = "logistic",
        utility: str = "accuracy",
        n_subsets: int | None = None,
        fraction_range: tuple[float, float] = (0.2, 1.0),
        n_neighbors: int = 10,
        extrinsic_weight: float = 0.1,
        harm_weight: float = 0.3,
        ridge: float = 1e-3,
        steps: int = 200,
        l2: float = 1e-3,
        subset_batch: int | None = None,
        device: str | torch.device = "cpu",
        trainer_kwargs: dict[str, Any] | None = None,
        batch_size: int = 32,
        seed: int = 0,
        shrink: bool = True,
    ) -> None:
        if n_clusters is not None and n_clusters < 1:
            raise ValueError(f"`n_clusters` must be a positive integer or None; got {n_clusters}.")
        if features is not None and not callable(features):
            raise TypeError(
                f"`features` must be a function of the inputs or None; got {type(features).__name__}."
            )
        if isinstance(utility_model, str):
            if utility_model != "logistic":
                raise ValueError(
                    f"`utility_model` must be 'logistic' or a factory returning a LightningModule; "
                    f"got {utility_model!r}."
                )
        elif not callable(utility_model):
            raise TypeError(
                "`utility_model` must be 'logistic' or a zero-argument factory returning a fresh "
                f"LightningModule; got {type(utility_model).__name__}. "
                "Pass the class or a lambda, not an instance."
            )
        elif isinstance(utility_model, pl.LightningModule):
            raise TypeError(
                "`utility_model` got a LightningModule instance; pass a factory (e.g. the class or "
                "`lambda: MyModule()`) so every subset trains a fresh model."
            )
        if utility not in UTILITIES:
            raise ValueError(f"`utility` must be one of {UTILITIES}; got {utility!r}.")
        if n_subsets is not None and n_subsets < 2:
            raise ValueError(
                f"`n_subsets` must be >= 2 (the full data and at least one subset); got {n_subsets}."
            )
        lo, hi = fraction_range
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"`fraction_range` must satisfy 0 < low <= high <= 1; got {fraction_range}.")
        if n_neighbors < 1:
            raise ValueError(f"`n_neighbors` must be >= 1; got {n_neighbors}.")
        if extrinsic_weight < 0 or harm_weight < 0:
            raise ValueError(
                f"`extrinsic_weight` and `harm_weight` must be >= 0; got {extrinsic_weight}, {harm_weight}."
            )
        if ridge < 0 or l2 < 0:
            raise ValueError(f"`ridge` and `l2` must be >= 0; got ridge={ridge}, l2={l2}.")
        if steps < 1 or (subset_batch is not None and subset_batch < 1) or batch_size < 1:
            raise ValueError("`steps`, `subset_batch` and `batch_size` must be >= 1.")
        self.n_clusters = n_clusters
        self.per_class = per_class
        self.features = features
        self.utility_model = utility_model
        self.utility = utility
        self.n_subsets = n_subsets
        self.fraction_range = (float(lo), float(hi))
        self.n_neighbors = n_neighbors
        self.extrinsic_weight = float(extrinsic_weight)
        self.harm_weight = float(harm_weight)
        self.ridge = float(ridge)
        self.steps = steps
        self.l2 = float(l2)
        self.subset_batch = subset_batch
        self.device = device
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.batch_size = batch_size
        self.seed = seed
        self.shrink = shrink
        # fitted state
        self.centroids: np.ndarray | None = None
        self.centroid_class: np.ndarray | None = None
        self.cluster_sizes: np.ndarray | None = None
        self.production: ProductionFit | None = None
        self.cluster_extrinsic: np.ndarray | None = None
        self.cluster_score: np.ndarray | None = None
        self.num_classes: int | None = None
        self._ref_x: Tensor | None = None
        self._ref_y: Tensor | None = None

    # -- inputs ---------------------------------------------------------------------------------
    def _embed(self, x: Any, name: str) -> Tensor:
        t = _as_tensor(x)
        if self.features is not None:
            with torch.no_grad():
                t = _as_tensor(self.features(t.float()))
            if t.ndim != 2 or t.shape[0] != len(x):
                raise ValueError(
                    f"`features` must map {len(x)} rows of `{name}` to an (n, d) tensor; "
                    f"got shape {tuple(t.shape)}."
                )
        if t.ndim < 2:
            raise ValueError(
                f"`{name}` must have one row per point, shape (n, d) or (n, ...); got {tuple(t.shape)}."
            )
        t = t.reshape(t.shape[0], -1).float()
        if not torch.isfinite(t).all():
            raise ValueError(f"`{name}` (or its embedding) holds NaN or infinite entries.")
        return t

    def _labels(self, y: Any, n: int, name: str, num_classes: int | None = None) -> Tensor:
        t = _as_tensor(y)
        if t.is_floating_point() and not torch.equal(t, t.round()):
            raise ValueError(
                f"`{name}` must hold integer class labels; EcoVal values classification data only."
            )
        t = t.reshape(-1).long()
        if t.shape[0] != n:
            raise ValueError(f"`{name}` has {t.shape[0]} labels for {n} rows; give one label per row.")
        if t.numel() and t.min() < 0:
            raise ValueError(f"`{name}` holds negative labels; use class ids 0..C-1.")
        if num_classes is not None and t.numel() and t.max() >= num_classes:
            raise ValueError(
                f"`{name}` holds class {int(t.max())} but the training labels have {num_classes} "
                f"classes (0..{num_classes - 1})."
            )
        return t

    # -- clustering -----------------------------------------------------------------------------
    def _cluster(self, feats: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
        from sklearn.cluster import KMeans

        n = feats.shape[0]
        total = self.n_clusters or max(num_classes, round(n / 20))
        groups = [np.flatnonzero(y == c) for c in range(num_classes)] if self.per_class else [np.arange(n)]
        groups = [g for g in groups if g.size]
        cluster = np.empty(n, dtype=np.int64)
        centroids, centroid_class = [], []
        for g in groups:
            k = total if not self.per_class else max(1, round(total * g.size / n))
            k = min(k, g.size)
            if k == 1:
                labels, centers = np.zeros(g.size, dtype=np.int64), feats[g].mean(0, keepdims=True)
            else:
                km = KMeans(n_clusters=k, n_init=3, random_state=self.seed).fit(feats[g].astype(np.float64))
                labels, centers = km.labels_.astype(np.int64), km.cluster_centers_
            # k-means may leave a cluster empty on degenerate data (duplicates): renumber the used ones
            used, labels = np.unique(labels, return_inverse=True)
            cluster[g] = labels + len(centroids)
            for j in used:
                centroids.append(centers[j])
                centroid_class.append(int(y[g[0]]) if self.per_class else -1)
        self.centroids = np.stack(centroids)
        self.centroid_class = np.asarray(centroid_class)
        return cluster

    def _nearest_centroid(self, feats: np.ndarray, y: np.ndarray) -> np.ndarray:
        k, dim = self.centroids.shape
        step = max(1, (1 << 24) // (k * dim))  # rows per block: bounds the (rows, K, d) differences
        out = np.empty(feats.shape[0], dtype=np.int64)
        for start in range(0, feats.shape[0], step):
            block = feats[start : start + step].astype(np.float64)
            d = ((block[:, None, :] - self.centroids[None]) ** 2).sum(-1)
            if self.per_class:
                d = np.where(self.centroid_class[None, :] == y[start : start + step, None], d, np.inf)
            out[start : start + step] = np.argmin(d, axis=1)
        return out

    # -- trainings ------------------------------------------------------------------------------
    def _log_utilities(
        self,
        x_raw: Tensor,
        x_feat: Tensor,
        y: Tensor,
        masks: np.ndarray,
        xv_raw: Tensor,
        xv_feat: Tensor,
        yv: Tensor,
    ) -> np.ndarray:
        if not isinstance(self.utility_model, str):
            return _train_lightning(
                self.utility_model,
                x_raw,
                y,
                masks,
                xv_raw,
                yv,
                self.utility,
                self.trainer_kwargs,
                self.batch_size,
                self.seed,
            )
        device = torch.device(self.device)
        x_d, y_d, xv_d, yv_d = (t.to(device) for t in (x_feat, y, xv_feat, yv))
        # the (subsets, N, C) probabilities dominate memory: cap them at ~16M floats per block
        batch = self.subset_batch or max(1, (1 << 24) // (x_d.shape[0] * self.num_classes))
        out = []
        m_all = torch.from_numpy(masks)
        for start in range(0, masks.shape[0], batch):
            m = m_all[start : start + batch].to(device)
            w = train_softmax_batched(x_d, y_d, m, self.num_classes, self.steps, self.l2)
            out.append(softmax_log_utility(w, xv_d, yv_d, self.utility).cpu().numpy())
            log.info(
                "EcoVal: trained %d/%d subset models", min(start + batch, masks.shape[0]), masks.shape[0]
            )
        return np.concatenate(out)

    def _weighted_score(self) -> np.ndarray:
        """``w * e_k`` per cluster: ``harm_weight`` for harmful clusters, ``extrinsic_weight`` otherwise."""
        e = self.cluster_score
        return np.where(e < 0, self.harm_weight, self.extrinsic_weight) * e

    # -- public API -----------------------------------------------------------------------------
    def fit(self, x: Any, y: Any, x_valid: Any, y_valid: Any) -> DataValues:
        """Cluster the training data, train on subsets, fit the production function, value every row.

        Args:
            x: Training inputs, ``(N, ...)`` array or tensor.
            y: Training class labels, ``(N,)``.
            x_valid: Validation inputs (same kind as ``x``); the utility is measured here.
            y_valid: Validation labels.

        Returns:
            :class:`DataValues` (method ``"ecoval"``) with columns ``cluster``, ``intrinsic``,
            ``extrinsic`` and metadata ``n_trainings``, ``wall_time_s``, the elasticities, the fit's
            ``r2`` and ``utility_full``.
        """
        t0 = time.perf_counter()
        if len(x) < 2:
            raise ValueError(f"`x` needs at least 2 rows to value; got {len(x)}.")
        if len(x_valid) < 1:
            raise ValueError("`x_valid` is empty; the utility is measured on the validation set.")
        x_raw, xv_raw = _as_tensor(x).float(), _as_tensor(x_valid).float()
        x_feat, xv_feat = self._embed(x, "x"), self._embed(x_valid, "x_valid")
        if x_feat.shape[1] != xv_feat.shape[1]:
            raise ValueError(
                f"`x` has {x_feat.shape[1]} features but `x_valid` has {xv_feat.shape[1]}; they must match."
            )
        n = x_feat.shape[0]
        y_t = self._labels(y, n, "y")
        self.num_classes = int(y_t.max()) + 1
        yv_t = self._labels(y_valid, xv_feat.shape[0], "y_valid", self.num_classes)
        if self.num_classes < 2:
            raise ValueError("`y` holds a single class; valuation needs at least 2 classes.")
        feats = x_feat.double().numpy()
        y_np = y_t.numpy()

        cluster = self._cluster(feats, y_np, self.num_classes)
        k_total = self.centroids.shape[0]
        self.cluster_sizes = np.bincount(cluster, minlength=k_total)
        default_s = max(200, 10 * k_total) if isinstance(self.utility_model, str) else 2 * k_total + 1
        n_subsets = self.n_subsets or default_s
        log.info("EcoVal: %d rows in %d clusters; %d trainings", n, k_total, n_subsets)
        masks, counts = sample_subsets(cluster, n_subsets, self.fraction_range, self.seed)

        t_train = time.perf_counter()
        log_u = self._log_utilities(x_raw, x_feat, y_t, masks, xv_raw, xv_feat, yv_t)
        t_train = time.perf_counter() - t_train
        self.production = fit_cobb_douglas(counts, log_u, self.ridge)
        alpha = self.production.shrunk_alpha() if self.shrink else self.production.alpha
        full_utility = math.exp(float(self.production.log_utility(self.cluster_sizes)))
        self.cluster_extrinsic = alpha * full_utility / self.cluster_sizes
        abs_total = float(np.abs(self.production.alpha).sum())
        share = alpha / abs_total if abs_total > 0 else np.zeros(k_total)
        self.cluster_score = share / (self.cluster_sizes / n)

        self._ref_x, self._ref_y = x_feat, y_t
        intrinsic = neighbour_agreement(x_feat, y_t, x_feat, y_t, self.n_neighbors).numpy()
        wall = time.perf_counter() - t0
        log.info("EcoVal: done in %.1f s (trainings %.1f s, fit R^2 %.3f)", wall, t_train, self.production.r2)
        return self._result(
            cluster,
            intrinsic,
            {
                "n_trainings": int(n_subsets),
                "wall_time_s": wall,
                "training_time_s": t_train,
                "n_clusters": int(k_total),
                "cluster_sizes": self.cluster_sizes.tolist(),
                "elasticities": self.production.alpha.tolist(),
                "log_a": self.production.log_a,
                "r2": self.production.r2,
                "returns_to_scale": float(self.production.alpha.sum()),
                "utility": self.utility,
                "utility_full": float(math.exp(log_u[0])),
                "utility_model": self.utility_model if isinstance(self.utility_model, str) else "lightning",
            },
        )

    def _result(self, cluster: np.ndarray, intrinsic: np.ndarray, metadata: dict[str, Any]) -> DataValues:
        """Total value = intrinsic + weighted cluster score, with the parts as columns."""
        return DataValues(
            values=intrinsic + self._weighted_score()[cluster],
            method="ecoval",
            columns={
                "cluster": cluster,
                "intrinsic": intrinsic,
                "extrinsic": self.cluster_extrinsic[cluster],
            },
            metadata=metadata,
        )

    def value(self, x: Any, y: Any) -> DataValues:
        """Value points never seen in training, with no retraining.

        Each point joins its nearest centroid (among its class's clusters when ``per_class``), takes
        that cluster's extrinsic value, and its intrinsic value from its neighbourhood in the
        training set. A copy of a training point gets exactly that point's in-sample value unless
        k-means left the point outside its nearest centroid's cluster.

        Args:
            x: New inputs (raw, like ``fit``'s ``x``; ``features`` is applied).
            y: Their labels.

        Returns:
            :class:`DataValues` (rows ``0..n-1`` of ``x``), same columns as :meth:`fit`.
        """
        if self.production is None:
            raise RuntimeError("call `fit(x, y, x_valid, y_valid)` before valuing new points with `value`.")
        feats = self._embed(x, "x")
        if feats.shape[1] != self._ref_x.shape[1]:
            raise ValueError(
                f"`x` has {feats.shape[1]} features; the training data had {self._ref_x.shape[1]}."
            )
        y_t = self._labels(y, feats.shape[0], "y", self.num_classes)
        y_np = y_t.numpy()
        if self.per_class:
            missing = np.setdiff1d(np.unique(y_np), self.centroid_class)
            if missing.size:
                raise ValueError(
                    f"classes {missing.tolist()} had no training rows, so they have no clusters to join."
                )
        cluster = self._nearest_centroid(feats.double().numpy(), y_np)
        intrinsic = neighbour_agreement(self._ref_x, self._ref_y, feats, y_t, self.n_neighbors).numpy()
        return self._result(cluster, intrinsic, {"out_of_sample": True, "n_trainings": 0})


# --------------------------------------------------------------------------------------------
# Logging, export and a callback
# --------------------------------------------------------------------------------------------
def log_and_export(
    trainer: pl.Trainer,
    values: DataValues,
    path: str | os.PathLike | None = None,
    prefix: str = "data_values/ecoval",
    noisy: Any = None,
    step: int = 0,
) -> dict[str, float]:
    """Log EcoVal values like the other methods (histogram, summary scalars) and export them.

    Args:
        trainer: A trainer whose loggers receive the histogram and scalars.
        values: The values from :meth:`EcoVal.fit`.
        path: Optional export path (.csv / .parquet / .npz) with columns ``cluster``, ``intrinsic``,
            ``extrinsic``.
        prefix: Tag prefix.
        noisy: Optional known-noisy rows (indices or mask) for detection F1 / AUROC.
        step: Step recorded with the data.

    Returns:
        The logged scalars (empty on non-zero ranks).
    """
    order = values.sorted_by_row()
    num_rows = int(order.index.max()) + 1 if len(order) else 0
    full = torch.full((num_rows,), float("nan"), dtype=torch.float64)
    full[torch.from_numpy(order.index)] = torch.from_numpy(order.values)
    if torch.isnan(full).any():
        raise ValueError("`values` must cover rows 0..N-1 to be logged; some rows are missing.")
    scalars = log_values(trainer, full, step=step, prefix=prefix, noisy=as_noisy_mask(noisy, num_rows))
    if path is not None:
        export_values(trainer, values, path)
    return scalars or {}


class EcoValValuation(pl.Callback):
    """Run :class:`EcoVal` on the training data when training starts; log and export the values.

    It runs in ``on_train_start``, the first hook where the trainer has built the train dataloader
    (in ``on_fit_start`` it does not exist yet); the values are ready before the first step.

    Reads every batch of the train dataloader once (batches ``(row, x, y)`` as produced by
    :class:`~lightning_dv.IndexedDataset`), gathers the rows across ranks, values them with the
    built-in batched model (every rank computes the same deterministic result), then logs a
    histogram and scalars through the trainer's loggers and exports from rank zero.

    Args:
        ecoval: A configured :class:`EcoVal` with the built-in ``"logistic"`` utility model (a
            nested Lightning ``Trainer`` inside a running fit is not supported).
        validation: ``(x_valid, y_valid)`` on which the utility is measured.
        export_path: Optional .csv / .parquet / .npz path.
        known_noisy: Optional known-noisy rows for detection F1 / AUROC in the logs.
        prefix: Tag prefix of the logged data.

    Example:
        >>> cb = EcoValValuation(EcoVal(n_subsets=50), validation=(np.zeros((4, 2)), np.array([0, 1, 0, 1])))
        >>> cb.values is None
        True
    """

    def __init__(
        self,
        ecoval: EcoVal,
        validation: tuple[Any, Any],
        export_path: str | None = None,
        known_noisy: Any = None,
        prefix: str = "data_values/ecoval",
    ) -> None:
        if not isinstance(ecoval, EcoVal):
            raise TypeError(f"`ecoval` must be an EcoVal instance; got {type(ecoval).__name__}.")
        if not isinstance(ecoval.utility_model, str):
            raise ValueError(
                "EcoValValuation runs inside a Trainer and supports the built-in 'logistic' utility "
                "model only; "
                "call EcoVal(...).fit(...) outside training to use a LightningModule factory."
            )
        if not (isinstance(validation, (tuple, list)) and len(validation) == 2):
            raise TypeError("`validation` must be a pair (x_valid, y_valid).")
        self.ecoval = ecoval
        self.validation = validation
        self.export_path = export_path
        self.known_noisy = known_noisy
        self.prefix = prefix
        self.values: DataValues | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        data = collect_training_rows(trainer, pl_module, dtype=torch.float32, caller="EcoValValuation")
        if not data.complete:
            raise ValueError(
                "the train dataloader did not yield every row 0..N-1 once; EcoVal values a full dataset."
            )
        x_all, y_all = data.features.cpu(), data.labels.cpu().long()
        self.values = self.ecoval.fit(x_all, y_all, *self.validation)
        log_and_export(
            trainer, self.values, self.export_path, self.prefix, self.known_noisy, trainer.current_epoch
        )
