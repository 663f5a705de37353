"""Built-in baseline valuation methods the project's methods are compared against.

Every baseline takes plain arrays and returns :class:`~lightning_dv.DataValues` (HIGHER = MORE
VALUABLE, one value per training row, row ``i`` of the arrays is row ``i`` of the values):

- :func:`random_values`: uniform noise, the floor every method must beat.
- :func:`loss_only`: out-of-fold log-likelihood of the given label under a logistic regression
  (value = -cross-entropy), the simplest "the model disagrees with this label" signal.
- :func:`knn_shapley`: exact Shapley values of a K-nearest-neighbour classifier's utility on the
  validation set (Jia et al., "Efficient Task-Specific Data Valuation for Nearest Neighbor
  Algorithms", VLDB 2019, Theorem 1), in O(N log N) per validation point.
- :func:`data_oob`: Data-OOB (Kwon & Zou, "Data-OOB: Out-of-bag Estimate as a Simple and
  Efficient Data Value", ICML 2023): bag weak learners, value = mean out-of-bag correctness.
- :func:`forest_oob`: out-of-bag margin of the label under an extra-trees or random forest.
- :func:`cleanlab_label_quality`: cleanlab's label-quality score on out-of-fold probabilities,
  available when the optional ``cleanlab`` package is installed.
"""

from __future__ import annotations

import numpy as np

from lightning_dv.values import DataValues


class MethodUnavailable(RuntimeError):
    """A valuation method cannot run in this environment (missing optional package or module)."""


def _labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.mod(y, 1) == 0):
        raise ValueError("this baseline needs class labels; got continuous targets (regression).")
    return y.astype(np.int64)


def logistic_model(seed: int = 0, max_iter: int = 500):
    """The logistic regression every baseline and the removal curves retrain (L2, C=1, lbfgs)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=max_iter, random_state=seed)


def _fit_predict_proba(model, x_fit, y_fit, x_pred, num_classes: int) -> np.ndarray:
    """Class probabilities as an ``(n, num_classes)`` array, whatever classes the fit part holds."""
    classes = np.unique(y_fit)
    proba = np.zeros((len(x_pred), num_classes))
    if len(classes) == 1:  # a fold or bag with one class: that class with certainty
        proba[:, classes[0]] = 1.0
        return proba
    model.fit(x_fit, y_fit)
    proba[:, model.classes_] = model.predict_proba(x_pred)
    return proba


def out_of_fold_proba(
    x: np.ndarray, y: np.ndarray, num_classes: int | None = None, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Out-of-fold class probabilities of a logistic regression, one row per sample.

    Each row's probabilities come from a model that never saw that row, so a memorised wrong
    label cannot hide behind a confident in-sample prediction.

    Example:
        >>> x = np.r_[np.zeros((10, 1)), np.ones((10, 1))]; y = np.r_[np.zeros(10), np.ones(10)].astype(int)
        >>> p = out_of_fold_proba(x, y)
        >>> bool((p.argmax(1) == y).all())
        True
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    y = _labels(y)
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    folds = max(2, min(folds, len(y)))
    counts = np.bincount(y)
    stratify = counts[counts > 0].min() >= folds
    splitter = (StratifiedKFold if stratify else KFold)(n_splits=folds, shuffle=True, random_state=seed)
    proba = np.zeros((len(y), num_classes))
    for fit_rows, pred_rows in splitter.split(x, y):
        proba[pred_rows] = _fit_predict_proba(
            logistic_model(seed), x[fit_rows], y[fit_rows], x[pred_rows], num_classes
        )
    return proba


def random_values(num_rows: int, seed: int = 0) -> DataValues:
    """Uniform random values: detection F1 of about ``p / (p + 0.5)`` at noise rate ``p``.

    Example:
        >>> len(random_values(5, seed=1))
        5
    """
    rng = np.random.default_rng(seed)
    return DataValues(rng.random(num_rows), method="random", metadata={"seed": seed})


def loss_only(
    x: np.ndarray, y: np.ndarray, num_classes: int | None = None, folds: int = 5, seed: int = 0
) -> DataValues:
    """Value = out-of-fold log-likelihood of the row's label under a logistic regression (= -loss).

    Args:
        x: Training features ``(N, d)``.
        y: Training labels ``(N,)`` (possibly noisy).
        num_classes: Number of classes (defaults to ``max(y) + 1``).
        folds: Cross-fitting folds; every row is scored by a model trained without it.
        seed: Seed of the fold assignment.

    Example:
        >>> x = np.r_[np.zeros((10, 1)), np.ones((10, 1))]; y = np.r_[np.zeros(10), np.ones(10)].astype(int)
        >>> y[0] = 1  # a flipped label
        >>> int(loss_only(x, y).lowest(1).index[0])
        0
    """
    y = _labels(y)
    proba = out_of_fold_proba(x, y, num_classes, folds, seed)
    p_label = proba[np.arange(len(y)), y]
    return DataValues(
        np.log(np.clip(p_label, 1e-12, None)),
        method="loss_only",
        columns={"oof_proba_label": p_label},
        metadata={"folds": folds, "model": "logistic"},
    )


def knn_shapley(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    k: int = 10,
    chunk: int = 256,
) -> DataValues:
    """Exact KNN-Shapley values against a validation set (Jia et al., VLDB 2019, Theorem 1).

    The utility of a subset ``S`` for one validation point ``(v, y_v)`` is the KNN likelihood of
    the right label, ``U(S) = (1/K) * sum_{k <= min(K, |S|)} 1[y of the k-th nearest in S == y_v]``.
    Its Shapley values follow from one sort by distance (nearest first, ``a_1..a_N``)::

        s(a_N) = 1[y(a_N) == y_v] / N        (times min(K, N) / K: below K rows, U is additive)
        s(a_i) = s(a_{i+1}) + (1[y(a_i) == y_v] - 1[y(a_{i+1}) == y_v]) / K * min(K, i) / i

    and the value of a row is its mean over the validation points. Distances are Euclidean.

    Args:
        x_train, y_train: Training rows and labels.
        x_valid, y_valid: Validation rows and labels defining the utility.
        k: Number of neighbours ``K``.
        chunk: Validation points processed at once (bounds memory to ``chunk x N``).

    Example:
        >>> x = np.array([[0.0], [0.1], [5.0]]); y = np.array([0, 1, 0])
        >>> v = knn_shapley(x, y, np.array([[0.0]]), np.array([0]), k=1)
        >>> [round(float(a), 4) for a in v.values]
        [0.8333, -0.1667, 0.3333]
    """
    x_train = np.asarray(x_train, dtype=np.float64)
    x_valid = np.asarray(x_valid, dtype=np.float64)
    y_train, y_valid = _labels(y_train), _labels(y_valid)
    n = len(x_train)
    if k < 1:
        raise ValueError(f"`k` must be >= 1; got {k}.")
    if len(x_valid) == 0:
        raise ValueError("KNN-Shapley needs at least one validation row.")
    ranks = np.arange(1, n, dtype=np.float64)  # i = 1..N-1 (1-based position of a_i)
    step = np.minimum(k, ranks) / ranks / k
    total = np.zeros(n)
    train_sq = (x_train**2).sum(1)
    for start in range(0, len(x_valid), chunk):
        xv, yv = x_valid[start : start + chunk], y_valid[start : start + chunk]
        dist = (xv**2).sum(1)[:, None] - 2.0 * xv @ x_train.T + train_sq[None, :]
        order = np.argsort(dist, axis=1, kind="stable")
        match = (y_train[order] == yv[:, None]).astype(np.float64)  # (J, N), nearest first
        s = np.empty_like(match)
        s[:, -1] = match[:, -1] * min(k, n) / (n * k)  # = match / N whenever N >= K
        # s(a_i) = s(a_N) + sum_{t >= i} diff_t: a reversed cumulative sum of the increments.
        diff = (match[:, :-1] - match[:, 1:]) * step
        s[:, :-1] = s[:, -1:] + np.cumsum(diff[:, ::-1], axis=1)[:, ::-1]
        np.add.at(total, order.reshape(-1), s.reshape(-1))
    return DataValues(total / len(x_valid), method="knn_shapley", metadata={"k": k})


def data_oob(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int | None = None,
    n_estimators: int = 200,
    model: str = "logistic",
    seed: int = 0,
) -> DataValues:
    """Data-OOB: mean out-of-bag correctness over bootstrap-trained weak learners (Kwon & Zou, 2023).

    Each of ``n_estimators`` learners is fit on a bootstrap sample of the training rows; a row's
    value is the fraction of the learners that did NOT see it that predict its (possibly noisy)
    label correctly. A row that is in every bag (vanishingly rare) gets the mean value.

    Args:
        x, y: Training features and labels.
        num_classes: Number of classes (defaults to ``max(y) + 1``).
        n_estimators: Number of bootstrap learners.
        model: ``"logistic"`` (L2 logistic regression) or ``"tree"`` (depth-limited decision tree).
        seed: Seed of the bootstrap samples.

    Example:
        >>> x = np.r_[np.zeros((15, 1)), np.ones((15, 1))]; y = np.r_[np.zeros(15), np.ones(15)].astype(int)
        >>> y[0] = 1
        >>> dv = data_oob(x, y, n_estimators=20)
        >>> float(dv.values[0]), float(dv.values[1])
        (0.0, 1.0)
    """
    from sklearn.tree import DecisionTreeClassifier

    if model not in ("logistic", "tree"):
        raise ValueError(f"`model` must be 'logistic' or 'tree'; got {model!r}.")
    y = _labels(y)
    n = len(y)
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    rng = np.random.default_rng(seed)
    correct = np.zeros(n)
    seen_oob = np.zeros(n)
    for b in range(n_estimators):
        bag = rng.integers(0, n, size=n)
        oob = np.setdiff1d(np.arange(n), bag, assume_unique=False)
        if len(oob) == 0:
            continue
        learner = (
            logistic_model(seed + b)
            if model == "logistic"
            else DecisionTreeClassifier(max_depth=8, random_state=seed + b)
        )
        pred = _fit_predict_proba(learner, x[bag], y[bag], x[oob], num_classes).argmax(1)
        correct[oob] += pred == y[oob]
        seen_oob[oob] += 1
    values = np.divide(correct, seen_oob, out=np.full(n, np.nan), where=seen_oob > 0)
    values[np.isnan(values)] = np.nanmean(values) if np.any(seen_oob > 0) else 0.0
    return DataValues(
        values,
        method="data_oob",
        columns={"oob_count": seen_oob},
        metadata={"n_estimators": n_estimators, "model": model},
    )


def forest_oob(
    x: np.ndarray, y: np.ndarray, kind: str = "extra_trees", n_estimators: int = 300, seed: int = 0
) -> DataValues:
    """Value = out-of-bag margin of the label under a forest: ``p_y - max_{k != y} p_k``.

    ``p`` averages the class probabilities of the trees whose bootstrap sample left the row out,
    so no row is scored by a tree that saw it. ``kind="extra_trees"`` is the forest that
    ``aum_forest`` adds to AUM (:func:`lightning_dv.methods.aum.forest.forest_margins`), alone;
    ``"random_forest"`` is Breiman's random forest (scikit-learn defaults, bootstrap).

    Example:
        >>> x = np.r_[np.zeros((15, 1)), np.ones((15, 1))]; y = np.r_[np.zeros(15), np.ones(15)].astype(int)
        >>> y[0] = 1
        >>> int(forest_oob(x, y, n_estimators=30).lowest(1).index[0])
        0
    """
    from sklearn.ensemble import RandomForestClassifier

    from lightning_dv.methods.aum.forest import forest_margins, out_of_bag_margins

    y = _labels(y)
    if kind == "extra_trees":
        margin = forest_margins(x, y, n_estimators=n_estimators, seed=seed)
    elif kind == "random_forest":
        forest = RandomForestClassifier(n_estimators, oob_score=True, random_state=seed)
        margin = out_of_bag_margins(forest, np.asarray(x, dtype=np.float64), y)
    else:
        raise ValueError(f"`kind` must be 'extra_trees' or 'random_forest'; got {kind!r}.")
    return DataValues(margin, method=f"{kind}_oob", metadata={"trees": n_estimators, "model": kind})


def mixture_oof(x: np.ndarray, y: np.ndarray, seed: int = 0) -> DataValues:
    """Value = cross-fitted margin of the label under mixture discriminant analysis (5 folds).

    The mixture that ``aum_auto`` may add to AUM
    (:func:`lightning_dv.methods.aum.mixture.mixture_margins`), alone.

    Example:
        >>> x = np.r_[np.zeros((15, 1)), np.ones((15, 1))] + np.linspace(0, 0.1, 30)[:, None]
        >>> y = np.r_[np.zeros(15), np.ones(15)].astype(int); y[0] = 1
        >>> int(mixture_oof(x, y).lowest(1).index[0])
        0
    """
    from lightning_dv.methods.aum.mixture import mixture_margins

    return DataValues(mixture_margins(x, _labels(y), seed=seed), method="mixture_oof", metadata={"folds": 5})


def cleanlab_label_quality(
    x: np.ndarray, y: np.ndarray, num_classes: int | None = None, folds: int = 5, seed: int = 0
) -> DataValues:
    """cleanlab's label-quality score of every row (higher = label more likely right).

    Out-of-fold logistic-regression probabilities (as in :func:`loss_only`) go through
    ``cleanlab.rank.get_label_quality_scores`` with per-class threshold adjustment
    (``adjust_pred_probs=True``), the confident-learning correction for classes the model is
    systematically more or less sure about. Needs ``pip install cleanlab``.

    Raises:
        MethodUnavailable: When ``cleanlab`` is not installed.
    """
    try:
        from cleanlab.rank import get_label_quality_scores
    except ImportError as err:
        raise MethodUnavailable(
            "cleanlab is not installed; `pip install lightning-dv[cleanlab]` (or `pip install cleanlab`) to enable it."
        ) from err
    y = _labels(y)
    proba = out_of_fold_proba(x, y, num_classes, folds, seed)
    # cleanlab requires rows that sum to one; clip away exact zeros from classes missing in a fold.
    proba = np.clip(proba, 1e-9, None)
    proba /= proba.sum(1, keepdims=True)
    scores = get_label_quality_scores(y, proba, method="self_confidence", adjust_pred_probs=True)
    return DataValues(scores, method="cleanlab", metadata={"folds": folds, "model": "logistic"})
