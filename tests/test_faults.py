"""Nothing silently wrong (issue 11): each misuse or fault either works or fails with a clear message.

docs/faults.md lists every case with its test here.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import lightning as L
import numpy as np
import pytest
import torch
from helpers import MLP, loader, seeded, trainer_kwargs
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, TensorDataset

from lightning_dv import NDDV, DataValuation, DataValues, IndexedDataset, LossVal

N, D, C = 200, 4, 3


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    x_val = torch.randn(40, D, generator=g)
    y_val = (x_val[:, 0] > 0).long() + (x_val[:, 1] > 0.5).long()
    return x, y, x_val, y_val


def fit(model, cb, x, y, epochs=1, batch_size=32, val=None, trainer=None, drop_last=False):
    seeded(0)
    trainer = trainer or L.Trainer(max_epochs=epochs, callbacks=[cb], **trainer_kwargs())
    ds = IndexedDataset(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)))
    trainer.fit(model, DataLoader(ds, batch_size=batch_size, drop_last=drop_last), val)
    return trainer


class Variant(MLP):
    """The example classifier with one deliberate misuse in its steps."""

    def __init__(self, mode="plain", shared_validation=False):
        torch.manual_seed(0)  # same initial model in every run that is compared
        super().__init__(D, C)
        self.mode, self.shared_validation = mode, shared_validation
        self.val_checks: list[tuple[float, float]] = []
        self.train_steps = 0

    def training_step(self, batch, batch_idx):
        self.train_steps += 1
        idx, x, y = batch
        if self.mode.startswith("nan_features"):
            x = x.clone()
            x[idx % 50 == 7 if self.mode == "nan_features" else idx == 197] = float("nan")
            out = self(torch.nan_to_num(x))  # the model imputes, the loss stays finite
        else:
            out = self(x)
        per = self.per_sample_loss(out, y)
        if self.mode == "no_call":
            return per.mean()
        if self.mode == "detached":
            per = per.detach()
        if self.mode == "arange_idx":
            idx = torch.arange(len(idx))
        if self.mode == "labels_idx":
            idx = y
        if self.mode == "bool_idx":
            idx = idx > 3
        if self.mode == "int_loss":
            per = (per * 100).long()
        if self.mode == "duplicate":
            idx, x, y, out, per = (torch.cat([t, t[:1]]) for t in (idx, x, y, out, per))
        if self.mode == "squeezed" and len(idx) == 1:
            per = per.squeeze()
        loss = self.valuation_loss(per, idx, inputs=x, outputs=out, targets=y)
        return per.mean() if self.mode == "result_dropped" else loss

    def validation_step(self, batch, batch_idx):
        idx, x, y = batch
        out = self(x)
        per = self.per_sample_loss(out, y)
        loss = (
            self.valuation_loss(per, idx, inputs=x, outputs=out, targets=y)
            if self.shared_validation
            else per.mean()
        )
        self.val_checks.append((float(loss), float(per.mean())))
        return loss


# -- 1. valuation_loss outside training ---------------------------------------------------------
def test_shared_step_validation_returns_plain_loss_and_leaves_values_alone(data):
    x, y, x_val, y_val = data
    val = DataLoader(IndexedDataset(TensorDataset(x_val, y_val)), batch_size=20)
    runs = {}
    for shared in (False, True):
        model = Variant(shared_validation=shared)
        cb = DataValuation(NDDV(), record_trajectory=False)
        fit(model, cb, x, y, epochs=2, val=val)
        runs[shared] = (cb.values, model)
    ref, got = runs[False][0], runs[True][0]
    np.testing.assert_array_equal(got.values, ref.values)  # NDDV's records: the 200 training rows only
    assert (got.columns["visits"] == 2).all()
    assert all(a == pytest.approx(b) for a, b in runs[True][1].val_checks)  # plain mean in validation


# -- 2. non-finite features with a finite loss ---------------------------------------------------
def test_nan_features_name_only_the_guilty_rows_first_batch(data, tmp_path):
    x, y, x_val, _ = data
    cb = DataValuation(LossVal(validation=x_val), export_path=tmp_path / "v.csv")
    with pytest.raises(FloatingPointError, match="`inputs` are NaN") as info:
        fit(Variant("nan_features"), cb, x, y)
    named = [int(t) for t in str(info.value).split("row(s): ")[1].split(" ")[0].split(", ")]
    assert named == [7]  # the first batch holds rows 0..31; only row 7 has NaN features
    assert not (tmp_path / "v.csv").exists()


def test_nan_features_in_the_last_batch_export_nothing(data, tmp_path):
    x, y, x_val, _ = data
    cb = DataValuation(LossVal(validation=x_val), export_path=tmp_path / "v.csv")
    with pytest.raises(FloatingPointError, match=r"1 row\(s\): 197 "):
        fit(Variant("nan_features_last"), cb, x, y)
    assert not (tmp_path / "v.csv").exists()


# -- 3. rows never valued ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "loader_kw", "missing"),
    [("plain", {"drop_last": True}, N % 32), ("arange_idx", {}, N - 32), ("labels_idx", {}, N - C)],
)
def test_rows_never_valued_are_counted_warned_and_exported(data, tmp_path, mode, loader_kw, missing):
    x, y, x_val, _ = data
    cb = DataValuation(LossVal(validation=x_val), export_path=tmp_path / "v.csv")
    with pytest.warns(UserWarning, match=f"{missing} of {N} training rows were never valued"):
        fit(Variant(mode), cb, x, y, **loader_kw)
    visits = DataValues.load(tmp_path / "v.csv").columns["visits"]
    assert int((visits == 0).sum()) == missing
    assert visits.sum() == (N - N % 32 if loader_kw else N)


def test_no_step_calling_valuation_loss_warns_after_the_first_epoch_and_fails_at_fit_end(data, tmp_path):
    x, y, x_val, _ = data
    cb = DataValuation(LossVal(validation=x_val), export_path=tmp_path / "v.csv")
    with pytest.warns(UserWarning, match="in epoch 0, no training step called `valuation_loss`"):
        with pytest.raises(RuntimeError, match="no training step called `valuation_loss`"):
            fit(Variant("no_call"), cb, x, y, epochs=2)
    assert not (tmp_path / "v.csv").exists()  # not a file of initial values


def test_no_training_batch_is_named(data):
    x, y, x_val, _ = data
    cb = DataValuation(LossVal(validation=x_val))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=0, callbacks=[cb], **trainer_kwargs())
    with pytest.raises(RuntimeError, match="no training batch ran"):
        fit(Variant(), cb, x, y, trainer=trainer)


def test_visits_are_checkpointed(data, tmp_path):
    x, y, x_val, _ = data
    model = Variant()
    trainer = fit(model, DataValuation(LossVal(validation=x_val)), x, y)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    cb = DataValuation(LossVal(validation=x_val))
    seeded(0)
    L.Trainer(max_epochs=2, callbacks=[cb], **trainer_kwargs()).fit(
        Variant(), loader(x, y, shuffle=False), ckpt_path=tmp_path / "a.ckpt"
    )
    assert (cb.values.columns["visits"] == 2).all()


# -- 4. a detached per-sample loss ----------------------------------------------------------------
def test_detached_loss_is_refused_at_the_first_step(data):
    x, y, x_val, _ = data
    model = Variant("detached")
    with pytest.raises(RuntimeError, match="detached"):
        fit(model, DataValuation(LossVal(validation=x_val)), x, y)
    assert model.train_steps == 1


# -- 6. a reused callback; a continued fit ---------------------------------------------------------
def test_reused_callback_starts_a_new_run_for_a_new_model(data):
    x, y, x_val, _ = data
    cb = DataValuation(LossVal(validation=x_val, learn_weights=True))
    fit(Variant(), cb, x, y, epochs=2)
    assert cb.values.metadata["optimizer_steps"] == 14
    fit(Variant(), cb, x[:100], y[:100], epochs=1)  # another model, another dataset size
    v = cb.values
    assert v.metadata["epochs"] == 1 and v.metadata["optimizer_steps"] == 4
    assert v.trajectory.shape == (1, 100) and (v.columns["visits"] == 1).all()


def test_fitting_the_same_model_again_continues_the_weights_optimizer(data):
    x, y, x_val, _ = data
    model = Variant()
    cb = DataValuation(LossVal(validation=x_val, learn_weights=True))
    fit(model, cb, x, y, epochs=1)
    fit(model, cb, x, y, epochs=1)
    # Adam's moments carried on (the row-sparse Adam keeps them, with its step, in the weights)
    assert int(model.dv_state.weights.step) == 14 and (model.dv_state.weights.exp_avg_sq > 0).any()
    v = cb.values
    assert v.metadata["optimizer_steps"] == 14 and v.trajectory.shape[0] == 2
    assert (v.columns["visits"] == 2).all()


# -- 7. the export path on a second fit ------------------------------------------------------------
def test_second_fit_checks_the_export_path_before_training(data, tmp_path):
    x, y, x_val, _ = data
    model = Variant()
    cb = DataValuation(LossVal(validation=x_val), export_path=tmp_path / "v.csv")
    fit(model, cb, x, y)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cb.export_path = blocker / "v.csv"
    before = model.train_steps
    with pytest.raises(PermissionError, match="export_path"):
        fit(model, cb, x, y)
    assert model.train_steps == before


# -- 8. permissions and temporaries of the export ----------------------------------------------------
def test_export_follows_the_umask_and_keeps_the_replaced_files_mode(tmp_path):
    old = os.umask(0o022)
    try:
        DataValues([1.0, 2.0]).save(tmp_path / "a.csv")
        DataValues([1.0, 2.0]).save(tmp_path / "a.npz")
        assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "a.npz").stat().st_mode) == 0o644
        os.chmod(tmp_path / "a.csv", 0o640)
        DataValues([3.0]).save(tmp_path / "a.csv")
        assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_temporaries_of_a_killed_export_are_removed_by_the_next_export(tmp_path):
    # A real process SIGKILLed in the middle of writing (io.py needs only the standard library).
    io_path = os.path.join(os.path.dirname(__file__), "..", "lightning_dv", "io.py")
    script = textwrap.dedent(
        f"""
        import importlib.util, pathlib, time
        spec = importlib.util.spec_from_file_location("dvio", {os.path.abspath(io_path)!r})
        io = importlib.util.module_from_spec(spec); spec.loader.exec_module(io)
        def write(p):
            p.write_text("half a file")
            pathlib.Path({str(tmp_path / "ready")!r}).write_text("")
            time.sleep(60)
        io.atomic_write({str(tmp_path / "values.csv")!r}, write)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 30
        while not (tmp_path / "ready").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "ready").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".values.csv.")]
    assert len(left) == 1  # the kill left its temporary file
    DataValues([1.0]).save(tmp_path / "values.csv")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".values.csv.")] == []
    assert DataValues.load(tmp_path / "values.csv").values.tolist() == [1.0]


# -- 11. SIGINT / SIGTERM during fit ------------------------------------------------------------------
class SignalAt(Callback):
    def __init__(self, sig, step):
        self.sig, self.step = sig, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)
            time.sleep(0.2)  # let the handler run


@pytest.mark.parametrize(("sig", "exc"), [(signal.SIGINT, SystemExit), (signal.SIGTERM, SIGTERMException)])
def test_interrupted_fit_exports_partial_values(data, tmp_path, sig, exc):
    x, y, x_val, _ = data
    out = tmp_path / "v.npz"
    cb = DataValuation(LossVal(validation=x_val, signal="weights"), export_path=out)
    model = Variant()
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        trainer = L.Trainer(max_epochs=5, callbacks=[cb, SignalAt(sig, 10)], **trainer_kwargs())
        with pytest.raises(exc):
            fit(model, cb, x, y, trainer=trainer)
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    assert cb.values.metadata["partial"] is True
    saved = DataValues.load(out)
    np.testing.assert_allclose(saved.values, model.dv_state.weights.all().numpy())
    assert saved.values.std() > 0  # the values reached so far, not the initial ones
    assert int(cb.values.columns["visits"].sum()) == N + 3 * 32  # ten steps: one epoch of 7, then 3


def test_a_failing_fit_still_exports_nothing(data, tmp_path):
    x, y, x_val, _ = data
    cb = DataValuation(LossVal(validation=x_val), export_path=tmp_path / "v.csv")
    with pytest.raises(RuntimeError):
        fit(Variant("detached"), cb, x, y)
    assert not (tmp_path / "v.csv").exists()


# -- messages --------------------------------------------------------------------------------------------
def test_lossval_validation_arguments_are_checked_at_construction(data):
    x, y, x_val, y_val = data
    bad = x_val.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"validation.*NaN or infinite values in 1 row\(s\): 3"):
        LossVal(validation=(bad, y_val))
    with pytest.raises(ValueError, match="`validation` is empty"):
        LossVal(validation=[])
    with pytest.raises(ValueError, match="tuple of 3 parts"):
        LossVal(validation=(x_val, y_val, y_val))
    with pytest.raises(ValueError, match="40 inputs but 39 labels"):
        LossVal(validation=(x_val, y_val[:-1]))


def test_empty_training_set_is_named(data):
    x, y, x_val, _ = data
    with pytest.raises(ValueError, match=r"training dataset is empty \(0 rows\)"):
        fit(Variant(), DataValuation(LossVal(validation=x_val)), x[:0], y[:0])


def test_batch_of_one_squeezed_to_a_scalar_is_named(data):
    x, y, x_val, _ = data
    with pytest.raises(ValueError, match=r"batch of one row was squeezed.*reshape\(-1\)"):
        fit(Variant("squeezed"), DataValuation(LossVal(validation=x_val)), x[:33], y[:33])


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        (lambda xv, yv: (xv, yv + 5), r"meta set has labels in \[5, 7\] but the model outputs 3 classes"),
        (lambda xv, yv: (xv[:, :3], yv), "meta set does not fit the model"),
        (lambda xv, yv: (torch.where(xv > 2, float("nan"), xv), yv), "NDDV's meta set\\) inputs holds NaN"),
    ],
)
def test_nddv_meta_set_errors_name_the_meta_set(data, meta, match):
    x, y, x_val, y_val = data
    with pytest.raises(ValueError, match=match):
        fit(Variant(), DataValuation(NDDV(weighting="meta", meta=meta(x_val, y_val))), x, y)


def test_empty_inputs_of_the_training_free_methods():
    from lightning_dv import EcoVal, complexity_gap

    with pytest.raises(ValueError, match="`features` has no rows"):
        complexity_gap(np.zeros((0, 3)), np.zeros(0))
    g = np.random.default_rng(0)
    x, yy = g.normal(size=(60, 3)), np.arange(60) % 2
    eco = EcoVal(n_clusters=2, n_subsets=6, steps=20)
    eco.fit(x, yy, x[:20], yy[:20])
    with pytest.raises(ValueError, match="`x` has no rows"):
        eco.value(np.zeros((0, 3)), np.zeros(0, dtype=int))


# -- further misuses ------------------------------------------------------------------------------------
def test_module_without_the_mixin_is_refused_before_training(data):
    x, y, x_val, _ = data

    class Plain(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(D, C)

        def training_step(self, batch, batch_idx):
            _, xb, yb = batch
            return torch.nn.functional.cross_entropy(self.net(xb), yb)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(TypeError, match="add `DataValuationMixin`"):
        fit(Plain(), DataValuation(LossVal(validation=x_val)), x, y)


def test_boolean_idx_and_integer_loss_are_refused(data):
    x, y, x_val, _ = data
    with pytest.raises(ValueError, match="boolean tensor"):
        fit(Variant("bool_idx"), DataValuation(LossVal(validation=x_val)), x, y)
    with pytest.raises(TypeError, match="floating-point loss"):
        fit(Variant("int_loss"), DataValuation(LossVal(validation=x_val)), x, y)


def test_duplicate_rows_in_a_batch_are_valued_and_counted(data):
    x, y, x_val, _ = data
    cb = DataValuation(LossVal(validation=x_val))
    fit(Variant("duplicate"), cb, x, y)
    visits = cb.values.columns["visits"]
    assert visits.sum() == N + 7 and visits.max() == 2  # sampling with replacement counts twice


def test_int32_idx_works_like_int64(data):
    x, y, x_val, _ = data
    runs = []
    for dtype in (torch.int64, torch.int32):
        ds = IndexedDataset(TensorDataset(x, y))

        def collate(items, dtype=dtype):
            idx = torch.tensor([it[0] for it in items], dtype=dtype)
            return idx, torch.stack([it[1] for it in items]), torch.stack([it[2] for it in items])

        cb = DataValuation(LossVal(validation=x_val))
        seeded(0)
        L.Trainer(max_epochs=1, callbacks=[cb], **trainer_kwargs()).fit(
            Variant(), DataLoader(ds, batch_size=32, collate_fn=collate)
        )
        runs.append(cb.values.values)
    np.testing.assert_array_equal(runs[0], runs[1])


def test_two_callbacks_are_refused(data):
    x, y, x_val, _ = data
    cbs = [DataValuation(LossVal(validation=x_val)), DataValuation(NDDV())]
    trainer = L.Trainer(max_epochs=1, callbacks=cbs, **trainer_kwargs())
    with pytest.raises(ValueError, match="only one DataValuation callback"):
        fit(Variant(), cbs[0], x, y, trainer=trainer)


def test_integer_zero_one_mask_as_known_noisy_is_refused(data):
    x, y, x_val, _ = data
    mask01 = (torch.arange(N) % 5 == 0).long()  # reads as rows {0, 1} if taken for indices
    with pytest.raises(ValueError, match="look like a 0/1 mask"):
        fit(Variant(), DataValuation(LossVal(validation=x_val), known_noisy=mask01), x, y)


def test_non_tensor_inputs_to_lossval_are_named(data):
    x, y, x_val, _ = data

    class ListInputs(Variant):
        def training_step(self, batch, batch_idx):
            idx, xb, yb = batch
            out = self(xb)
            return self.valuation_loss(
                self.per_sample_loss(out, yb), idx, inputs=[xb], outputs=out, targets=yb
            )

    with pytest.raises(TypeError, match="must be one tensor; got list"):
        fit(ListInputs(), DataValuation(LossVal(validation=x_val)), x, y)


def test_subset_of_an_indexed_dataset_is_explained(data):
    x, y, x_val, _ = data
    full = IndexedDataset(TensorDataset(x, y))
    sub = torch.utils.data.Subset(full, list(range(100, 200)))
    cb = DataValuation(LossVal(validation=x_val))
    seeded(0)
    with pytest.raises(IndexError, match=r"IndexedDataset\(Subset"):
        L.Trainer(max_epochs=1, callbacks=[cb], **trainer_kwargs()).fit(
            Variant(), DataLoader(sub, batch_size=32)
        )


def test_valuation_loss_result_not_returned_is_refused_at_the_first_step(data):
    x, y, x_val, _ = data
    model = Variant("result_dropped")
    with pytest.raises(RuntimeError, match="did not reach the loss"):
        fit(model, DataValuation(LossVal(validation=x_val, learn_weights=True)), x, y)
    assert model.train_steps == 1


def test_fixed_weights_value_the_rows_even_when_the_result_is_dropped(data):
    """LossVal's default reads the rows' gradient inside ``valuation_loss``: nothing waits on a backward."""
    x, y, x_val, _ = data
    dropped = DataValuation(LossVal(validation=x_val))
    fit(Variant("result_dropped"), dropped, x, y)
    returned = DataValuation(LossVal(validation=x_val))
    fit(Variant(), returned, x, y)
    np.testing.assert_array_equal(dropped.values.values, returned.values.values)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_idx_with_a_cuda_model_and_out_of_range_rows_on_cuda(data):
    x, y, x_val, _ = data

    class CpuIdx(Variant):
        def training_step(self, batch, batch_idx):
            idx, xb, yb = batch
            out = self(xb)
            shift = 1000 if self.mode == "out_of_range" else 0
            return self.valuation_loss(
                self.per_sample_loss(out, yb), idx.cpu() + shift, inputs=xb, outputs=out, targets=yb
            )

    cb = DataValuation(LossVal(validation=x_val))
    seeded(0)
    kw = {**trainer_kwargs(), "accelerator": "gpu", "deterministic": False}
    L.Trainer(max_epochs=1, callbacks=[cb], **kw).fit(CpuIdx(), loader(x, y, shuffle=False))
    assert (cb.values.columns["visits"] == 1).all()
    with pytest.raises(IndexError, match="outside the training set"):  # not a device-side assert
        L.Trainer(max_epochs=1, callbacks=[DataValuation(LossVal(validation=x_val))], **kw).fit(
            CpuIdx("out_of_range"), loader(x, y, shuffle=False)
        )
