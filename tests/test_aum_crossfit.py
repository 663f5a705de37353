"""Out-of-fold margins (lightning_dv.methods.aum.crossfit): real Trainer fits on small data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_dv.methods.aum import assigned_margin
from lightning_dv.methods.aum.crossfit import (
    check_folds,
    combine_margins,
    make_folds,
    out_of_fold_margins,
    with_out_of_fold,
)
from lightning_dv.methods.calibration import _center_scale, calibrate
from lightning_dv.metrics import two_means_split
from lightning_dv.modules import ValidatedMLPClassifier
from lightning_dv.valuate import valuate
from lightning_dv.values import DataValues


def _blobs(n=90, flip=9, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = (rng.normal(size=(n, 2)) + 4.0 * np.eye(3)[y][:, :2]).astype(np.float32)
    noisy = np.zeros(n, dtype=bool)
    noisy[rng.choice(n, flip, replace=False)] = True
    y_noisy = np.where(noisy, (y + 1) % 3, y)
    return x, y_noisy.astype(np.int64), noisy


class _Recording(ValidatedMLPClassifier):
    """Records the rows of every training batch (what the model trained on)."""

    def on_fit_start(self) -> None:
        self.seen: set[int] = set()

    def training_step(self, batch, batch_idx):
        self.seen.update(batch[0].tolist())
        return super().training_step(batch, batch_idx)


def test_a_row_is_never_scored_by_a_model_that_trained_on_it():
    x, y, _ = _blobs()
    models: list[_Recording] = []

    def make():
        models.append(_Recording(2, 3, valuate=False))
        return models[-1]

    oof = out_of_fold_margins(make, x, y, folds=3, max_epochs=4, patience=2)
    assert len(models) == 3 and sorted(set(oof.fold.tolist())) == [0, 1, 2]
    for f, model in enumerate(models):
        held = set(np.flatnonzero(oof.fold == f).tolist())
        assert model.seen.isdisjoint(held)  # the model that scored these rows never saw them
        assert model.seen == set(range(len(y))) - held  # and trained on every other row
        assert set(oof.trained_rows[f].tolist()) == model.seen


def test_held_out_margins_are_the_fold_models_margins():
    # one epoch: the best epoch is the last one, so the kept margins are the final model's
    x, y, _ = _blobs()
    models = []

    def make():
        models.append(ValidatedMLPClassifier(2, 3, valuate=False))
        return models[-1]

    oof = out_of_fold_margins(make, x, y, folds=3, max_epochs=1)
    assert oof.best_epochs == [1, 1, 1]
    for f, model in enumerate(models):
        held = oof.fold == f
        model.eval()
        with torch.no_grad():
            expected = assigned_margin(model(torch.from_numpy(x[held])), torch.from_numpy(y[held])).numpy()
        np.testing.assert_allclose(oof.margins[held], expected, rtol=1e-6, atol=1e-6)


def test_combine_margins_closed_form_and_weight_zero_is_aum():
    g = torch.Generator().manual_seed(0)
    a, o = (
        torch.randn(200, generator=g, dtype=torch.float64),
        torch.randn(200, generator=g, dtype=torch.float64),
    )
    sa, so = float(_center_scale(a)[1]), float(_center_scale(o)[1])
    expected = calibrate(a / sa + 0.5 * o / so, gate=0.0)
    torch.testing.assert_close(combine_margins(a, o), expected)
    # weight 0: AUM's own calibrated, gated values (the robust score and the gate are scale-free)
    torch.testing.assert_close(combine_margins(a, o, weight=0.0), calibrate(a, gate=0.0))
    with pytest.raises(ValueError, match="`weight`"):
        combine_margins(a, o, weight=-1.0)
    with pytest.raises(ValueError, match="one margin per row"):
        combine_margins(a, o[:5])


def test_folds_are_stratified_and_arguments_checked():
    fold = make_folds(np.array([0] * 10 + [1] * 5), folds=5, seed=0)
    assert [int((fold[10:] == f).sum()) for f in range(5)] == [1] * 5  # each fold holds one row of class 1
    assert np.bincount(make_folds(np.array([0] * 10 + [1]), folds=2, seed=0)).tolist() in ([6, 5], [5, 6])
    for bad in (1, 2.5, True, None):
        with pytest.raises(ValueError, match="`folds`"):
            check_folds(bad, 100)
    with pytest.raises(ValueError, match="fewer than 2 rows per fold"):
        check_folds(6, 10)


def test_with_out_of_fold_needs_aum_values():
    x, y, _ = _blobs()
    with pytest.raises(ValueError, match="aum_margin"):
        with_out_of_fold(
            DataValues(np.zeros(len(y))), lambda: ValidatedMLPClassifier(2, 3, valuate=False), x, y
        )


def test_valuate_folds_flags_the_flipped_rows():
    x, y, noisy = _blobs(n=120, flip=12)
    names = np.array(["a", "b", "c"])[y]
    values = valuate(x, names, method="aum", folds=3, epochs=10)
    assert {"oof_margin", "oof_fold", "aum_value", "aum_margin"} <= set(values.columns)
    assert values.metadata["folds"] == 3 and len(values.metadata["oof_best_epochs"]) == 3
    flagged = np.asarray(values.flagged)
    assert flagged[noisy].mean() >= 0.8 and flagged[~noisy].mean() <= 0.05
    assert bool(two_means_split(torch.as_tensor(values.values)).numpy()[noisy].mean() >= 0.8)


def test_valuate_folds_errors():
    x, y, _ = _blobs()
    with pytest.raises(ValueError, match="method='aum'"):
        valuate(x, y, method="complexity_gap", folds=5)
    with pytest.raises(ValueError, match="`folds`"):
        valuate(x, y, method="aum", folds=1)
    with pytest.raises(ValueError, match="calibration"):
        valuate(x, y, method="aum", folds=3, calibration="none")


def test_benchmark_entry_aum_oof():
    from benchmarks.registry import get_method
    from lightning_dv.datasets import make_split

    split = make_split("iris", noise=0.1, seed=0)
    values = get_method("aum_oof").fn(split, 0)
    assert len(values.values) == len(split.y_train)
    assert 0 < values.metadata["test_accuracy"] <= 1 and values.metadata["folds"] == 5
    assert np.isfinite(values.columns["oof_margin"]).all()
