"""The mixture's second opinion and the choice by out-of-sample error (lightning_dv.methods.aum.mixture): real
scikit-learn mixtures against a closed-form Gaussian posterior, real fits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.datasets import make_classification
from sklearn.model_selection import StratifiedKFold

from benchmarks import baselines
from lightning_dv.datasets import make_split
from lightning_dv.methods.aum.combine import combine_margins, label_margins
from lightning_dv.methods.aum.forest import forest_margins, with_forest
from lightning_dv.methods.aum.mixture import (
    MIXTURE_MAX_FEATURES,
    error_rate,
    mixture_margins,
    mixture_proba,
    select_opinion,
)
from lightning_dv.metrics import detection_auroc
from lightning_dv.values import DataValues
from tests.test_aum_forest import _fit_aum


def _gaussian_posterior(x_fit, codes, x_score, num_classes, reg=1e-3):
    """One Gaussian per class in closed form: mean, biased covariance + reg * I of the standardised rows."""
    mu, sd = x_fit.mean(0), x_fit.std(0)
    z_fit, z_score = (x_fit - mu) / sd, (x_score - mu) / sd
    logp = np.zeros((len(x_score), num_classes))
    for k in range(num_classes):
        rows = z_fit[codes == k]
        cov = np.cov(rows, rowvar=False, bias=True) + reg * np.eye(rows.shape[1])
        logp[:, k] = multivariate_normal(rows.mean(0), cov).logpdf(z_score) + np.log(len(rows) / len(z_fit))
    p = np.exp(logp - logp.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def test_one_component_per_class_is_the_closed_form_gaussian_posterior_fold_by_fold():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 1, (60, 3)), rng.normal(1.5, 0.7, (60, 3)), rng.normal(-1, 2, (60, 3))]
    codes = np.repeat([0, 1, 2], 60)
    names = np.array(["b", "c", "a"])[codes]  # string labels whose sorted order is not the code order
    proba, classes = mixture_proba(x, names, seed=4, max_components=1)
    assert classes.tolist() == ["a", "b", "c"]
    sorted_codes = np.searchsorted(classes, names)
    expected = np.zeros_like(proba)
    for fit, score in StratifiedKFold(5, shuffle=True, random_state=4).split(x, sorted_codes):
        expected[score] = _gaussian_posterior(x[fit], sorted_codes[fit], x[score], 3)
    np.testing.assert_allclose(proba, expected, atol=1e-6)
    margins = mixture_margins(x, names, seed=4)
    assert margins.shape == (180,) and ((margins >= -1) & (margins <= 1)).all()


def test_label_margins_and_error_rate_follow_the_sorted_classes():
    proba = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1]])
    classes = np.array(["a", "b", "c"])
    labels = np.array(["b", "c", "b"])
    np.testing.assert_allclose(label_margins(proba, classes, labels), [0.3 - 0.6, 0.6 - 0.2, 0.8 - 0.1])
    assert error_rate(proba, classes, labels) == pytest.approx(1 / 3)  # row 0 is predicted "a"


def test_select_opinion_takes_the_mixture_on_clusters_and_the_forest_on_boxes(capsys):
    # clusters (Gaussian blobs, 2 per class, 6 informative features): the mixture predicts the labels better
    x, y = make_classification(
        1200, n_features=8, n_informative=6, n_redundant=2, n_clusters_per_class=2, random_state=2
    )
    flip = np.random.default_rng(0).choice(len(y), 120, replace=False)
    y[flip] = 1 - y[flip]
    proba, classes, scored = _forest(x, y)
    margins, why = select_opinion(x, y, proba, classes, scored, seed=0, progress=True)
    mixture, _ = mixture_proba(x, y, seed=0)
    assert why["opinion"] == "mixture" and why["mixture_error"] < why["forest_error"]
    assert why["forest_error"] == pytest.approx(np.mean(classes[proba.argmax(1)] != y))
    assert why["mixture_error"] == pytest.approx(np.mean(classes[mixture.argmax(1)] != y))
    np.testing.assert_allclose(margins, label_margins(mixture, classes, y))
    assert detection_auroc(margins, flip) > detection_auroc(label_margins(proba, classes, y), flip)
    assert "-> the mixture's opinion" in capsys.readouterr().out
    # boxes (a checkerboard on two uniform features): the forest does
    u = np.random.default_rng(1).uniform(0, 4, size=(1200, 2))
    boxes = (np.floor(u[:, 0]) + np.floor(u[:, 1])).astype(int) % 2
    margins, why = select_opinion(u, boxes, *_forest(u, boxes), seed=0)
    assert margins is None and why["opinion"] == "forest" and why["forest_error"] < why["mixture_error"]


def _forest(x, y):
    from lightning_dv.methods.aum.forest import FOREST_MAX_FEATURES, FOREST_MIN_LEAF, _forest_proba

    return _forest_proba(x, y, 300, 0, None, None, FOREST_MAX_FEATURES, FOREST_MIN_LEAF, False)


def test_with_forest_auto_after_a_real_fit_adds_the_chosen_opinion():
    """overlap (3 classes of 2 clusters each), 20% flipped: the mixture is chosen and ranks better."""
    split = make_split("overlap", noise=0.2, seed=3)
    aum = _fit_aum(split, seed=3)
    auto = with_forest(aum, split.x_train, split.y_train, seed=3, opinion="auto")
    forest = with_forest(aum, split.x_train, split.y_train, seed=3)
    assert auto.metadata["opinion"] == "mixture" and forest.metadata["opinion"] == "forest"
    mixture = mixture_margins(split.x_train, split.y_train, seed=3)
    order = np.argsort(aum.index)
    expected = combine_margins(
        torch.as_tensor(aum.columns["aum_margin"][order]), torch.as_tensor(mixture), 0.5
    )
    np.testing.assert_allclose(auto.values, expected.numpy())
    np.testing.assert_allclose(auto.columns["mixture_margin"], mixture)
    np.testing.assert_allclose(
        auto.columns["forest_margin"], forest_margins(split.x_train, split.y_train, seed=3)
    )
    assert detection_auroc(auto.values, split.noisy) > detection_auroc(forest.values, split.noisy)


def test_auto_refuses_bad_input_and_keeps_the_forest_above_the_feature_limit(capsys):
    rng = np.random.default_rng(0)
    aum_like = DataValues(np.zeros(60), columns={"aum_margin": rng.normal(size=60)})
    x, y = rng.normal(size=(60, 2)), (rng.normal(size=60) > 0).astype(int)
    with pytest.raises(ValueError, match="`opinion='mixture'` is not supported"):
        with_forest(aum_like, x, y, opinion="mixture")
    wide = rng.normal(size=(60, MIXTURE_MAX_FEATURES + 1))
    with pytest.raises(ValueError, match="full covariances"):
        mixture_proba(wide, y)
    with pytest.raises(ValueError, match="NaN or infinite"):
        mixture_proba(np.where(np.eye(60, 2) > 0, np.inf, x), y)
    values = with_forest(aum_like, wide, y, n_estimators=20, opinion="auto", progress=True)
    assert values.metadata["opinion"] == "forest" and np.isnan(values.metadata["mixture_error"])
    assert "mixture_margin" not in values.columns
    assert f"skipped ({MIXTURE_MAX_FEATURES + 1} features" in capsys.readouterr().out


def test_mixture_baseline_scores_the_cross_fitted_margin():
    x, y = make_classification(300, n_features=4, n_informative=3, n_redundant=1, random_state=0)
    values = baselines.mixture_oof(x, y, seed=1)
    np.testing.assert_allclose(values.values, mixture_margins(x, y, seed=1))


def test_valuate_and_the_cli_pass_auto_through(tmp_path, capsys):
    from lightning_dv.cli import main
    from lightning_dv.valuate import valuate

    x, y = make_classification(
        400, n_features=6, n_informative=4, n_redundant=2, n_clusters_per_class=2, random_state=5
    )
    flip = np.random.default_rng(5).choice(400, 40, replace=False)
    y[flip] = 1 - y[flip]
    names = np.array(["no", "yes"])[y]
    values = valuate(x, names, method="aum", forest="auto", progress=True)
    out = capsys.readouterr().out
    assert "forest: done" in out and "error on the labels" in out
    assert values.metadata["opinion"] in ("forest", "mixture") and values.metadata["forest_error"] > 0
    assert detection_auroc(values.values, flip) > 0.85
    import pandas as pd

    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)]).assign(label=names)
    frame.to_csv(tmp_path / "d.csv", index=False)
    code = main(["value", str(tmp_path / "d.csv"), "--label", "label", "--opinion", "auto", "--no-progress"])
    assert code == 0
    saved = DataValues.load(tmp_path / "d_values.csv")
    assert saved.metadata["opinion"] == values.metadata["opinion"]
    np.testing.assert_allclose(saved.values, values.values, rtol=1e-5)  # the CSV round trip of the features
