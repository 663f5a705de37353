"""A forest's second opinion: AUM's margin combined with an extremely randomised forest's out-of-bag margin.

An extremely randomised forest (Geurts, Ernst, Wehenkel, "Extremely randomized trees", Machine
Learning 2006; every split draws one random threshold per feature and keeps the best of all
``d`` features, leaves hold at least 3 rows) is grown on bootstrap samples of the rows; each row
is scored only by the trees whose sample left it out (Breiman's out-of-bag estimate, "Random
Forests", 2001)::

    p(i) = mean over the trees t with i not in sample(t) of t's class probabilities at x_i
    f_i  = p_{y_i}(i) - max_{k != y_i} p_k(i)          (in [-1, 1]; 0 where no tree left i out)
    c_i  = a_i / s_a + w * f_i / s_f                   (a: AUM's margin, s: 1.4826 MAD, w = 0.5)
    value_i = calibrate(c)(i), flagged below AUM's gate

(:mod:`~lightning_dv.methods.aum.combine`). Why: the user's network and a forest on the raw
features make different mistakes, the forest cannot memorise a row it never saw, and its
axis-aligned random splits follow boundaries (curves, few informative features among many) that a
small network learns slowly within AUM's 10-epoch window. It needs the features, which the
``DataValuation`` callback does not keep (a few bytes per row), so it runs after the fit on the
rows the user holds (:func:`with_forest`) or inside ``valuate(..., method="aum", forest=True)``.
Measured on the selection seeds (benchmarks/README.md, section 2f): ahead of AUM alone, of the
forest alone and of AUM cross-fitted in every column; weight 0.5 and extra trees (not a random
forest or gradient boosting), all ``d`` features per split and leaves of >= 3 rows were chosen there.

Example:
    >>> import numpy as np
    >>> from sklearn.datasets import load_iris
    >>> x, y = load_iris(return_X_y=True)
    >>> y[:3] = 2  # three setosa rows labelled virginica
    >>> f = forest_margins(x, y, seed=0)
    >>> bool((f[:3] < 0).all()), bool(np.median(f[3:]) > 0.8)
    (True, True)
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from lightning_dv._validation import check_choice
from lightning_dv.methods.aum.combine import aum_margins_in_row_order, label_margins, with_second_opinion
from lightning_dv.methods.aum.mixture import select_opinion
from lightning_dv.methods.calibration import GATE_TOLERANCE
from lightning_dv.values import DataValues

__all__ = [
    "FOREST_MAX_FEATURES",
    "FOREST_MIN_LEAF",
    "FOREST_TREES",
    "FOREST_WEIGHT",
    "forest_margins",
    "out_of_bag_margins",
    "with_forest",
]

#: Weight of the forest's margin in the sum (chosen on the selection seeds among 0.25-2).
FOREST_WEIGHT = 0.5
#: Trees in the forest (a row is out of bag for about 37% of them: ~110 votes).
FOREST_TREES = 300
#: Share of the features each split considers (1.0: all; chosen on the selection seeds among sqrt(d), 0.5, 1).
FOREST_MAX_FEATURES = 1.0
#: Fewest rows in a leaf (chosen on the selection seeds among 1, 3, 5, 10).
FOREST_MIN_LEAF = 3
#: ``with_forest(opinion=...)``: the forest's margin, or the better predictor of the labels of it and a mixture.
OPINIONS = ("forest", "auto")
#: Rows drawn per tree when the data has more (bounds each tree's cost; every row stays out of bag for most trees).
FOREST_MAX_ROWS = 100_000


def forest_margins(
    features: np.ndarray,
    labels: np.ndarray,
    n_estimators: int = FOREST_TREES,
    seed: int = 0,
    max_samples: int | float | None = None,
    n_jobs: int | None = None,
    max_features: int | float | str | None = FOREST_MAX_FEATURES,
    min_samples_leaf: int = FOREST_MIN_LEAF,
    progress: bool = False,
) -> np.ndarray:
    """Out-of-bag margin ``f_i`` of every row's label under an extremely randomised forest.

    Args:
        features: ``(N, d)`` numbers.
        labels: ``(N,)`` class labels (any sortable type).
        n_estimators: Trees; each row is scored by the ~37% whose bootstrap sample left it out.
        seed: Seed of the bootstrap samples and the random splits.
        max_samples: Rows drawn per tree (scikit-learn's meaning: a count or a fraction). None:
            ``N``, capped at ``FOREST_MAX_ROWS`` (100,000) so that a tree's cost stops growing
            with the data; each row is then out of bag for even more of the trees.
        n_jobs: Parallel jobs for scikit-learn (None: one).
        max_features, min_samples_leaf: The trees' settings (scikit-learn's meaning).
        progress: Print a line when the forest starts (rows, trees) and when it is done (seconds):
            about 1 s at 10^3 rows, 1 min at 10^5, 3-4 min at 10^6 on one core (docs/valuate.md).

    Returns:
        ``(N,)`` float64 margins in ``[-1, 1]``: HIGHER = the forest agrees more with the label.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(200, 2)); y = (x[:, 0] > 0).astype(int); y[0] = 1 - y[0]
        >>> bool(forest_margins(x, y, n_estimators=50)[0] < 0)
        True
    """
    return _scored_margins(
        *_forest_proba(
            features,
            labels,
            n_estimators,
            seed,
            max_samples,
            n_jobs,
            max_features,
            min_samples_leaf,
            progress,
        ),
        labels,
    )


def _forest_proba(
    features, labels, n_estimators, seed, max_samples, n_jobs, max_features, min_samples_leaf, progress
):
    """Out-of-bag ``(proba, classes, scored)`` under the extra-trees forest of :func:`forest_margins`."""
    from sklearn.ensemble import ExtraTreesClassifier

    x = np.asarray(features, dtype=np.float32)  # what scikit-learn's trees split on: no float64 copy
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(
            f"`features` must be (N, d) with one row per label: got shape {x.shape} for {len(y)} labels."
        )
    if isinstance(n_estimators, bool) or not isinstance(n_estimators, (int, np.integer)) or n_estimators < 10:
        raise ValueError(
            f"`n_estimators` must be an integer >= 10 (each row is scored by ~37% of the trees); got {n_estimators!r}."
        )
    if not np.isfinite(x).all():
        raise ValueError("`features` hold NaN or infinite values; impute or drop them before the forest.")
    if max_samples is None and len(x) > FOREST_MAX_ROWS:
        max_samples = FOREST_MAX_ROWS
    if progress:
        print(
            f"forest: growing {int(n_estimators)} extra trees on {len(x):,} rows x {x.shape[1]} features ...",
            flush=True,
        )
    start = time.perf_counter()
    forest = ExtraTreesClassifier(
        n_estimators=int(n_estimators),
        bootstrap=True,
        oob_score=True,
        max_samples=max_samples,
        max_features=max_features,
        min_samples_leaf=min_samples_leaf,
        random_state=seed,
        n_jobs=n_jobs,
    )
    out = out_of_bag_proba(forest, x, y)
    if progress:
        print(f"forest: done in {time.perf_counter() - start:.1f} s", flush=True)
    return out


def out_of_bag_margins(forest, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Fit a scikit-learn bagged ensemble built with ``oob_score=True``; the out-of-bag margin of each label.

    Rows that every tree saw (no out-of-bag vote) get 0, "undecided". Shared with the
    ``random_forest_oob`` baseline of the benchmark.

    Example:
        >>> from sklearn.ensemble import RandomForestClassifier
        >>> x = np.r_[np.zeros((20, 1)), np.ones((20, 1))]; y = np.r_[np.zeros(20), np.ones(20)].astype(int); y[0] = 1
        >>> m = out_of_bag_margins(RandomForestClassifier(30, oob_score=True, random_state=0), x, y)
        >>> bool(m[0] < 0 < m[1])
        True
    """
    return _scored_margins(*out_of_bag_proba(forest, features, labels), labels)


def out_of_bag_proba(
    forest, features: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit ``forest`` (``oob_score=True``); ``(proba, classes, scored)``: out-of-bag probabilities per row.

    ``scored`` is False for rows that every tree saw; their probabilities are 0.
    """
    y = np.asarray(labels)
    with warnings.catch_warnings():  # a row in every bootstrap sample: marked unscored, not an error
        warnings.filterwarnings("ignore", message=".*OOB.*", category=UserWarning)
        forest.fit(features, y)
    proba = np.array(forest.oob_decision_function_, dtype=np.float64)
    scored = np.isfinite(proba).all(1)
    proba[~scored] = 0.0
    return proba, forest.classes_, scored


def _scored_margins(proba, classes, scored, labels) -> np.ndarray:
    """Each label's out-of-bag margin; 0 ("undecided") for rows no tree left out."""
    return np.where(scored, label_margins(proba, classes, labels), 0.0)


def with_forest(
    values: DataValues,
    features: np.ndarray,
    labels: np.ndarray,
    weight: float = FOREST_WEIGHT,
    n_estimators: int = FOREST_TREES,
    seed: int = 0,
    gate: float | None = 0.0,
    gate_tolerance: float = GATE_TOLERANCE,
    max_samples: int | float | None = None,
    n_jobs: int | None = None,
    progress: bool = False,
    opinion: str = "forest",
) -> DataValues:
    """AUM's ``values`` combined with :func:`forest_margins` of the same rows.

    ``features[i]`` and ``labels[i]`` must be row ``i`` of the dataset AUM valued (the row index
    of ``values.index``). Returns the combined values in row order with AUM's columns plus
    ``aum_value`` (AUM alone) and ``forest_margin``.

    ``opinion="auto"`` also fits mixture discriminant analysis (cross-fitted, 5 folds;
    :mod:`~lightning_dv.methods.aum.mixture`) and adds whichever of the two predicts ``labels``
    better out of sample (fewer rows whose predicted class is not their label; column
    ``mixture_margin`` when the mixture is used, metadata ``opinion``, ``forest_error``,
    ``mixture_error``). It measured better than the forest alone where classes are clusters and
    chose the forest on every real dataset of the selection seeds (benchmarks/README.md, section
    2g); about 1.5 s more per 1000 rows.

    After a ``DataValuation(AUM())`` fit, pass ``callback.values`` with the features and labels
    the model trained on; the example uses :func:`~lightning_dv.valuate`, which runs that fit.

    Example:
        >>> from sklearn.datasets import load_iris
        >>> from lightning_dv import valuate
        >>> x, y = load_iris(return_X_y=True)
        >>> y[:5] = (y[:5] + 1) % 3  # five wrong labels
        >>> values = with_forest(valuate(x, y, method="aum"), x, y)
        >>> int(values.flagged[:5].sum()), "forest_margin" in values.columns
        (5, True)
    """
    check_choice("opinion", opinion, OPINIONS)
    order, margin = aum_margins_in_row_order(values, len(np.asarray(labels)))
    proba, classes, scored = _forest_proba(
        features,
        labels,
        n_estimators,
        seed,
        max_samples,
        n_jobs,
        FOREST_MAX_FEATURES,
        FOREST_MIN_LEAF,
        progress,
    )
    forest = _scored_margins(proba, classes, scored, labels)
    columns = {"forest_margin": forest}
    metadata = {"forest_weight": float(weight), "forest_trees": int(n_estimators), "opinion": "forest"}
    held_out = forest
    if opinion == "auto":
        mixture, chosen = select_opinion(features, labels, proba, classes, scored, seed, progress)
        metadata.update(chosen)
        if mixture is not None:
            columns["mixture_margin"] = held_out = mixture
    return with_second_opinion(
        values, order, margin, held_out, weight, gate, gate_tolerance, columns=columns, metadata=metadata
    )
