"""A mixture's second opinion, and the choice between it and the forest by how well each predicts the labels.

Mixture discriminant analysis (Hastie & Tibshirani, "Discriminant analysis by Gaussian mixtures",
JRSS-B 1996) models each class as a Gaussian mixture on the standardised features (full
covariances, 1-3 components chosen by BIC, ``reg_covar`` 1e-3) and predicts by Bayes' rule with
the classes' shares as priors. It is cross-fitted over 5 folds, so every row is scored by
mixtures that never saw it::

    p(k | x_i) ∝ pi_k * sum_m w_km N(x_i; mu_km, Sigma_km)      (fitted without row i's fold)
    g_i = p(y_i | x_i) - max_{k != y_i} p(k | x_i)

Which opinion AUM gets (:func:`select_opinion`): the one that misclassifies fewer of the rows'
own labels out of sample, ``e = mean_i [argmax_k p_k(i) != y_i]`` (ties: the forest). Why: when a
share ``eta`` of the labels is flipped uniformly at random, the error on the given labels is
``eta + (1 - eta K / (K - 1)) * clean error`` for ``K`` classes, an increasing function of the
error on the clean labels while ``eta < (K - 1) / K``, so the opinion that fits the given labels
better also models the clean structure better, whatever ``eta``. On the selection seeds it kept
the forest on every real dataset and took the mixture where classes are clusters; ranking by
Brier score or log-loss instead chose the forest on make_classification at 20% noise and lost
there (benchmarks/README.md, section 2g).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = np.r_[rng.normal(-2, 1, (100, 2)), rng.normal(2, 1, (100, 2))]
    >>> y = np.r_[np.zeros(100, int), np.ones(100, int)]; y[0] = 1  # row 0 sits among class 0
    >>> g = mixture_margins(x, y)
    >>> bool(g[0] < 0 < np.median(g[1:]))
    True
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from lightning_dv.methods.aum.combine import label_margins

__all__ = [
    "MIXTURE_COMPONENTS",
    "MIXTURE_MAX_FEATURES",
    "error_rate",
    "mixture_margins",
    "mixture_proba",
    "select_opinion",
]

#: Most Gaussian components per class (BIC picks 1 to this many).
MIXTURE_COMPONENTS = 3
#: Above this many features the mixture's full covariances cost too much; the forest is used alone.
MIXTURE_MAX_FEATURES = 100
#: Rows each fold's mixtures are fitted on when the data has more (bounds the cost; all rows are scored).
MIXTURE_MAX_ROWS = 100_000


def mixture_proba(
    features: np.ndarray,
    labels: np.ndarray,
    folds: int = 5,
    seed: int = 0,
    max_components: int = MIXTURE_COMPONENTS,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Cross-fitted class probabilities of mixture discriminant analysis: ``(proba, classes)``.

    Args:
        features: ``(N, d)`` numbers, ``d <= MIXTURE_MAX_FEATURES``.
        labels: ``(N,)`` class labels (any sortable type).
        folds: Folds; each row is scored by the mixtures fitted on the other folds.
        seed: Seed of the folds, the subsample above ``MIXTURE_MAX_ROWS`` and the mixtures' starts.
        max_components: Most components per class (BIC picks among 1..max_components).
        progress: Print a line when the fitting starts (rows, folds) and when it is done (seconds).

    Returns:
        ``(N, K)`` float64 probabilities whose columns follow ``classes`` (the sorted labels).

    Example:
        >>> from sklearn.datasets import load_iris
        >>> x, y = load_iris(return_X_y=True)
        >>> p, classes = mixture_proba(x, y)
        >>> p.shape, bool((p.argmax(1) == y).mean() > 0.9)
        ((150, 3), True)
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    x = np.asarray(features, dtype=np.float64)
    classes, codes = np.unique(np.asarray(labels), return_inverse=True)
    if x.ndim != 2 or len(x) != len(codes):
        raise ValueError(
            f"`features` must be (N, d) with one row per label: got shape {x.shape} for {len(codes)} labels."
        )
    if x.shape[1] > MIXTURE_MAX_FEATURES:
        raise ValueError(
            f"{x.shape[1]} features: a mixture with full covariances needs <= {MIXTURE_MAX_FEATURES}; "
            "use the forest's opinion (with_forest's default) or reduce the features first."
        )
    if not np.isfinite(x).all():
        raise ValueError("`features` hold NaN or infinite values; impute or drop them first.")
    start = time.perf_counter()
    if progress:
        print(f"mixture: fitting class mixtures on {len(x):,} rows, {folds} folds ...", flush=True)
    rng = np.random.default_rng(seed)
    stratified = np.bincount(codes).min() >= folds
    splitter = (StratifiedKFold if stratified else KFold)(folds, shuffle=True, random_state=seed)
    proba = np.zeros((len(x), len(classes)))
    for fit_rows, score_rows in splitter.split(x, codes):
        if len(fit_rows) > MIXTURE_MAX_ROWS:
            fit_rows = rng.choice(fit_rows, MIXTURE_MAX_ROWS, replace=False)
        proba[score_rows] = _fold_proba(
            x[fit_rows], codes[fit_rows], x[score_rows], len(classes), seed, max_components
        )
    if progress:
        print(f"mixture: done in {time.perf_counter() - start:.1f} s", flush=True)
    return proba, classes


def _fold_proba(x_fit, codes, x_score, num_classes, seed, max_components) -> np.ndarray:
    """Bayes' rule over one Gaussian mixture per class (BIC-chosen size), fitted on standardised ``x_fit``."""
    from scipy.special import logsumexp
    from sklearn.mixture import GaussianMixture
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_fit)
    z_fit, z_score = scaler.transform(x_fit), scaler.transform(x_score)
    log_joint = np.full((len(x_score), num_classes), -np.inf)
    for k in range(num_classes):
        rows = z_fit[codes == k]
        best = None
        for m in range(1, max_components + 1):
            if len(rows) < max(2, 5 * m):  # too few rows for m components
                break
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning)  # ConvergenceWarning subclasses it
                gm = GaussianMixture(m, covariance_type="full", reg_covar=1e-3, random_state=seed).fit(rows)
            bic = gm.bic(rows)
            if best is None or bic < best[0]:
                best = (bic, gm)
        if best is not None:
            log_joint[:, k] = best[1].score_samples(z_score) + np.log(len(rows) / len(z_fit))
    if not np.isfinite(log_joint).any(1).all():  # no class had rows enough in this fold
        return np.full((len(x_score), num_classes), 1.0 / num_classes)
    return np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))


def mixture_margins(
    features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0, progress: bool = False
) -> np.ndarray:
    """Cross-fitted margin ``g_i = p(y_i | x_i) - max_{k != y_i} p(k | x_i)`` under :func:`mixture_proba`.

    Example:
        >>> from sklearn.datasets import load_iris
        >>> x, y = load_iris(return_X_y=True)
        >>> y[0] = 2  # a setosa labelled virginica
        >>> bool(mixture_margins(x, y)[0] < 0)
        True
    """
    proba, classes = mixture_proba(features, labels, folds, seed, progress=progress)
    return label_margins(proba, classes, labels)


def error_rate(proba: np.ndarray, classes: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose most probable class (the first on ties) is not their label.

    Example:
        >>> error_rate(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array(["a", "b"]), np.array(["a", "b"]))
        0.5
    """
    predicted = np.asarray(classes)[np.argmax(proba, axis=1)]
    return float(np.mean(predicted != np.asarray(labels)))


def select_opinion(
    features: np.ndarray,
    labels: np.ndarray,
    forest_proba: np.ndarray,
    classes: np.ndarray,
    scored: np.ndarray,
    seed: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray | None, dict[str, object]]:
    """The mixture's margins if they misclassify fewer of ``labels`` than the forest's, else None; and why.

    ``forest_proba`` / ``scored``: the forest's out-of-bag probabilities and the rows it scored.
    Both error rates are taken over the scored rows. Above ``MIXTURE_MAX_FEATURES`` features the
    mixture is not fitted and the forest is kept (the returned metadata says so).

    Returns:
        ``(mixture_margins or None, metadata)`` with ``opinion`` ("forest" or "mixture") and the
        two out-of-sample error rates on the labels (``forest_error``, ``mixture_error``).
    """
    y = np.asarray(labels)
    forest_error = error_rate(forest_proba[scored], classes, y[scored])
    if np.shape(features)[1] > MIXTURE_MAX_FEATURES:
        if progress:
            print(
                f"mixture: skipped ({np.shape(features)[1]} features > {MIXTURE_MAX_FEATURES}); the forest is used"
            )
        return None, {"opinion": "forest", "forest_error": forest_error, "mixture_error": float("nan")}
    proba, _ = mixture_proba(features, y, seed=seed, progress=progress)
    mixture_error = error_rate(proba[scored], classes, y[scored])
    chosen = "mixture" if mixture_error < forest_error else "forest"
    if progress:
        print(
            f"mixture: error on the labels: forest {forest_error:.4f}, mixture {mixture_error:.4f} "
            f"-> the {chosen}'s opinion",
            flush=True,
        )
    margins = label_margins(proba, classes, y) if chosen == "mixture" else None
    return margins, {"opinion": chosen, "forest_error": forest_error, "mixture_error": mixture_error}
