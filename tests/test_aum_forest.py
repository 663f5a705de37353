"""The forest's second opinion (lightning_dv.methods.aum.forest): real scikit-learn forests, real fits."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from benchmarks import baselines
from lightning_dv import AUM, DataValuation
from lightning_dv.datasets import make_split
from lightning_dv.methods.aum.combine import combine_margins
from lightning_dv.methods.aum.forest import forest_margins, out_of_bag_margins, with_forest
from lightning_dv.metrics import detection_auroc, kmeans_f1
from lightning_dv.valuate import valuate
from lightning_dv.values import DataValues
from tests.helpers import MLP, loader, seeded, trainer_kwargs


def _brute_force_oob_margin(forest, x, y_codes, num_classes):
    """Each row's margin from the trees whose bootstrap sample left it out, tree by tree."""
    n = len(x)
    total, votes = np.zeros((n, num_classes)), np.zeros(n)
    for tree, drawn in zip(forest.estimators_, forest.estimators_samples_):
        left_out = np.setdiff1d(np.arange(n), drawn)
        total[left_out] += tree.predict_proba(x[left_out])
        votes[left_out] += 1
    p = total / votes[:, None]
    own = p[np.arange(n), y_codes]
    other = p.copy()
    other[np.arange(n), y_codes] = -np.inf
    return own - other.max(1)


def test_forest_margins_match_a_tree_by_tree_out_of_bag_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 4))
    codes = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int) + (x[:, 2] > 1).astype(int)
    names = np.array(["b", "c", "a"])[codes]  # string labels whose sorted order is not the code order
    margins = forest_margins(x, names, n_estimators=40, seed=3)
    forest = ExtraTreesClassifier(
        40, bootstrap=True, oob_score=True, max_features=1.0, min_samples_leaf=3, random_state=3
    ).fit(x, names)
    sorted_codes = np.searchsorted(forest.classes_, names)
    np.testing.assert_allclose(margins, _brute_force_oob_margin(forest, x, sorted_codes, 3), atol=1e-12)
    assert margins.dtype == np.float64 and ((margins >= -1) & (margins <= 1)).all()


def test_a_row_that_every_tree_saw_is_scored_zero():
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    y = np.array([0, 0, 1, 1])
    for seed in range(200):  # find a seed where some row is in every bootstrap sample
        forest = RandomForestClassifier(10, oob_score=True, random_state=seed)
        probe = RandomForestClassifier(10, random_state=seed).fit(x, y)
        seen = np.zeros(4, dtype=bool)  # out of bag for at least one tree
        for drawn in probe.estimators_samples_:
            seen[np.setdiff1d(np.arange(4), drawn)] = True
        if not seen.all():
            margins = out_of_bag_margins(forest, x, y)
            assert (margins[~seen] == 0).all() and np.isfinite(margins).all()
            return
    pytest.fail("no seed left a row in every bootstrap sample")


def _fit_aum(split, seed=0, epochs=10):
    seeded(seed)
    valuation = DataValuation(AUM())
    L.Trainer(max_epochs=epochs, callbacks=[valuation], **trainer_kwargs()).fit(
        MLP(split.x_train.shape[1], split.num_classes), loader(split.x_train, split.y_train, seed=seed)
    )
    return valuation.values


def test_with_forest_after_a_real_fit_is_the_formula_and_beats_aum_on_a_curved_boundary():
    """moons (2 informative + 8 noise features), 10% flipped: the MLP's 10-epoch margins rank the rows
    worse than trees that pick the informative features; the sum ranks better than AUM alone."""
    split = make_split("moons", noise=0.1, seed=7)
    aum = _fit_aum(split, seed=7)
    combined = with_forest(aum, split.x_train, split.y_train, seed=7)
    order = np.argsort(aum.index)
    forest = forest_margins(split.x_train, split.y_train, seed=7)
    expected = combine_margins(
        torch.as_tensor(aum.columns["aum_margin"][order]), torch.as_tensor(forest), 0.5
    )
    np.testing.assert_allclose(combined.values, expected.numpy())
    np.testing.assert_allclose(combined.columns["forest_margin"], forest)
    np.testing.assert_allclose(combined.columns["aum_value"], np.asarray(aum.values)[order])
    assert combined.metadata["forest_weight"] == 0.5 and combined.metadata["forest_trees"] == 300
    assert combined.index.tolist() == list(range(len(split.y_train)))
    a_auc, c_auc = detection_auroc(aum.values, split.noisy), detection_auroc(combined.values, split.noisy)
    assert c_auc > a_auc + 0.01, (a_auc, c_auc)
    assert kmeans_f1(combined.values, split.noisy) > kmeans_f1(aum.values, split.noisy)
    # weight 0: AUM's own values (the robust score and the gate are scale-free)
    alone = with_forest(aum, split.x_train, split.y_train, weight=0.0, n_estimators=10)
    np.testing.assert_allclose(alone.values, np.asarray(aum.values)[order], atol=1e-6)


def test_with_forest_refuses_what_it_cannot_combine():
    x = np.random.default_rng(0).normal(size=(40, 2))
    y = (x[:, 0] > 0).astype(int)
    aum_like = DataValues(np.zeros(40), columns={"aum_margin": np.ones(40)})
    with pytest.raises(ValueError, match="must come from AUM"):
        with_forest(DataValues(np.zeros(40)), x, y)
    with pytest.raises(ValueError, match="40 values but 39 rows"):
        with_forest(aum_like, x[:39], y[:39])
    with pytest.raises(ValueError, match="`weight`"):
        with_forest(aum_like, x, y, weight=-0.5)
    with pytest.raises(ValueError, match="`n_estimators`"):
        forest_margins(x, y, n_estimators=5)
    with pytest.raises(ValueError, match="NaN or infinite"):
        forest_margins(np.where(np.eye(40, 2) > 0, np.nan, x), y)
    with pytest.raises(ValueError, match="one row per label"):
        forest_margins(x, y[:10])


def test_valuate_forest_flags_the_flipped_rows_and_checks_its_arguments(capsys):
    rng = np.random.default_rng(1)
    y = np.arange(150) % 3
    x = rng.normal(size=(150, 2)) + 4.0 * np.eye(3)[y][:, :2]
    noisy = np.zeros(150, dtype=bool)
    noisy[rng.choice(150, 15, replace=False)] = True
    names = np.array(["a", "b", "c"])[np.where(noisy, (y + 1) % 3, y)]
    values = valuate(x, names, method="aum", forest=True, progress=True)
    assert capsys.readouterr().out.count("forest: ") == 2  # start (rows, trees) and end (seconds)
    assert {"forest_margin", "aum_value", "aum_margin", "predicted_label"} <= set(values.columns)
    flagged = np.asarray(values.flagged)
    assert flagged[noisy].mean() >= 0.9 and flagged[~noisy].mean() <= 0.03
    with pytest.raises(ValueError, match="not available with method='nddv'"):
        valuate(x, names, method="nddv", forest=True)
    with pytest.raises(ValueError, match="pick one"):
        valuate(x, names, method="aum", forest=True, folds=5)
    with pytest.raises(ValueError, match="`forest` must be True, False or .auto."):
        valuate(x, names, method="aum", forest="yes")
    with pytest.raises(ValueError, match="leave AUM's `calibration`"):
        valuate(x, names, method="aum", forest=True, calibration="none")


def test_forest_baselines_score_the_out_of_bag_margin():
    split = make_split("iris", noise=0.2, seed=0)
    extra = baselines.forest_oob(split.x_train, split.y_train, seed=0)
    np.testing.assert_allclose(extra.values, forest_margins(split.x_train, split.y_train, seed=0))
    rf = baselines.forest_oob(split.x_train, split.y_train, "random_forest", n_estimators=50, seed=0)
    assert rf.method == "random_forest_oob" and detection_auroc(rf.values, split.noisy) > 0.8
    with pytest.raises(ValueError, match="`kind`"):
        baselines.forest_oob(split.x_train, split.y_train, "boosting")


def test_the_example_runs_and_the_forest_helps_on_moons():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "aum_forest.py"
    spec = importlib.util.spec_from_file_location("aum_forest_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    report = example.main(seed=1)
    assert report["model_test_accuracy"] > 0.8
    assert report["aum_forest"]["auroc"] > report["aum"]["auroc"]
    assert report["aum_forest"]["flagged_f1"] > report["aum"]["flagged_f1"]
    assert (
        report["auto_opinion"] == "forest" and report["aum_auto"] == report["aum_forest"]
    )  # trees fit moons better


def test_large_data_caps_the_rows_each_tree_draws(monkeypatch):
    import lightning_dv.methods.aum.forest as forest_module

    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 3))
    y = (x[:, 0] > 0).astype(int)
    monkeypatch.setattr(forest_module, "FOREST_MAX_ROWS", 60)  # our own constant, not a library's
    capped = forest_module.forest_margins(x, y, n_estimators=20, seed=4)
    reference = ExtraTreesClassifier(
        20,
        bootstrap=True,
        oob_score=True,
        max_samples=60,
        max_features=1.0,
        min_samples_leaf=3,
        random_state=4,
    ).fit(x.astype(np.float32), y)
    np.testing.assert_allclose(
        capped, _brute_force_oob_margin(reference, x.astype(np.float32), y, 2), atol=1e-12
    )
    assert all(len(drawn) == 60 for drawn in reference.estimators_samples_)
