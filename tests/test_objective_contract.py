"""The callback's behaviour, parametrised over every training-time objective (and the doc-only one).

Each test is a real ``Trainer.fit`` on a small 3-class problem (96 rows, batch 16: 6 steps per
epoch). ``margin`` is the objective written from ``ValuationObjective``'s docstring alone.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    MLP,
    TRAINING_OBJECTIVES,
    WHOLE_SET_METHODS,
    contract_data,
    loader,
    make_objective,
    resumable_loader,
    seeded,
    trainer_kwargs,
)
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_dv import DataValuation, DataValues
from lightning_dv.distributed import RowStatistics, scatter_rows

TESTS = Path(__file__).resolve().parent
STEPS_PER_EPOCH = 6  # 96 rows, batch 16


@pytest.fixture(scope="module")
def data():
    return contract_data(n=96)


def fit(name, data, epochs=2, model=None, loader_=None, callback_kwargs=None, ckpt_path=None, **trainer_kw):
    x, y, xv, yv = data
    model = model or MLP(x.shape[1], 3, hidden=16)
    cb = DataValuation(make_objective(name, xv, yv), **(callback_kwargs or {}))
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=[cb, *trainer_kw.pop("callbacks", [])], **trainer_kwargs(**trainer_kw)
    )
    trainer.fit(model, loader_ or loader(x, y, batch_size=16), ckpt_path=ckpt_path)
    return cb, model


def assert_same_run(a, b, model_a, model_b):
    np.testing.assert_allclose(a.values.values, b.values.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.values.trajectory, b.values.trajectory, rtol=1e-5, atol=1e-6)
    assert a.optimizer_steps == b.optimizer_steps
    for (n, p), (_, q) in zip(model_a.named_parameters(), model_b.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize(
    "name", [*TRAINING_OBJECTIVES, "lossval_subsample", "lossval_learned", "nddv_learned"]
)
@pytest.mark.parametrize("where", ["epoch_end", "mid_epoch"])
def test_resume_is_exact(name, where, data, tmp_path):
    """4 epochs uninterrupted == stopped (at an epoch end, or after step 9 of 24) and resumed."""
    x, y = data[0], data[1]

    def run(epochs, ckpt=None, callbacks=(), seed=0):
        seeded(seed)
        model = MLP(x.shape[1], 3, hidden=16)
        kw = dict(enable_checkpointing=True, default_root_dir=tmp_path / "root", callbacks=list(callbacks))
        return (*fit(name, data, epochs, model, resumable_loader(x, y, batch_size=16), ckpt_path=ckpt, **kw),)

    full, full_model = run(4)
    if where == "epoch_end":
        run(2, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
        ckpt = tmp_path / "last.ckpt"
    else:
        saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=9, save_top_k=-1, filename="mid")
        run(2, callbacks=[saver])
        ckpt = tmp_path / "mid.ckpt"
        assert torch.load(ckpt, weights_only=False)["global_step"] == 9  # inside the second epoch
    resumed, resumed_model = run(4, ckpt=str(ckpt), seed=123)  # must not depend on the global seed
    assert_same_run(full, resumed, full_model, resumed_model)


@pytest.mark.parametrize("name", TRAINING_OBJECTIVES)
def test_gradient_accumulation_steps_once_per_optimizer_step(name, data):
    cb, _ = fit(name, data, epochs=2, accumulate_grad_batches=4)
    if cb.optimizer is not None:
        assert cb.optimizer_steps == 2 * math.ceil(STEPS_PER_EPOCH / 4)
    assert np.isfinite(cb.values.values).all() and cb.values.metadata["epochs"] == 2


@pytest.mark.parametrize("name", TRAINING_OBJECTIVES)
@pytest.mark.parametrize("precision", ["bf16-true", "16-mixed"])
def test_precisions_keep_the_state_fp32(name, precision, data):
    kw = {"precision": precision}
    if precision == "16-mixed":  # Lightning builds no GradScaler on CPU: pass one explicitly
        from lightning.pytorch.plugins import MixedPrecision

        kw = {
            "plugins": [
                MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))
            ]
        }
    cb, model = fit(name, data, epochs=1, **kw)
    assert all(
        t.dtype in (torch.float32, torch.float64)
        for t in model.dv_state.state_dict().values()
        if t.is_floating_point()
    )
    assert np.isfinite(cb.values.values).all()
    assert not np.allclose(cb.values.values, cb.values.values[0])  # rows were valued


class ManualMLP(MLP):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        idx, x, y = batch
        out = self(x)
        loss = self.valuation_loss(self.per_sample_loss(out, y), idx, inputs=x, outputs=out, targets=y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return loss.detach()


@pytest.mark.parametrize("name", TRAINING_OBJECTIVES)
def test_manual_optimization(name, data):
    cb, _ = fit(name, data, epochs=2, model=ManualMLP(data[0].shape[1], 3, hidden=16))
    if cb.optimizer is not None:
        assert cb.optimizer_steps == 2 * STEPS_PER_EPOCH
    assert not np.allclose(cb.values.values, cb.values.values[0])


@pytest.mark.parametrize("name", TRAINING_OBJECTIVES)
def test_second_fit_of_the_same_model(name, data):
    """The state stays on the model (its declared num_rows is checked) and the second fit continues it."""
    seeded(0)
    model = MLP(data[0].shape[1], 3, hidden=16)
    first, _ = fit(name, data, epochs=1, model=model)
    state = model.dv_state
    second, _ = fit(name, data, epochs=2, model=model)
    assert model.dv_state is state and state.num_rows == 96
    assert len(second.values) == 96 and np.isfinite(second.values.values).all()
    assert not np.array_equal(first.values.values, second.values.values)


class NoOutputsMLP(MLP):
    def training_step(self, batch, batch_idx):
        idx, x, y = batch
        return self.valuation_loss(self.per_sample_loss(self(x), y), idx)


@pytest.mark.parametrize("name", TRAINING_OBJECTIVES)
def test_a_missing_argument_is_named_at_the_first_step(name, data):
    objective = make_objective(name, data[2])
    missing = sorted(objective.needs - {"module"})
    with pytest.raises(ValueError, match="needs `" + missing[0] + "`") as err:
        fit(name, data, epochs=1, model=NoOutputsMLP(data[0].shape[1], 3, hidden=16))
    assert all(f"{m}=" in str(err.value) for m in missing)


@pytest.mark.parametrize("name", TRAINING_OBJECTIVES)
def test_export_and_ids_round_trip(name, data, tmp_path):
    x, y = data[0], data[1]
    ids = [f"row-{i}" for i in range(len(x))]
    out = tmp_path / "v.csv"
    cb, _ = fit(
        name,
        data,
        epochs=1,
        loader_=loader(x, y, batch_size=16, ids=ids),
        callback_kwargs={"export_path": out},
    )
    back = DataValues.load(out).sorted_by_row()
    assert back.index.tolist() == list(range(len(x))) and back.ids.tolist() == ids
    np.testing.assert_allclose(back.values, cb.values.sorted_by_row().values, rtol=1e-6)


@pytest.mark.parametrize("reduce_rows", [1 << 18, 6])
def test_row_statistics_match_a_brute_force_reference(reduce_rows, monkeypatch):
    """Random batches with repeated rows over 3 epochs (one checkpoint round trip mid-epoch); the
    epoch end in one all-reduce or in chunks of 6 rows (the chunking of large N)."""
    import lightning_dv.distributed as distributed

    monkeypatch.setattr(distributed, "REDUCE_ROWS", reduce_rows)
    g = torch.Generator().manual_seed(0)
    n, stats = 20, RowStatistics(20, width=2, keep_last=True)
    per_epoch = []
    for epoch in range(3):
        records: dict[int, list] = {}
        for b in range(4):
            rows = torch.randint(0, n, (7,), generator=g)
            vals = torch.randn(7, 2, generator=g)
            stats.update(rows, vals)
            for r, v in zip(rows.tolist(), vals):
                records.setdefault(r, []).append(v)
            if epoch == 1 and b == 1:  # a checkpoint mid-epoch: the partial epoch travels with it
                fresh = RowStatistics(n, width=2, keep_last=True)
                fresh.load_state_dict(stats.state_dict())
                stats = fresh
        per_epoch.append({r: torch.stack(v).mean(0) for r, v in records.items()})
        seen = stats.reduce()
        assert seen.nonzero().reshape(-1).tolist() == sorted(records)
    for r in range(n):
        means = [e[r] for e in per_epoch if r in e]
        assert int(stats.epochs[r]) == len(means)
        if means:
            torch.testing.assert_close(stats.mean()[r], torch.stack(means).mean(0))
            torch.testing.assert_close(stats.last[r], means[-1] if r in per_epoch[-1] else stats.last[r])


def test_scatter_rows_is_the_one_scatter():
    dense, seen = scatter_rows(np.array([3, 0, 3]), np.array([1.0, 2.0, 1.0]), 5)
    assert seen.tolist() == [True, False, False, True, False] and dense[0] == 2.0 and dense[3] == 1.0
    with pytest.raises(ValueError, match="exactly one value per row"):
        scatter_rows(np.array([0, 0]), np.array([1.0, 2.0]), 2, each_once=True)
    with pytest.raises(ValueError, match="outside"):
        scatter_rows(np.array([5]), np.array([1.0]), 2)


# -- 2-process DDP: one worker script for every method -----------------------------------------
def run_worker(method, out, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)}
    proc = subprocess.run(
        [sys.executable, str(TESTS / "scripts" / "ddp_worker.py"), method, str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    n = int(args[args.index("--devices") + 1]) if "--devices" in args else 2
    return [torch.load(out / f"d{n}_rank{r}.pt", weights_only=False) for r in range(n)]


SLOW = pytest.mark.slow
DDP_METHODS = [
    "aum",  # the default suite runs one 2-process fit
    *(
        pytest.param(m, marks=SLOW)
        for m in ("lossval", "lossval_learned", "nddv", "nddv_learned", "margin", *WHOLE_SET_METHODS)
    ),
]


@pytest.mark.parametrize("method", DDP_METHODS)
def test_ddp_two_processes_agree_and_export_every_row_once(method, tmp_path):
    """101 rows over 2 ranks (one padded duplicate): identical values and models, every row once."""
    r0, r1 = run_worker(method, tmp_path)
    torch.testing.assert_close(r0["values"], r1["values"], rtol=0, atol=0)
    assert r0["rows"].tolist() == list(range(101))
    for k in r0["model"]:
        torch.testing.assert_close(r0["model"][k], r1["model"][k], rtol=0, atol=0)
    if r0["state"] is not None:
        for k in r0["state"]:
            torch.testing.assert_close(r0["state"][k], r1["state"][k], rtol=0, atol=0, msg=k)
        assert r0["global_step"] == 2 * math.ceil(51 / 8)  # 51 rows per rank, batch 8
    df = pd.read_csv(tmp_path / "values.csv", skiprows=1)  # first line: the # lightning-dv header
    assert sorted(df["row"].tolist()) == list(range(101))
    np.testing.assert_allclose(df.sort_values("row")["value"].to_numpy(), r0["values"].numpy(), rtol=1e-6)
    if r0["state"] is not None:  # visits summed over ranks: 2 epochs x (101 rows + the padded duplicate)
        assert df["visits"].sum() == 2 * 102 and (df["visits"] >= 2).all()
    if method in ("aum", "margin"):  # each row counted once per epoch, the padded one included
        assert (r0["state"]["margin.epochs"] == 2).all()
