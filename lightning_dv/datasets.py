"""Bundled datasets, noise injection and splits for demos and the benchmark protocol.

Everything here works offline: scikit-learn's bundled data and synthetic generators only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BUNDLED = (
    "digits",
    "breast_cancer",
    "wine",
    "iris",
    "diabetes",
    "gaussian",
    "classification",
    "overlap",
    "moons",
)
REGRESSION = ("diabetes",)


@dataclass
class Split:
    """Arrays of one benchmark split (features standardised on the training part).

    ``noisy`` holds the training rows whose label (or features) were corrupted; the ``*_clean``
    labels are the ones before corruption (e.g. a clean meta set for NDDV's weight network).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    noisy: np.ndarray
    num_classes: int
    name: str = ""
    y_train_clean: np.ndarray | None = None
    y_valid_clean: np.ndarray | None = None


#: scikit-learn ``make_classification`` arguments of the two clustered synthetic sets (every
#: argument that shapes the distribution is spelled out; the Bayes-oracle benchmark replays them).
MAKE_CLASSIFICATION: dict[str, dict[str, float]] = {
    "classification": dict(
        n_samples=5000,
        n_features=20,
        n_informative=10,
        n_redundant=2,
        n_classes=2,
        n_clusters_per_class=2,
        class_sep=1.0,
    ),
    "overlap": dict(
        n_samples=5000,
        n_features=10,
        n_informative=6,
        n_redundant=2,
        n_classes=3,
        n_clusters_per_class=2,
        class_sep=0.8,
    ),
}


def load_bundled(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Load a bundled dataset as ``(features float32, labels)``.

    Args:
        name: One of ``digits``, ``breast_cancer``, ``wine``, ``iris``, ``diabetes`` (regression),
            ``gaussian`` (10000 x 10, logistic labels), ``classification`` (sklearn's make_classification),
            ``overlap`` (make_classification, 3 classes of 2 overlapping clusters each, class_sep 0.8)
            or ``moons`` (two interleaved half circles, noise 0.25, plus 8 pure-noise features).
        seed: Seed of the synthetic generators.

    Example:
        >>> x, y = load_bundled("iris")
        >>> x.shape, sorted(set(y.tolist()))
        ((150, 4), [0, 1, 2])
    """
    from sklearn import datasets as skd

    if name == "gaussian":
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(10000, 10))
        beta = rng.normal(size=10)
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        y = (rng.random(10000) < p).astype(np.int64)
        return x.astype(np.float32), y
    if name in MAKE_CLASSIFICATION:
        x, y = skd.make_classification(**MAKE_CLASSIFICATION[name], random_state=seed)
        return x.astype(np.float32), y.astype(np.int64)
    if name == "moons":
        x, y = skd.make_moons(n_samples=5000, noise=0.25, random_state=seed)
        extra = np.random.default_rng(seed).normal(size=(len(x), 8))
        return np.hstack([x, extra]).astype(np.float32), y.astype(np.int64)
    loaders = {
        "digits": skd.load_digits,
        "breast_cancer": skd.load_breast_cancer,
        "wine": skd.load_wine,
        "iris": skd.load_iris,
        "diabetes": skd.load_diabetes,
    }
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(BUNDLED)}.")
    x, y = loaders[name](return_X_y=True)
    y = y.astype(np.float32) if name in REGRESSION else y.astype(np.int64)
    return x.astype(np.float32), y


def inject_label_noise(
    y: np.ndarray, fraction: float, num_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Move the label of a ``fraction`` of rows to a different class chosen uniformly.

    Returns:
        ``(noisy_labels, noisy_rows)``.

    Example:
        >>> y, rows = inject_label_noise(np.zeros(10, dtype=int), 0.3, 2, np.random.default_rng(0))
        >>> len(rows), int((y != 0).sum())
        (3, 3)
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"`fraction` must lie in [0, 1]; got {fraction}.")
    if num_classes < 2:
        raise ValueError("label noise needs at least 2 classes.")
    y = np.asarray(y).copy()
    k = int(round(fraction * len(y)))
    rows = np.sort(rng.choice(len(y), size=k, replace=False))
    shift = rng.integers(1, num_classes, size=k)
    y[rows] = (y[rows] + shift) % num_classes
    return y, rows


def inject_feature_noise(
    x: np.ndarray, fraction: float, rng: np.random.Generator, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Add N(0, scale^2) noise to the features of a ``fraction`` of rows.

    Returns:
        ``(noisy_features, noisy_rows)``.
    """
    x = np.asarray(x, dtype=np.float32).copy()
    k = int(round(fraction * len(x)))
    rows = np.sort(rng.choice(len(x), size=k, replace=False))
    x[rows] += rng.normal(scale=scale, size=(k, x.shape[1])).astype(np.float32)
    return x, rows


def make_split(
    name: str,
    noise: float = 0.1,
    noise_kind: str = "label",
    seed: int = 0,
    n_train: int = 1000,
    n_valid: int = 100,
    n_test: int = 3000,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
) -> Split:
    """One benchmark split: train / valid / test, noise on train AND valid (OpenDataVal's protocol).

    Small datasets (fewer rows than n_train + n_valid + n_test) give up test rows first, down to
    30% of the rows; train and valid share the rest in the n_train:n_valid proportion. Features are standardised with the
    training part's mean and standard deviation before feature noise is added.

    Args:
        name: Bundled dataset name (ignored when ``x``/``y`` are given, except as a label).
        noise: Fraction of corrupted rows.
        noise_kind: ``"label"``, ``"feature"`` or ``"mixed"`` (half of each).
        seed: Seed of the split and the noise.
        n_train, n_valid, n_test: Split sizes.
        x, y: Optional arrays to split instead of a bundled dataset.

    Example:
        >>> s = make_split("breast_cancer", noise=0.1, seed=0)
        >>> len(s.x_train), len(s.x_valid), len(s.noisy)
        (363, 36, 36)
    """
    if noise_kind not in ("label", "feature", "mixed"):
        raise ValueError(f"`noise_kind` must be 'label', 'feature' or 'mixed'; got {noise_kind!r}.")
    if x is None or y is None:
        x, y = load_bundled(name, seed=seed)
    rng = np.random.default_rng(seed)
    n = len(x)
    total = n_train + n_valid + n_test
    if n < total:
        # Small sets: the test part shrinks first (down to 30% of the rows), then train and valid
        # share the rest in the protocol's 1000:100 proportion.
        n_test = max(n - n_train - n_valid, int(0.3 * n))
        rest = n - n_test
        n_valid = max(int(round(rest * n_valid / (n_train + n_valid))), 2)
        n_train = rest - n_valid
    perm = rng.permutation(n)
    tr, va, te = (
        perm[:n_train],
        perm[n_train : n_train + n_valid],
        perm[n_train + n_valid : n_train + n_valid + n_test],
    )
    x = np.asarray(x, dtype=np.float32)
    mu, sd = x[tr].mean(0), x[tr].std(0)
    sd = np.where(sd < 1e-6, 1.0, sd)  # constant columns (e.g. digits' border pixels) stay finite
    x = (x - mu) / sd
    regression = np.issubdtype(np.asarray(y).dtype, np.floating)
    num_classes = 0 if regression else int(np.max(y)) + 1
    x_tr, y_tr, x_va, y_va = x[tr], np.asarray(y)[tr], x[va], np.asarray(y)[va]
    clean, clean_valid = y_tr.copy(), y_va.copy()
    noisy = np.zeros(0, dtype=np.int64)
    label_frac = noise if noise_kind == "label" else (noise / 2 if noise_kind == "mixed" else 0.0)
    feat_frac = noise if noise_kind == "feature" else (noise / 2 if noise_kind == "mixed" else 0.0)
    if label_frac > 0:
        if regression:
            raise ValueError(
                "label noise on a regression dataset is not defined here; use noise_kind='feature'."
            )
        y_tr, noisy = inject_label_noise(y_tr, label_frac, num_classes, rng)
        y_va, _ = inject_label_noise(y_va, label_frac, num_classes, rng)
    if feat_frac > 0:
        x_tr, feat_rows = inject_feature_noise(x_tr, feat_frac, rng)
        x_va, _ = inject_feature_noise(x_va, feat_frac, rng)
        noisy = np.union1d(noisy, feat_rows)
    return Split(
        x_train=x_tr,
        y_train=y_tr,
        x_valid=x_va,
        y_valid=y_va,
        x_test=x[te],
        y_test=np.asarray(y)[te],
        noisy=noisy.astype(np.int64),
        num_classes=num_classes,
        name=name,
        y_train_clean=clean,
        y_valid_clean=clean_valid,
    )
