"""The EcoVal estimator: clusters, trainings, production function, values in and out of sample."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from lightning_dv.methods.ecoval.clustering import cluster_rows, nearest_centroid
from lightning_dv.methods.ecoval.neighbours import neighbour_agreement
from lightning_dv.methods.ecoval.production import ProductionFit, fit_cobb_douglas, sample_subsets
from lightning_dv.methods.ecoval.training import softmax_log_utility, train_lightning, train_softmax_batched
from lightning_dv.progress import Progress
from lightning_dv.values import DataValues

log = logging.getLogger("lightning_dv.methods.ecoval")

UTILITIES = ("accuracy", "log_likelihood")


def _as_tensor(a: Any, dtype: torch.dtype | None = None) -> Tensor:
    t = a.detach().cpu() if isinstance(a, Tensor) else torch.as_tensor(np.asarray(a))
    return t if dtype is None else t.to(dtype)


class EcoVal:
    """Cluster-level data valuation with a Cobb-Douglas production function (EcoVal reading).

    See :mod:`lightning_dv.methods.ecoval` for the formula and ``docs/ecoval.md`` for which parts are
    the project's own design and how the defaults were chosen.

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
        progress: Show a k/N bar over the trainings on rank zero (the built-in model's after two
            seconds; nested Lightning fits print no banners either way).

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
        progress: bool = True,
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
        self.progress = progress
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
        if t.ndim >= 1 and t.shape[0] == 0:
            raise ValueError(f"`{name}` has no rows: pass at least one point to value.")
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
            return train_lightning(
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
                self.progress,
            )
        device = torch.device(self.device)
        x_d, y_d, xv_d, yv_d = (t.to(device) for t in (x_feat, y, xv_feat, yv))
        # the (subsets, N, C) probabilities dominate memory: cap them at ~16M floats per block
        batch = self.subset_batch or max(1, (1 << 24) // (x_d.shape[0] * self.num_classes))
        out = []
        m_all = torch.from_numpy(masks)
        with Progress(self.progress, masks.shape[0], "EcoVal trainings", delay=2.0) as bar:
            for start in range(0, masks.shape[0], batch):
                m = m_all[start : start + batch].to(device)
                w = train_softmax_batched(x_d, y_d, m, self.num_classes, self.steps, self.l2)
                out.append(softmax_log_utility(w, xv_d, yv_d, self.utility).cpu().numpy())
                log.info(
                    "EcoVal: trained %d/%d subset models", min(start + batch, masks.shape[0]), masks.shape[0]
                )
                bar.update(n=m.shape[0])
        return np.concatenate(out)

    def _weighted_score(self) -> np.ndarray:
        """``w * e_k`` per cluster: ``harm_weight`` for harmful clusters, ``extrinsic_weight`` otherwise."""
        e = self.cluster_score
        return np.where(e < 0, self.harm_weight, self.extrinsic_weight) * e

    # -- public API -----------------------------------------------------------------------------
    name = "ecoval"

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

        cluster, self.centroids, self.centroid_class = cluster_rows(
            feats, y_np, self.num_classes, self.n_clusters, self.per_class, self.seed
        )
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
        cluster = nearest_centroid(
            feats.double().numpy(), y_np, self.centroids, self.centroid_class, self.per_class
        )
        intrinsic = neighbour_agreement(self._ref_x, self._ref_y, feats, y_t, self.n_neighbors).numpy()
        return self._result(cluster, intrinsic, {"out_of_sample": True, "n_trainings": 0})
