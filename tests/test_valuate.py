"""`lightning_dv.valuate`: one call on arrays, tensors or DataFrames, string labels, every method."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lightning_dv import valuate
from lightning_dv.datasets import make_split
from lightning_dv.metrics import detection_auroc
from lightning_dv.valuate import InputError


@pytest.fixture(scope="module")
def noisy():
    s = make_split("breast_cancer", noise=0.1, seed=3)
    names = np.array(["benign", "malignant"])[s.y_train]
    return s, names


@pytest.mark.parametrize("method", ["nddv", "lossval", "aum", "complexity_gap", "ecoval"])
def test_every_method_on_arrays_with_string_labels(noisy, method):
    s, names = noisy
    # LossVal needs more of its 30 epochs than the others to detect: 10 here
    kwargs = {"epochs": 10 if method == "lossval" else 3} if method in ("nddv", "lossval", "aum") else {}
    values = valuate(s.x_train, names, method=method, **kwargs)
    assert values.method == method and len(values) == len(names)
    assert values.index.tolist() == list(range(len(names)))
    assert values.labels.tolist() == names.tolist()
    assert values.flagged.dtype == bool and 0 < values.flagged.sum() < len(names) * (
        0.9 if method == "aum" else 0.5
    )
    assert detection_auroc(values.values, s.noisy) > (0.75 if method == "lossval" else 0.85)
    assert values.metadata["classes"] == ["benign", "malignant"]
    if method in ("nddv", "lossval", "aum"):
        assert set(values.columns["predicted_label"]) <= {"benign", "malignant"}
        assert values.metadata["epochs"] == kwargs["epochs"] and values.metadata["train_accuracy"] > 0.8
    if method in ("lossval", "ecoval"):
        assert "stratified 10%" in values.metadata["validation"]


def test_dataframe_tensor_and_ids_give_the_same_values(noisy):
    s, names = noisy
    df = pd.DataFrame(s.x_train, columns=[f"f{i}" for i in range(s.x_train.shape[1])])
    a = valuate(df, pd.Series(names), method="nddv", epochs=2, ids=[f"r{i}" for i in range(len(df))])
    b = valuate(torch.from_numpy(s.x_train), names.tolist(), method="nddv", epochs=2)
    np.testing.assert_allclose(a.values, b.values, atol=1e-4)
    assert a.ids[0] == "r0" and b.ids is None


def test_given_validation_is_used(noisy):
    s, names = noisy
    y_val = np.array(["benign", "malignant"])[s.y_valid]
    values = valuate(s.x_train, names, method="lossval", validation=(s.x_valid, y_val), epochs=2)
    assert values.metadata["validation"] == f"given ({len(y_val)} rows)"
    with pytest.raises(InputError, match="'unknown', a class the training labels do not have"):
        valuate(s.x_train, names, method="lossval", validation=(s.x_valid[:2], ["benign", "unknown"]))


def test_aum_follows_the_validation_loss(noisy, tmp_path):
    """monitor='val_loss': the window ends at the best validation epoch (>= 10), read from the logged losses,
    and the values equal those of a fixed window of that length on the same seed."""
    from lightning.pytorch.loggers import CSVLogger

    s, names = noisy
    y_val = np.array(["benign", "malignant"])[s.y_valid]
    logger = CSVLogger(tmp_path, name="aum")
    values = valuate(
        s.x_train,
        names,
        validation=(s.x_valid, y_val),
        monitor="val_loss",
        epochs=14,
        trainer_kwargs={"logger": logger},
    )
    losses = pd.read_csv(f"{logger.log_dir}/metrics.csv").dropna(subset=["val_loss"])["val_loss"].to_numpy()
    assert len(losses) == 14
    expected = max(10, int(np.argmin(losses)) + 1)  # first best epoch, at least the 10-epoch window
    assert set(values.columns["aum_window"].tolist()) == {float(expected)}
    assert values.metadata["validation"].startswith(f"given ({len(y_val)} rows)")
    fixed = valuate(s.x_train, names, window=expected, epochs=expected)
    np.testing.assert_allclose(values.values, fixed.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(values.flagged, fixed.flagged)


def test_aum_monitor_needs_validation_and_val_loss(noisy):
    s, names = noisy
    with pytest.raises(ValueError, match="pass `validation=\\(x_val, y_val\\)`"):
        valuate(s.x_train, names, monitor="val_loss")
    with pytest.raises(ValueError, match="logs one validation metric, 'val_loss'"):
        valuate(s.x_train, names, validation=(s.x_valid, s.y_valid), monitor="val_acc", mode="max")


def test_bad_inputs_are_refused_before_training():
    x = np.random.default_rng(0).normal(size=(30, 3))
    y = np.array(["a", "b"] * 15)
    with pytest.raises(InputError, match="not numeric: name"):
        valuate(pd.DataFrame({"v": x[:, 0], "name": ["x"] * 30}), y)
    x_nan = x.copy()
    x_nan[[4, 7], 1] = np.nan
    with pytest.raises(InputError, match="2 row\\(s\\): 4, 7"):
        valuate(x_nan, y)
    with pytest.raises(InputError, match="only 4 rows"):
        valuate(x[:4], y[:4])
    with pytest.raises(InputError, match="real numbers, not classes"):
        valuate(x, np.linspace(0, 1, 30))
    with pytest.raises(ValueError, match="`method='knn'` is not supported"):
        valuate(x, y, method="knn")
    with pytest.raises(ValueError, match="complexity_gap trains no model"):
        valuate(x, y, method="complexity_gap", epochs=3)
