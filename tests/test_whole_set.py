"""WholeSetValuation and its specialisations, parametrised over every whole-set method: ids,
known_noisy detection scalars read back from TensorBoard event files, export checks at construction,
one export from rank zero before training, a second fit, and the error naming registered methods."""

from __future__ import annotations

import os

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dv import ComplexityGap, EcoVal, LossVal, complexity_gap
from lightning_dv.callbacks import ComplexityGapValuation, DataValuation, EcoValValuation, WholeSetValuation
from lightning_dv.data import IndexedDataset
from lightning_dv.methods import registry
from lightning_dv.metrics import detection_auroc, kmeans_f1
from lightning_dv.values import DataValues

N, FLIPPED = 60, [2, 11, 25, 40, 53]


def blobs(seed: int = 0):
    """Two separated classes with five flipped labels; a clean validation set."""
    rng = np.random.default_rng(seed)
    y = np.arange(N) % 2
    x = (rng.normal(0, 1, (N, 2)) + 3.0 * y[:, None]).astype(np.float32)
    y_noisy = y.copy()
    y_noisy[FLIPPED] = 1 - y_noisy[FLIPPED]
    yv = np.arange(20) % 2
    xv = (rng.normal(0, 1, (20, 2)) + 3.0 * yv[:, None]).astype(np.float32)
    return x, y_noisy, xv, yv


X, Y, XV, YV = blobs()
ECO = dict(n_clusters=6, n_subsets=40, steps=30, progress=False)

#: every whole-set method: (callback factory, the same method called directly)
METHODS = {
    "complexity_gap": (
        lambda **kw: ComplexityGapValuation(seed=1, **kw),
        lambda: complexity_gap(X, Y, seed=1),
    ),
    "ecoval": (
        lambda **kw: EcoValValuation(EcoVal(**ECO), (XV, YV), **kw),
        lambda: EcoVal(**ECO).fit(X, Y, XV, YV),
    ),
}


def test_every_registered_whole_set_method_is_tested():
    assert sorted(METHODS) == sorted(registry.names("whole_set"))


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 2)

    def training_step(self, batch, batch_idx):
        _, x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(ids=None) -> DataLoader:
    ds = IndexedDataset(TensorDataset(torch.tensor(X), torch.tensor(Y)), ids=ids)
    return DataLoader(ds, batch_size=16, shuffle=True)


def fit(callback, logger=False, extra=()) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[callback, *extra],
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), loader(ids=[f"row-{i}" for i in range(N)]))
    return trainer


@pytest.mark.parametrize("name", sorted(METHODS))
def test_values_keep_ids_and_equal_the_method_called_directly(name, tmp_path):
    make, direct = METHODS[name]
    cb = make(export_path=tmp_path / "v.csv")
    fit(cb)
    v = cb.values.sorted_by_row()
    assert v.index.tolist() == list(range(N))
    assert list(v.ids) == [f"row-{i}" for i in range(N)]
    np.testing.assert_array_equal(v.values, direct().values)  # rows put back in dataset order
    back = DataValues.load(tmp_path / "v.csv").sorted_by_row()
    assert list(back.ids) == list(v.ids)
    np.testing.assert_allclose(back.values, v.values)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_known_noisy_logs_detection_scalars_to_tensorboard(name, tmp_path):
    make, _ = METHODS[name]
    cb = make(known_noisy=FLIPPED)
    logger = TensorBoardLogger(tmp_path, name="tb")
    fit(cb, logger=logger)
    acc = EventAccumulator(logger.log_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    acc.Reload()
    prefix = f"data_values/{name}"
    assert f"{prefix}/histogram" in acc.Tags()["histograms"]
    mask = torch.zeros(N, dtype=torch.bool)
    mask[FLIPPED] = True
    v = torch.as_tensor(cb.values.sorted_by_row().values)
    logged = {
        tag: acc.Scalars(f"{prefix}/{tag}")[-1].value for tag in ("detection_f1", "detection_auroc", "mean")
    }
    assert logged["detection_auroc"] == pytest.approx(detection_auroc(v, mask), abs=1e-6)
    assert logged["detection_f1"] == pytest.approx(kmeans_f1(v, mask), abs=1e-6)
    assert logged["mean"] == pytest.approx(float(v.mean()), rel=1e-6)  # logged as float32
    assert logged["detection_auroc"] > 0.7  # the flipped rows really stand out


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_bad_export_path_fails_in_the_constructor(name):
    make, _ = METHODS[name]
    with pytest.raises(ValueError, match=r"export_path='v.txt'.*\.csv"):
        make(export_path="v.txt")


class ExportProbe(L.Callback):
    """Records whether the export exists when training starts, and its modification time."""

    def __init__(self, path) -> None:
        self.path = path
        self.seen: list[int] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.seen.append(os.stat(self.path).st_mtime_ns)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_export_is_written_once_before_training_and_rewritten_by_a_second_fit(name, tmp_path):
    make, _ = METHODS[name]
    path = tmp_path / "out" / "v.npz"
    cb = make(export_path=path)
    probe = ExportProbe(path)
    fit(cb, extra=[probe])
    assert len(probe.seen) == 1 and os.stat(path).st_mtime_ns == probe.seen[0]  # not written again at the end
    assert sorted(p.name for p in path.parent.iterdir()) == ["v.npz"]  # no temporary files left
    first = cb.values.sorted_by_row().values
    os.utime(path, ns=(0, 0))
    fit(cb, extra=[probe])  # a second fit with the same callback values the rows afresh
    assert os.stat(path).st_mtime_ns > 0
    np.testing.assert_array_equal(cb.values.sorted_by_row().values, first)


def test_any_whole_set_method_runs_and_a_wrong_one_names_the_registered_methods(tmp_path):
    class LabelMean:
        name = "label_mean"

        def fit(self, features, labels):
            return DataValues(-features[:, 0].double().cpu().numpy(), method=self.name)

    cb = WholeSetValuation(LabelMean(), export_path=tmp_path / "v.parquet")
    fit(cb)
    assert cb.prefix == "data_values/label_mean" and cb.values.method == "label_mean"
    np.testing.assert_allclose(cb.values.sorted_by_row().values, -X[:, 0], rtol=1e-6)
    with pytest.raises(TypeError, match=r"ComplexityGap \(complexity_gap\), EcoVal \(ecoval\).*") as err:
        WholeSetValuation(LossVal(validation=(torch.tensor(XV), torch.tensor(YV))))
    assert "use DataValuation" in str(err.value)
    with pytest.raises(TypeError, match=r"use WholeSetValuation.*LossVal \(lossval\), NDDV \(nddv\)"):
        DataValuation(ComplexityGap())


def test_registry_resolves_every_method_and_feeds_the_benchmark():
    from benchmarks.registry import METHODS as BENCH

    for name in registry.names():
        spec = registry.get(name)
        assert spec.load().__name__ == spec.class_name
    for name in (
        "lossval",
        "nddv",
        "aum",
        "complexity_gap",
        "ecoval",
    ):  # the benchmark runs them by registry name
        assert BENCH[name].kind == "project" and name in registry.names()
    assert set(registry.names()) == set(registry.names("objective")) | set(registry.names("whole_set"))
    with pytest.raises(ValueError, match="registered methods: lossval, nddv"):
        registry.get("shapley")
