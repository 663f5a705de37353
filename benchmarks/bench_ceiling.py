"""The Bayes-oracle ceiling of label-noise detection on the protocol's synthetic datasets.

A detector that knows the distribution a dataset was drawn from can do no better than rank the
training rows by the posterior probability that their label was flipped. With clean-label
posterior ``P(y | x)``, noise rate ``eta`` and a flip to one of the ``K - 1`` other classes
chosen uniformly (``lightning_dv.datasets.inject_label_noise``), the observed label ``y~`` was
flipped with probability

    P(flip | x, y~) = (1 - P(y~ | x)) * eta / (K - 1)
                      / [ P(y~ | x) * (1 - eta) + (1 - P(y~ | x)) * eta / (K - 1) ].

Its AUROC against the truly flipped rows is the highest any method can reach in expectation, and
the best cut of its ranking gives the highest flagged-F1. Why: the issue's goals are means over
datasets, some of which carry irreducible class overlap; the ceiling says how much of a gap is
the method's and how much is the data's.

The posteriors are exact for the four synthetic sets of ``lightning_dv.datasets.load_bundled``:

* ``gaussian``: ``P(y = 1 | x) = sigmoid(x . beta)`` with the generator's ``beta``;
* ``moons``: each class is the generator's evenly spaced points on a half circle plus
  ``N(0, 0.25^2 I)``; the eight appended columns are independent of the class;
* ``classification`` and ``overlap`` (scikit-learn's ``make_classification``): each class is a
  mixture of Gaussian clusters ``N(c_k, A_k^T A_k)`` in the informative columns (the redundant
  ones are linear in them, the rest independent of the class), and 1% of labels were redrawn
  uniformly (``flip_y=0.01``). The generator's draws are replayed to recover ``c_k``, ``A_k`` and
  each row's informative coordinates; the replay is checked against ``make_classification``'s
  output bit for bit.

``--reference`` adds what a well-specified model learns from the split's own 1000 noisy rows: a
Gaussian mixture per class (two full-covariance components, the generator's family for
``classification`` and ``overlap``), cross-fitted over 5 folds, its posterior put through the
same flip formula. It is not a bound; it shows how much of the ceiling 1000 rows can reach.

Example::

    python -m benchmarks.bench_ceiling --datasets gaussian moons --seeds 0 1 2 3 4 --noise 0.1 0.2
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from lightning_dv.datasets import MAKE_CLASSIFICATION, load_bundled, make_split

SYNTHETIC = ("gaussian", "moons", "classification", "overlap")


def _gaussian_posterior(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(10000, 10))
    beta = rng.normal(size=10)
    p1 = 1.0 / (1.0 + np.exp(-(x @ beta)))
    return np.stack([1.0 - p1, p1], axis=1)


def _moons_posterior(seed: int, n: int = 5000, noise: float = 0.25) -> np.ndarray:
    x = load_bundled("moons", seed=seed)[0][:, :2].astype(np.float64)
    n_out, n_in = n // 2, n - n // 2
    outer = np.stack([np.cos(np.linspace(0, np.pi, n_out)), np.sin(np.linspace(0, np.pi, n_out))], 1)
    inner = np.stack(
        [1 - np.cos(np.linspace(0, np.pi, n_in)), 1 - np.sin(np.linspace(0, np.pi, n_in)) - 0.5], 1
    )
    log_dens = []
    for centres in (outer, inner):
        sq = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
        log_dens.append(logsumexp(-sq / (2 * noise**2), axis=1) - np.log(len(centres)))
    log_dens = np.stack(log_dens, 1)
    return np.exp(log_dens - logsumexp(log_dens, axis=1, keepdims=True))


def _classification_posterior(name: str, seed: int) -> np.ndarray:
    from sklearn.datasets import make_classification
    from sklearn.datasets._samples_generator import _generate_hypercube
    from sklearn.utils import shuffle as util_shuffle

    a = MAKE_CLASSIFICATION[name]
    n, d, n_inf, n_red = a["n_samples"], a["n_features"], a["n_informative"], a["n_redundant"]
    n_cls, per, sep = a["n_classes"], a["n_clusters_per_class"], a["class_sep"]
    gen = np.random.RandomState(seed)
    n_clu = n_cls * per
    sizes = [int(n / n_cls / per) for _ in range(n_clu)]
    for i in range(n - sum(sizes)):
        sizes[i % n_clu] += 1
    cents = _generate_hypercube(n_clu, n_inf, gen).astype(float) * 2 * sep - sep
    x = np.zeros((n, d))
    y = np.zeros(n, dtype=int)
    x[:, :n_inf] = gen.standard_normal(size=(n, n_inf))
    covs, stop = [], 0
    for k, c in enumerate(cents):
        start, stop = stop, stop + sizes[k]
        y[start:stop] = k % n_cls
        a_k = 2 * gen.uniform(size=(n_inf, n_inf)) - 1
        x[start:stop, :n_inf] = x[start:stop, :n_inf] @ a_k + c
        covs.append(a_k.T @ a_k)
    x[:, n_inf : n_inf + n_red] = x[:, :n_inf] @ (2 * gen.uniform(size=(n_inf, n_red)) - 1)
    x[:, n_inf + n_red :] = gen.standard_normal(size=(n, d - n_inf - n_red))
    flip = gen.uniform(size=n) < 0.01
    y[flip] = gen.randint(n_cls, size=flip.sum())
    informative = x[:, :n_inf].copy()
    x, y, informative = util_shuffle(x, y, informative, random_state=gen)
    cols = np.arange(d)
    gen.shuffle(cols)
    ref_x, ref_y = make_classification(**a, random_state=seed)
    if not (np.array_equal(x[:, cols], ref_x) and np.array_equal(y, ref_y)):
        raise RuntimeError(
            f"replaying make_classification for {name!r} did not reproduce it; "
            "this scikit-learn draws differently."
        )
    weights = np.asarray(sizes, dtype=float) / n
    log_joint = np.stack(
        [
            np.log(weights[k]) + multivariate_normal(cents[k], covs[k]).logpdf(informative)
            for k in range(n_clu)
        ],
        1,
    )
    by_class = np.stack([logsumexp(log_joint[:, k::n_cls], axis=1) for k in range(n_cls)], 1)
    post = np.exp(by_class - logsumexp(by_class, axis=1, keepdims=True))
    return 0.99 * post + 0.01 / n_cls


def clean_posterior(name: str, seed: int) -> np.ndarray:
    """``P(clean label | x)`` for every row of ``load_bundled(name, seed)``, shape (rows, classes)."""
    if name == "gaussian":
        return _gaussian_posterior(seed)
    if name == "moons":
        return _moons_posterior(seed)
    if name in MAKE_CLASSIFICATION:
        return _classification_posterior(name, seed)
    raise ValueError(f"no exact posterior for {name!r}; choose one of {', '.join(SYNTHETIC)}.")


def flip_posterior(post: np.ndarray, observed: np.ndarray, eta: float) -> np.ndarray:
    """``P(flip | x, observed)`` under uniform flips to another class at rate ``eta``."""
    k = post.shape[1]
    p_obs = post[np.arange(len(observed)), observed]
    moved = (1.0 - p_obs) * eta / (k - 1)
    return moved / (p_obs * (1.0 - eta) + moved)


class ClassMixture(ClassifierMixin, BaseEstimator):
    """One Gaussian mixture per class; ``predict_proba`` is Bayes' rule with the class shares."""

    def __init__(self, components: int = 2, reg_covar: float = 1e-2):
        self.components = components
        self.reg_covar = reg_covar

    def fit(self, x: np.ndarray, y: np.ndarray) -> ClassMixture:
        self.classes_ = np.unique(y)
        self.mixtures_ = [
            GaussianMixture(self.components, reg_covar=self.reg_covar, n_init=3, random_state=0).fit(
                x[y == c]
            )
            for c in self.classes_
        ]
        self.log_prior_ = np.log(np.array([(y == c).mean() for c in self.classes_]))
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        log_joint = np.stack([m.score_samples(x) for m in self.mixtures_], 1) + self.log_prior_
        return np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(x).argmax(1)]


def mixture_reference(split, eta: float) -> np.ndarray:
    """Cross-fitted flip posterior of :class:`ClassMixture` on the split's noisy training rows."""
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    post = cross_val_predict(
        ClassMixture(), split.x_train.astype(np.float64), split.y_train, cv=folds, method="predict_proba"
    )
    return flip_posterior(post, split.y_train, eta)


def ceiling(name: str, seed: int, eta: float, reference: bool = False) -> dict:
    """Oracle AUROC, best-cut F1 and Bayes-rule F1 on the training rows of one protocol split."""
    post = clean_posterior(name, seed)
    split = make_split(name, noise=eta, seed=seed)
    train = np.random.default_rng(seed).permutation(len(post))[: len(split.y_train)]
    # make_split's first draw is this permutation; check it against the split's clean labels.
    ref = load_bundled(name, seed=seed)[1][train]
    if not np.array_equal(ref, split.y_train_clean):
        raise RuntimeError("the split's rows could not be matched to the generator's rows.")
    score = flip_posterior(post[train], split.y_train, eta)
    truth = np.zeros(len(score), dtype=bool)
    truth[split.noisy] = True
    order = np.argsort(-score, kind="stable")
    hits = np.cumsum(truth[order])
    m = np.arange(1, len(score) + 1)
    best_f1 = float(np.max(2 * hits / (m + truth.sum())))
    row = {
        "dataset": name,
        "seed": seed,
        "noise": eta,
        "oracle_auroc": float(roc_auc_score(truth, score)),
        "oracle_best_f1": best_f1,
        "oracle_bayes_f1": float(f1_score(truth, score > 0.5)),
    }
    if reference:
        row["mixture_auroc"] = float(roc_auc_score(truth, mixture_reference(split, eta)))
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(SYNTHETIC), choices=SYNTHETIC)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--noise", nargs="+", type=float, default=[0.1, 0.2])
    parser.add_argument("--reference", action="store_true", help="add the cross-fitted ClassMixture's AUROC")
    parser.add_argument("--out", help="CSV of every (dataset, seed, noise) row")
    args = parser.parse_args(argv)
    import pandas as pd

    rows = [
        ceiling(d, s, eta, args.reference) for d in args.datasets for eta in args.noise for s in args.seeds
    ]
    frame = pd.DataFrame(rows)
    if args.out:
        frame.to_csv(args.out, index=False)
    table = frame.drop(columns="seed").groupby(["noise", "dataset"]).mean()
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
