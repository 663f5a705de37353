"""Every bad input named in the issue gets a clear error naming the argument and the fix."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from helpers import MLP, loader, seeded, trainer_kwargs

from lightning_dv import DataValuation, DataValues, LossVal
from lightning_dv.datasets import make_split


@pytest.fixture(scope="module")
def split():
    return make_split("iris", noise=0.1, seed=0)


class Faulty(MLP):
    def __init__(self, d, c, mode):
        super().__init__(d, c)
        self.mode = mode

    def training_step(self, batch, batch_idx):
        idx, x, y = batch
        out = self(x)
        per = self.per_sample_loss(out, y)
        if self.mode == "no_idx":
            return self.valuation_loss(per, None, inputs=x)
        if self.mode == "float_idx":
            return self.valuation_loss(per, x, inputs=x)
        if self.mode == "out_of_range":
            return self.valuation_loss(per, idx + 10_000, inputs=x)
        if self.mode == "reduced":
            return self.valuation_loss(per.mean(), idx, inputs=x)
        if self.mode == "2d":
            return self.valuation_loss(torch.stack([per, per], 1), idx, inputs=x)
        if self.mode == "nan":
            per = torch.where(idx % 7 == 3, torch.full_like(per, float("nan")), per)
            return self.valuation_loss(per, idx, inputs=x)
        raise AssertionError(self.mode)


def run(split, model, cb, x=None, y=None):
    seeded(0)
    trainer = L.Trainer(max_epochs=1, callbacks=[cb], **trainer_kwargs())
    trainer.fit(model, loader(split.x_train if x is None else x, split.y_train if y is None else y))
    return trainer


@pytest.mark.parametrize(
    ("mode", "exc", "match"),
    [
        ("no_idx", ValueError, "IndexedDataset"),
        ("float_idx", ValueError, "IndexedDataset"),
        ("out_of_range", IndexError, "outside the training set"),
        ("reduced", ValueError, "reduction='none'"),
        ("2d", ValueError, r"shape \(batch,\)"),
        ("nan", FloatingPointError, "NaN or infinite for .* row"),
    ],
)
def test_bad_step_arguments(split, mode, exc, match):
    cb = DataValuation(LossVal(validation=split.x_valid))
    with pytest.raises(exc, match=match):
        run(split, Faulty(4, 3, mode), cb)


def test_nan_error_names_the_rows(split):
    cb = DataValuation(LossVal(validation=split.x_valid))
    with pytest.raises(FloatingPointError) as info:
        run(split, Faulty(4, 3, "nan"), cb)
    named = [int(t) for t in str(info.value).split(": ")[1].split(".")[0].split(", ")]
    assert named and all(r % 7 == 3 for r in named)


def test_feature_dimension_mismatch(split):
    cb = DataValuation(LossVal(validation=np.zeros((10, 7), np.float32)))
    with pytest.raises(ValueError, match="validation features have 7"):
        run(split, MLP(4, 3), cb)


def test_empty_validation_set():
    with pytest.raises(ValueError, match="`validation` is empty"):
        LossVal(validation=np.zeros((0, 4), np.float32))


def test_bad_objective_and_options():
    with pytest.raises(TypeError, match="ValuationObjective"):
        DataValuation("lossval")
    with pytest.raises(ValueError, match="mass='nope'"):
        LossVal(validation=np.zeros((5, 2)), mass="nope")
    with pytest.raises(ValueError, match="must end in one of"):
        DataValuation(LossVal(validation=np.zeros((5, 2))), export_path="values.xlsx")


def test_dataset_size_changed_between_fits(split):
    model = MLP(4, 3)
    cb = DataValuation(LossVal(validation=split.x_valid))
    run(split, model, cb)
    with pytest.raises(ValueError, match="dataset size changed"):
        run(split, model, cb, x=split.x_train[:20], y=split.y_train[:20])


def test_unwritable_export_path_fails_before_training_and_keeps_files(tmp_path, split):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cb = DataValuation(LossVal(validation=split.x_valid), export_path=blocker / "values.csv")
    model = MLP(4, 3)
    with pytest.raises(PermissionError, match="export_path"):
        run(split, model, cb)
    assert blocker.read_text() == "not a folder"


def test_previous_export_survives_a_failed_fit(tmp_path, split):
    out = tmp_path / "values.csv"
    DataValues([1.0, 2.0]).save(out)
    before = out.read_bytes()
    cb = DataValuation(LossVal(validation=split.x_valid), export_path=out)
    with pytest.raises(FloatingPointError):
        run(split, Faulty(4, 3, "nan"), cb)
    assert out.read_bytes() == before


def test_no_callback_falls_back_to_mean_loss_with_warning(split):
    seeded(0)
    with pytest.warns(UserWarning, match="no DataValuation callback"):
        L.Trainer(max_epochs=1, **trainer_kwargs()).fit(MLP(4, 3), loader(split.x_train, split.y_train))


def test_spawn_and_fork_strategies_are_refused_clearly(split):
    # ddp_fork uses the same multiprocessing launcher as ddp_spawn (spawn needs shared memory CI may lack)
    cb = DataValuation(LossVal(validation=split.x_valid))
    trainer = L.Trainer(max_epochs=1, callbacks=[cb], **trainer_kwargs(strategy="ddp_fork", devices=1))
    with pytest.raises(Exception, match='strategy="ddp"'):
        trainer.fit(MLP(4, 3), loader(split.x_train, split.y_train))
