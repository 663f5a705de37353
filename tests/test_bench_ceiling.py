"""The Bayes-oracle ceiling: exact posteriors of the synthetic sets and the flip posterior."""

import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks.bench_ceiling import ceiling, clean_posterior, flip_posterior
from lightning_dv.datasets import load_bundled


@pytest.mark.parametrize("name", ["gaussian", "moons", "classification", "overlap"])
def test_clean_posterior_is_a_distribution_that_explains_the_generators_labels(name):
    post = clean_posterior(name, seed=3)  # the make_classification replay raises if it drifts
    y = load_bundled(name, seed=3)[1]
    assert post.shape == (len(y), int(y.max()) + 1)
    np.testing.assert_allclose(post.sum(1), 1.0, atol=1e-9)
    # Calibrated: the mean posterior of each class matches its share of the drawn labels.
    np.testing.assert_allclose(post.mean(0), np.bincount(y) / len(y), atol=0.02)
    # And informative: the posterior of the drawn label beats a coin on every set.
    assert roc_auc_score(y == 0, post[:, 0]) > 0.8


def test_flip_posterior_matches_bayes_rule_by_enumeration():
    post = np.array([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9]])
    observed = np.array([1, 2])
    eta = 0.3
    got = flip_posterior(post, observed, eta)
    for i in range(2):
        joint = {}  # (true label, flipped?) -> probability of the observed label
        for true, moved in itertools.product(range(3), [False, True]):
            if moved:
                p_obs = eta / 2 if observed[i] != true else 0.0
            else:
                p_obs = (1 - eta) if observed[i] == true else 0.0
            joint[(true, moved)] = post[i, true] * p_obs
        want = sum(v for (t, m), v in joint.items() if m) / sum(joint.values())
        assert got[i] == pytest.approx(want)


def test_ceiling_of_one_split_bounds_its_f1s():
    row = ceiling("gaussian", seed=0, eta=0.1)
    assert 0.85 < row["oracle_auroc"] < 1.0
    assert row["oracle_bayes_f1"] <= row["oracle_best_f1"] <= 1.0


def test_mixture_reference_learns_from_the_split_and_stays_below_the_oracle():
    row = ceiling("overlap", seed=0, eta=0.2, reference=True)
    assert 0.8 < row["mixture_auroc"] <= row["oracle_auroc"] + 0.01
