"""LossVal through real Trainer.fit runs: logging, export, optimizer stepping, detection.

Behaviour shared by every objective (resume, accumulation, precisions, manual optimization,
second fit, ids) is tested once for all of them in tests/test_objective_contract.py.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from helpers import MLP, digits_split, loader, seeded, trainer_kwargs
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

from lightning_dv import DataValuation, DataValues, LossVal, detection_auroc
from lightning_dv.datasets import make_split


@pytest.fixture(scope="module")
def small():
    return make_split("breast_cancer", noise=0.1, seed=0)


def fit(split, epochs=2, callback_kwargs=None, objective_kwargs=None, model=None, loader_=None, **trainer_kw):
    seeded(0)
    model = model or MLP(split.x_train.shape[1], max(split.num_classes, 1))
    cb = DataValuation(
        LossVal(validation=(split.x_valid, split.y_valid), **(objective_kwargs or {})),
        **(callback_kwargs or {}),
    )
    trainer = L.Trainer(max_epochs=epochs, callbacks=[cb], **trainer_kwargs(**trainer_kw))
    trainer.fit(model, loader_ or loader(split.x_train, split.y_train))
    return cb, trainer, model


def test_tensorboard_histogram_every_epoch_and_export(tmp_path, small):
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    out = tmp_path / "values.parquet"
    cb, trainer, model = fit(
        small, epochs=3, logger=logger, callback_kwargs={"export_path": out, "known_noisy": small.noisy}
    )
    acc = EventAccumulator(logger.log_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    acc.Reload()
    hist = acc.Histograms("data_values/lossval/histogram")
    assert [h.step for h in hist] == [0, 1, 2]
    assert all(h.histogram_value.num == len(small.x_train) for h in hist)
    for tag in ("mean", "std", "detection_f1", "detection_auroc", "fraction_negative"):
        assert len(acc.Scalars(f"data_values/lossval/{tag}")) == 3
    assert "data_values/lossval/trajectories" in acc.Tags()["images"]
    back = DataValues.load(out)
    np.testing.assert_allclose(back.values, cb.values.values)
    np.testing.assert_allclose(back.values, model.dv_state.trajectory.mean().numpy(), rtol=1e-6)
    assert back.trajectory.shape == (3, len(small.x_train))
    np.testing.assert_allclose(back.trajectory[-1], back.values, rtol=1e-6)
    assert sorted(back.index.tolist()) == list(range(len(small.x_train)))


def test_learned_weights_leave_user_optimizer_and_change(small):
    cb, trainer, model = fit(small, epochs=1, objective_kwargs={"learn_weights": True, "signal": "weights"})
    ours = {id(p) for p in model.dv_state.parameters()}
    for group in trainer.optimizers[0].param_groups:
        assert not any(id(p) in ours for p in group["params"])
    batches = math.ceil(len(small.x_train) / 32)
    assert cb.optimizer_steps == batches
    assert not np.allclose(cb.values.values, 1.0)


def test_other_loggers_get_scalars_and_one_warning(tmp_path, small):
    logger = CSVLogger(str(tmp_path))
    with pytest.warns(UserWarning, match="cannot show histograms"):
        fit(small, epochs=2, logger=logger)
    import pandas as pd

    metrics = pd.read_csv(f"{logger.log_dir}/metrics.csv")
    assert metrics["data_values/lossval/mean"].notna().sum() == 2


def test_plain_load_from_checkpoint_is_strict(tmp_path, small):
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    seeded(0)
    model = MLP(small.x_train.shape[1], small.num_classes)
    cb = DataValuation(LossVal(validation=(small.x_valid, small.y_valid)))
    trainer = L.Trainer(max_epochs=1, callbacks=[cb, ckpt], **trainer_kwargs(enable_checkpointing=True))
    trainer.fit(model, loader(small.x_train, small.y_train))
    loaded = MLP.load_from_checkpoint(tmp_path / "last.ckpt")
    torch.testing.assert_close(loaded.net[0].weight, model.net[0].weight)
    dv_state = torch.load(tmp_path / "last.ckpt", weights_only=False)["lightning_dv_state"]
    torch.testing.assert_close(dv_state["trajectory.total"], model.dv_state.trajectory.total)
    assert not any(k.startswith("weights.") for k in dv_state)  # the default keeps no weights


@pytest.mark.parametrize("precision", ["bf16-mixed"])  # bf16-true: tests/test_objective_contract.py
def test_bf16_keeps_weights_fp32_and_steps_once(small, precision):
    cb, _, model = fit(small, epochs=1, precision=precision, objective_kwargs={"learn_weights": True})
    assert model.dv_state.weights.raw.dtype == torch.float32
    assert cb.optimizer_steps == math.ceil(len(small.x_train) / 32)
    assert np.isfinite(cb.values.values).all() and not np.allclose(cb.values.values, 1.0)


def test_regression_flags_corrupted_targets():
    rng = np.random.default_rng(0)
    s = make_split("diabetes", noise=0.0, noise_kind="feature", seed=0, n_train=300, n_valid=60, n_test=82)
    y = (s.y_train - s.y_train.mean()) / s.y_train.std()
    noisy = rng.choice(len(y), 30, replace=False)
    y = y.astype(np.float32)
    y[noisy] += rng.choice([-3.0, 3.0], 30).astype(np.float32)
    yv = ((s.y_valid - s.y_train.mean()) / s.y_train.std()).astype(np.float32)
    seeded(0)
    model = MLP(s.x_train.shape[1], 1, regression=True)
    cb = DataValuation(LossVal(validation=(s.x_valid, yv)))
    L.Trainer(max_epochs=10, callbacks=[cb], **trainer_kwargs()).fit(model, loader(s.x_train, y))
    assert detection_auroc(cb.values.values, noisy) > 0.8


@pytest.mark.parametrize("constraint", ["softplus", "clamp"])
def test_positive_constraints(small, constraint):
    cb, _, _ = fit(
        small, epochs=3, objective_kwargs={"constraint": constraint, "lr": 0.1, "signal": "weights"}
    )
    assert (cb.values.values >= 0).all()


def test_uniform_mass_and_validation_subsample_run(small):
    cb, _, _ = fit(small, epochs=1, objective_kwargs={"mass": "uniform", "validation_subsample": 20})
    assert np.isfinite(cb.values.values).all()


def test_digits_detection_auroc_above_0_9():
    s = digits_split(0.1)
    cb, _, _ = fit(s, epochs=8, callback_kwargs={"known_noisy": s.noisy})
    assert detection_auroc(cb.values.values, s.noisy) > 0.9


def test_16_mixed_with_grad_scaler_unscales_and_steps_the_weights(small):
    # Lightning builds no GradScaler on CPU; pass one explicitly to exercise the scaler path.
    from lightning.pytorch.plugins import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    cb, _, model = fit(
        small,
        epochs=2,
        callback_kwargs={"model_loss": "objective"},
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
    )
    assert cb.optimizer_steps == 2 * math.ceil(len(small.x_train) / 32)
    assert model.dv_state.weights.raw.dtype == torch.float32
    values = cb.values.values
    assert np.isfinite(values).all() and not np.allclose(values, 1.0)
    # the paper's formula drives the model here: D**2 ~ 1e7 overflows its fp16 gradients and the scaler
    # backs off (the default model_loss='plain' never does: tests/test_model_safety.py)
    assert scaler.get_scale() < 2.0**8


@pytest.mark.parametrize("objective_kwargs", [{}, {"mass": "uniform", "signal": "weights"}])
def test_fast_ot_at_geomlosss_schedule_gives_the_exact_ot_values(small, objective_kwargs):
    """ot='fast' annealing at ``scaling`` (``ot_scaling=0.5``) and ot='exact' (geomloss) value the
    rows alike in a real fit."""
    fast, _, _ = fit(small, epochs=2, objective_kwargs={"ot_scaling": 0.5, **objective_kwargs})
    exact, _, _ = fit(small, epochs=2, objective_kwargs={"ot": "exact", **objective_kwargs})
    np.testing.assert_allclose(fast.values.values, exact.values.values, rtol=1e-4, atol=1e-4)


def test_default_schedule_is_ot_scaling_0_2_and_ranks_rows_as_the_exact_ot(small):
    """The default anneals at 0.2 (bitwise the fit of an explicit ``ot_scaling=0.2``); its values
    move off geomloss's schedule but rank the rows as the exact OT does (raw masses: the OT's
    per-row part is ~0.2% of the weight gradient, docs/lossval_speed.md)."""
    assert LossVal(validation=small.x_valid).solve_scaling == 0.2
    assert LossVal(validation=small.x_valid, scaling=0.1).solve_scaling == 0.1  # never finer than scaling
    assert LossVal(validation=small.x_valid, ot="exact").ot_scaling is None  # the default is no error there
    default, _, _ = fit(small, epochs=2)
    explicit, _, _ = fit(small, epochs=2, objective_kwargs={"ot_scaling": 0.2})
    exact, _, _ = fit(small, epochs=2, objective_kwargs={"ot": "exact"})
    np.testing.assert_array_equal(default.values.values, explicit.values.values)
    assert not np.allclose(default.values.values, exact.values.values, rtol=1e-4, atol=1e-4)
    assert np.corrcoef(default.values.values, exact.values.values)[0, 1] > 0.995
    assert detection_auroc(default.values.values, small.noisy) == pytest.approx(
        detection_auroc(exact.values.values, small.noisy), abs=0.01
    )


def test_ten_thousand_validation_rows_fit_in_seconds():
    """J = 10,000 validation rows: no J x J self-term, a real fit of a few steps."""
    rng = np.random.default_rng(0)
    x, xv = (
        rng.standard_normal((128, 8), dtype=np.float32),
        rng.standard_normal((10_000, 8), dtype=np.float32),
    )
    y = (x[:, 0] > 0).astype(np.int64)
    seeded(0)
    model = MLP(8, 2)
    cb = DataValuation(LossVal(validation=xv))
    L.Trainer(max_epochs=1, callbacks=[cb], **trainer_kwargs()).fit(model, loader(x, y))
    assert np.isfinite(cb.values.values).all() and not np.allclose(cb.values.values, 0.0)


def test_ot_and_backend_are_validated():
    with pytest.raises(ValueError, match="`ot='nope'` is not supported"):
        LossVal(validation=torch.randn(20, 3), ot="nope")
    with pytest.raises(ValueError, match="only `ot='exact'` uses"):
        LossVal(validation=torch.randn(20, 3), backend="online")
    with pytest.raises(ValueError, match="`backend='keops'` is not supported"):
        LossVal(validation=torch.randn(20, 3), ot="exact", backend="keops")
    with pytest.raises(ValueError, match="`p=3` is not supported"):
        LossVal(validation=torch.randn(20, 3), p=3)
    with pytest.raises(ValueError, match="`ot_scaling` must be in \\(0, 1\\)"):
        LossVal(validation=torch.randn(20, 3), ot_scaling=2.0)
    with pytest.raises(ValueError, match="which `ot='exact'` does not use"):
        LossVal(validation=torch.randn(20, 3), ot="exact", ot_scaling=0.2)
    with pytest.raises(ValueError, match="`scaling` must be in \\(0, 1\\)"):
        LossVal(validation=torch.randn(20, 3), scaling=1.0)


def test_window_is_validated():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="`window` must be a positive number of epochs"):
            LossVal(validation=torch.randn(20, 3), window=bad)


def test_window_averages_each_rows_first_epochs_of_the_standardised_descent():
    """Closed form: value_i = mean over the first `window` epochs of row i's epoch-mean z_i."""
    from lightning_dv.methods.base import ValuationStep

    torch.manual_seed(0)
    x_val = torch.randn(20, 3)
    objective = LossVal(validation=x_val, window=2, learn_weights=True)
    state = objective.build(num_rows=6)
    objective._val_features = x_val
    epoch_means = []
    batches = {0: [[0, 1, 2, 3], [2, 3, 4, 5]], 1: [[0, 1, 2, 3, 4, 5]], 2: [[5, 4, 3, 2, 1, 0]]}
    for epoch in range(3):
        total, count = torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
        for rows in map(torch.tensor, batches[epoch]):
            step = ValuationStep(torch.rand(len(rows)) + 0.1, rows, inputs=torch.randn(len(rows), 3))
            loss = objective.loss(state, step)
            leaf = state.weights._pending[-1][1]
            (grad,) = torch.autograd.grad(loss, leaf, retain_graph=True)
            loss.backward()
            g = grad.double()
            total[rows] += -(g - g.mean()) / g.std()
            count[rows] += 1
        epoch_means.append(total / count)
        objective.on_train_epoch_end(None, None, state)
    expected = (epoch_means[0] + epoch_means[1]) / 2  # epoch 3 is past the window
    torch.testing.assert_close(objective.values(state), expected.float(), rtol=1e-5, atol=1e-5)
    everything = LossVal(validation=x_val, window=None).build(6)
    assert everything.trajectory.window is None


def test_window_freezes_the_values_of_a_real_fit(small):
    cb, _, _ = fit(small, epochs=4, objective_kwargs={"window": 2})
    traj = np.asarray(cb.values.trajectory)
    assert not np.allclose(traj[0], traj[1])  # epoch 2 still counts
    np.testing.assert_array_equal(traj[1], traj[2])  # then frozen: epochs 3 and 4 change nothing
    np.testing.assert_array_equal(traj[1], traj[3])
    cb_all, _, _ = fit(small, epochs=4, objective_kwargs={"window": None})
    np.testing.assert_allclose(np.asarray(cb_all.values.trajectory)[1], traj[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(cb_all.values.trajectory)[3], traj[3])


# -- fixed weights (the default): no weight state, no weight step -----------------------------------
class RecordingMLP(MLP):
    """The example classifier that also keeps what each training step handed to ``valuation_loss``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = []

    def training_step(self, batch, batch_idx):
        idx, x, y = batch
        out = self(x)
        self.steps.append((self.current_epoch, idx.clone(), x.clone(), out.detach().clone(), y.clone()))
        return self.valuation_loss(self.per_sample_loss(out, y), idx, inputs=x, outputs=out, targets=y)


def test_fixed_weight_values_match_a_geomloss_autograd_reference(small):
    """value_i = mean over row i's first `window` epochs of its epoch-mean z_i, where z is the
    standardised descent of d(L_w D**2)/dw at w = 1, D geomloss's debiased Sinkhorn with raw masses
    (autograd through geomloss, float64) on the batches and model outputs of a real fit."""
    from geomloss import SamplesLoss

    seeded(0)
    model = RecordingMLP(small.x_train.shape[1], small.num_classes)
    cb, _, _ = fit(small, epochs=3, model=model, objective_kwargs={"window": 2, "ot_scaling": 0.5})
    state = model.dv_state
    assert state.weights is None
    sinkhorn = SamplesLoss(
        "sinkhorn",
        p=2,
        blur=0.05,
        scaling=0.5,
        debias=True,
        diameter=float(state.diameter),
        backend="tensorized",
    )
    y_val = torch.as_tensor(small.x_valid).double()
    n = len(small.x_train)
    epoch_sums = torch.zeros(3, n, dtype=torch.float64)
    epoch_counts = torch.zeros(3, n, dtype=torch.float64)
    for epoch, idx, x, out, y in model.steps:
        w = torch.ones(len(idx), dtype=torch.float64, requires_grad=True)
        p = torch.softmax(out.double(), 1).gather(1, y[:, None]).squeeze(1)
        task = (w * -torch.log(p + 1e-8)).sum()
        d = sinkhorn(w, x.double(), torch.ones(len(y_val), dtype=torch.float64), y_val)
        (g,) = torch.autograd.grad(task * d**2, w)
        epoch_sums[epoch, idx] += -(g - g.mean()) / g.std()
        epoch_counts[epoch, idx] += 1
    expected = (epoch_sums[:2] / epoch_counts[:2]).mean(0)  # every row is seen every epoch; window 2
    np.testing.assert_allclose(cb.values.values, expected.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(cb.values.trajectory[1], cb.values.trajectory[2])  # frozen after 2


def test_default_keeps_10_bytes_per_row_and_no_weight_step(small):
    cb, trainer, model = fit(small, epochs=2)
    state, n = model.dv_state, len(small.x_train)
    assert state.weights is None and not any(p.requires_grad for p in state.parameters())
    per_row = sum(
        t.numel() * t.element_size() for t in state.state_dict().values() if t.ndim and t.shape[0] == n
    )
    assert per_row == 10 * n  # the windowed trajectory alone: sum, total (float32), count, epochs (uint8)
    assert cb.optimizer is None and cb.optimizer_steps == 0
    assert not np.allclose(cb.values.values, cb.values.values[0])


def test_learned_weights_by_default_where_they_are_read(small):
    v = small.x_valid
    assert LossVal(validation=v).learned is False
    assert LossVal(validation=v, signal="weights").learned is True
    assert LossVal(validation=v, learn_weights=True).learned is True
    for mode in ("reweight", "objective"):
        assert DataValuation(LossVal(validation=v), model_loss=mode).objective.learned is True
    assert DataValuation(LossVal(validation=v), model_loss="plain").objective.learned is False
    cb, _, model = fit(small, epochs=1, callback_kwargs={"model_loss": "reweight"})
    assert model.dv_state.weights is not None and cb.optimizer_steps == math.ceil(len(small.x_train) / 32)


def test_fixed_weights_refuse_what_needs_learned_weights():
    v = torch.randn(20, 3)
    with pytest.raises(ValueError, match="`signal='weights'` reads the learned weights.*learn_weights=True"):
        LossVal(validation=v, learn_weights=False, signal="weights")
    with pytest.raises(ValueError, match="`constraint='softplus'` constrains learned weights"):
        LossVal(validation=v, learn_weights=False, constraint="softplus")
    for mode in ("reweight", "objective"):
        with pytest.raises(
            ValueError, match=f"model_loss='{mode}'.*`LossVal\\(learn_weights=False\\)` keeps"
        ):
            DataValuation(LossVal(validation=v, learn_weights=False), model_loss=mode)
    with pytest.raises(TypeError, match="`learn_weights` must be True, False or None"):
        LossVal(validation=v, learn_weights="yes")


def test_fixed_and_learned_weights_train_the_same_model_and_rank_rows_alike(small):
    fixed, _, fixed_model = fit(small, epochs=3)
    learned, _, learned_model = fit(small, epochs=3, objective_kwargs={"learn_weights": True})
    for (k, p), (_, q) in zip(fixed_model.net.named_parameters(), learned_model.net.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=k)  # the model never sees the weights
    assert not np.array_equal(fixed.values.values, learned.values.values)
    assert np.corrcoef(fixed.values.values, learned.values.values)[0, 1] > 0.9


@pytest.mark.parametrize(
    "options",
    [{}, {"mass": "uniform"}, {"reduction": "mean", "exponent": 1.0}, {"ot": "exact"}, {"init": 0.5}],
)
def test_fixed_weight_gradient_is_the_autograd_gradient_of_the_formula(options):
    """The closed form read off the dual potentials == autograd of ``L_w * D**e`` at ``w = init``."""
    from lightning_dv.methods.base import ValuationStep

    torch.manual_seed(0)
    x_val, x = torch.randn(40, 5), torch.randn(16, 5)
    objective = LossVal(validation=x_val, **options)
    state = objective.build(num_rows=16)
    objective._val_features = x_val
    losses = torch.rand(16) + 0.1
    loss, grad = objective._fixed_weight_gradient(state, losses, x)
    w = torch.full((16,), objective.init, requires_grad=True)
    weighted = w * losses
    task = weighted.sum() if objective.reduction == "sum" else weighted.mean()
    reference = task * objective.divergence(state, w, x) ** objective.exponent
    (expected,) = torch.autograd.grad(reference, w)
    torch.testing.assert_close(grad.float(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-5, atol=0)
    objective.loss(state, ValuationStep(losses, torch.arange(16), inputs=x))  # records the same descent
    objective.on_train_epoch_end(None, None, state)
    torch.testing.assert_close(objective.values(state), standardised(expected), rtol=1e-4, atol=1e-4)


def standardised(g):
    return -(g - g.mean()) / g.std()


@pytest.mark.parametrize(("written", "resumed"), [(True, None), (None, True)])
def test_resuming_the_other_kind_of_weights_names_learn_weights(tmp_path, small, written, resumed):
    """A checkpoint with learned weights (the default before session 6) resumed by a fixed-weight
    LossVal, and the reverse: one clear error naming `learn_weights`, not a strict-load key list."""

    def run(learn, epochs, callbacks=(), ckpt_path=None):
        seeded(0)
        cb = DataValuation(LossVal(validation=small.x_valid, learn_weights=learn))
        kw = trainer_kwargs(enable_checkpointing=True, default_root_dir=tmp_path)
        trainer = L.Trainer(max_epochs=epochs, callbacks=[cb, *callbacks], **kw)
        trainer.fit(
            MLP(small.x_train.shape[1], small.num_classes),
            loader(small.x_train, small.y_train),
            ckpt_path=ckpt_path,
        )

    run(written, 1, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    wanted = "True" if written else "False"
    with pytest.raises(ValueError, match=f"resume with `LossVal\\(..., learn_weights={wanted}\\)`"):
        run(resumed, 2, ckpt_path=str(tmp_path / "last.ckpt"))
