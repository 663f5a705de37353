"""AUM(monitor=...): the window runs on while a logged validation metric improves (real fits)."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from helpers import loader, resumable_loader, seeded, trainer_kwargs
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_dv import DataValuation
from lightning_dv.datasets import make_split
from lightning_dv.methods.aum import AUM
from lightning_dv.methods.calibration import calibrate
from lightning_dv.modules import ValidatedMLPClassifier


class MetricLog(L.Callback):
    def __init__(self, name):
        self.name, self.seen = name, []

    def on_train_epoch_end(self, trainer, pl_module):
        self.seen.append(float(trainer.callback_metrics[self.name]))


def _fit(objective, epochs, split, with_validation=True, extra=(), lr=1e-3):
    seeded(0)
    valuation = DataValuation(objective)
    val = loader(split.x_valid, split.y_valid, shuffle=False) if with_validation else None
    L.Trainer(
        max_epochs=epochs, callbacks=[valuation, *extra], num_sanity_val_steps=0, **trainer_kwargs()
    ).fit(
        ValidatedMLPClassifier(split.x_train.shape[1], split.num_classes, lr=lr),
        loader(split.x_train, split.y_train),
        val,
    )
    return valuation.values


@pytest.mark.parametrize("mode", ["min", "max"])
def test_monitor_window_ends_at_the_best_epoch_between_window_and_max_window(mode):
    """Brute force: the same fit with the whole-trajectory raw mean margin recorded per epoch and
    the validation loss logged; the monitored value is the mean margin up to
    ``clip(argbest(metric[:max_window]) + 1, window, max_window)``."""
    split = make_split("moons", noise=0.2, seed=0, n_train=200, n_valid=60, n_test=60)
    log = MetricLog("val_loss")
    raw = _fit(AUM(window=None, calibration="none"), 8, split, extra=[log])
    cumulative = np.asarray(raw.trajectory)  # mean margin over epochs 1..e, per row
    vl = np.asarray(log.seen) * (1 if mode == "min" else -1)
    window, max_window = 1, 5
    end = int(np.clip(np.argmin(vl[:max_window]) + 1, window, max_window))
    if mode == "min":  # lr 1e-3: the loss still falls after epoch 1, so the extension is exercised
        assert end > window

    monitored = _fit(AUM(window=window, monitor="val_loss", mode=mode, max_window=max_window), 8, split)
    margin = np.asarray(monitored.columns["aum_margin"])
    np.testing.assert_allclose(margin, cumulative[end - 1], rtol=1e-5, atol=1e-6)
    assert set(np.asarray(monitored.columns["aum_window"]).tolist()) == {float(end)}
    expected = calibrate(torch.as_tensor(margin), gate=0.0).numpy()
    np.testing.assert_allclose(monitored.values, expected, rtol=1e-6)
    # the trajectory is frozen after max_window epochs: reading at 5 or 8 epochs gives one answer
    traj = np.asarray(monitored.trajectory)
    np.testing.assert_array_equal(traj[max_window - 1], traj[-1])


def test_monitor_names_the_missing_metric_and_validates_its_arguments():
    split = make_split("moons", noise=0.1, seed=0, n_train=64, n_valid=20, n_test=20)
    with pytest.raises(RuntimeError, match="no metric 'val_loss' was logged.*validation loader"):
        _fit(AUM(window=1, monitor="val_loss"), 1, split, with_validation=False)
    with pytest.raises(ValueError, match="max_window"):
        AUM(window=10, monitor="val_loss", max_window=5)
    with pytest.raises(ValueError, match="window"):
        AUM(window=None, monitor="val_loss")
    with pytest.raises(ValueError, match="mode"):
        AUM(monitor="val_loss", mode="lowest")
    with pytest.raises(ValueError, match="monitor"):
        AUM(monitor="")


def test_monitored_window_resumes_exactly_from_a_checkpoint(tmp_path):
    """6 epochs uninterrupted == stopped after epoch 3 (inside the extended window) and resumed:
    the frozen margins, the best metric and the window's end travel in the checkpoint."""
    split = make_split("moons", noise=0.2, seed=0, n_train=120, n_valid=40, n_test=40)

    def run(epochs, ckpt=None, callbacks=()):
        seeded(0)
        valuation = DataValuation(AUM(window=1, monitor="val_loss", max_window=5))
        trainer = L.Trainer(
            max_epochs=epochs,
            callbacks=[valuation, *callbacks],
            num_sanity_val_steps=0,
            **trainer_kwargs(enable_checkpointing=True, default_root_dir=tmp_path / "root"),
        )
        model = ValidatedMLPClassifier(split.x_train.shape[1], split.num_classes, lr=1e-3)
        train = resumable_loader(split.x_train, split.y_train, batch_size=16)
        trainer.fit(model, train, loader(split.x_valid, split.y_valid, shuffle=False), ckpt_path=ckpt)
        return valuation.values

    full = run(6)
    run(3, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    resumed = run(6, ckpt=str(tmp_path / "last.ckpt"))
    assert float(full.columns["aum_window"][0]) > 3  # the window ended after the interruption
    np.testing.assert_allclose(resumed.values, full.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(resumed.columns["aum_window"], full.columns["aum_window"])
