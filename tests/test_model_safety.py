"""Valuation never harms the model: the callback's model-loss modes, GradScaler handling, LossVal's
loss-form independence and validation from the fit's dataloader (real Trainer.fit runs)."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import MLP, loader, seeded, trainer_kwargs
from lightning.pytorch.plugins import MixedPrecision
from torch.utils.data import DataLoader, TensorDataset

from lightning_dv import AUM, NDDV, DataValuation, LossVal
from lightning_dv.datasets import make_split


@pytest.fixture(scope="module")
def split():
    return make_split("breast_cancer", noise=0.1, seed=0)


def objectives(split):
    return {
        "lossval": lambda: LossVal(validation=(split.x_valid, split.y_valid)),
        "lossval_learned": lambda: LossVal(validation=(split.x_valid, split.y_valid), learn_weights=True),
        "nddv": lambda: NDDV(),
        "nddv_learned": lambda: NDDV(learn_weights=True),
        "nddv_meta": lambda: NDDV(weighting="meta", meta=(split.x_valid, split.y_valid)),
        "aum": lambda: AUM(),
    }


class PlainMLP(MLP):
    """The same model trained on the plain mean loss (no valuation call at all)."""

    def training_step(self, batch, batch_idx):
        idx, x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss.detach(), on_step=False, on_epoch=True)
        return loss


class SoftmaxMLP(MLP):
    """The same cross-entropy written as softmax + -log(p + 1e-8) (the LossVal paper's form)."""

    def per_sample_loss(self, outputs, targets):
        p = torch.softmax(outputs, dim=1).gather(1, targets.reshape(-1, 1)).squeeze(1)
        return -torch.log(p + 1e-8)


def fit(split, objective=None, model_cls=MLP, epochs=2, callback_kwargs=None, val=False, **trainer_kw):
    seeded(0)
    model = model_cls(split.x_train.shape[1], split.num_classes)
    callbacks = [] if objective is None else [DataValuation(objective, **(callback_kwargs or {}))]
    trainer = L.Trainer(max_epochs=epochs, callbacks=callbacks, **trainer_kwargs(**trainer_kw))
    val_loader = (
        DataLoader(
            TensorDataset(torch.as_tensor(split.x_valid), torch.as_tensor(split.y_valid)), batch_size=16
        )
        if val
        else None
    )
    trainer.fit(model, loader(split.x_train, split.y_train), val_loader)
    return (callbacks[0] if callbacks else None), trainer, model


def net_params(model):
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}


@pytest.mark.parametrize("name", ["lossval", "nddv", "nddv_meta", "aum"])
def test_defaults_train_the_model_bit_identically_to_a_plain_fit(split, name):
    _, _, plain = fit(split, model_cls=PlainMLP)
    cb, trainer, model = fit(split, objectives(split)[name]())
    assert cb.model_loss == "plain"
    ref = net_params(plain)
    for k, v in net_params(model).items():
        assert torch.equal(v, ref[k]), k
    assert not np.allclose(cb.values.values, cb.values.values[0])  # and the values were still learned
    assert 0 < float(trainer.callback_metrics["train_loss"]) < 5  # the user's task loss, on its scale


def test_objective_mode_trains_the_model_on_the_formula_but_logs_the_task_loss(split):
    _, plain_trainer, plain = fit(split, model_cls=PlainMLP)
    make = objectives(split)["lossval"]
    _, trainer, model = fit(split, make(), callback_kwargs={"model_loss": "objective"})
    assert any(not torch.equal(v, net_params(plain)[k]) for k, v in net_params(model).items())
    # the formula's value is ~1e7 x the task loss; what is shown stays a cross-entropy (< 20)
    assert 0 < float(trainer.callback_metrics["train_loss"]) < 20


@pytest.mark.parametrize("name", ["lossval", "nddv"])
def test_reweight_mode_changes_the_model_and_keeps_the_loss_scale(split, name):
    _, _, plain = fit(split, model_cls=PlainMLP, epochs=3)
    cb, trainer, model = fit(
        split, objectives(split)[name](), epochs=3, callback_kwargs={"model_loss": "reweight"}
    )
    assert any(not torch.equal(v, net_params(plain)[k]) for k, v in net_params(model).items())
    assert 0 < float(trainer.callback_metrics["train_loss"]) < 5


def test_reweight_is_refused_for_an_objective_without_weights(split):
    class NoWeights(LossVal):
        model_weights = LossVal.__mro__[1].model_weights  # the contract's default: no weights

    with pytest.raises(ValueError, match="model_loss='reweight'.*provides none"):
        DataValuation(NoWeights(validation=split.x_valid), model_loss="reweight")
    with pytest.raises(ValueError, match="`model_loss='nope'` is not supported"):
        DataValuation(LossVal(validation=split.x_valid), model_loss="nope")


def adam_steps(trainer):
    opt = trainer.optimizers[0]
    return [int(opt.state[p]["step"]) for g in opt.param_groups for p in g["params"]]


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("lossval", None),
        ("lossval_learned", None),
        ("nddv", None),
        ("nddv_learned", None),
        ("lossval", "reweight"),
    ],
)
def test_16_mixed_grad_scaler_never_skips_the_models_steps(split, name, mode):
    def run(objective):
        # Lightning builds no GradScaler on CPU: pass one explicitly.
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        plugins = [MixedPrecision("16-mixed", "cpu", scaler=scaler)]
        cb, trainer, model = fit(split, objective, callback_kwargs={"model_loss": mode}, plugins=plugins)
        return cb, trainer, model, scaler

    _, plain_trainer, _, plain_scaler = run(None)
    cb, trainer, model, scaler = run(objectives(split)[name]())
    assert adam_steps(trainer) == adam_steps(plain_trainer)
    assert scaler.get_scale() == plain_scaler.get_scale()
    fixed = mode is None and name in ("lossval", "nddv")  # the defaults keep no weights: nothing to step
    assert cb.optimizer_steps == (0 if fixed else adam_steps(trainer)[0])
    values = cb.values.values
    assert np.isfinite(values).all() and not np.allclose(values, values[0])


@pytest.mark.parametrize("mode", ["plain", "objective"])
def test_lossval_values_do_not_depend_on_the_form_of_the_cross_entropy(split, mode):
    kw = {"callback_kwargs": {"model_loss": mode}, "epochs": 3}
    cb_logits, _, _ = fit(split, LossVal(validation=split.x_valid), **kw)
    cb_softmax, _, _ = fit(split, LossVal(validation=split.x_valid), model_cls=SoftmaxMLP, **kw)
    np.testing.assert_allclose(cb_logits.values.values, cb_softmax.values.values, rtol=1e-4, atol=1e-4)


def test_lossval_value_term_uses_its_own_bounded_loss_when_given_outputs_and_targets(split):
    from lightning_dv.methods.base import ValuationStep

    logits = torch.tensor([[30.0, -30.0], [0.0, 0.0], [-30.0, 30.0]])  # row 0 badly wrong: p ~ 1e-26
    y = torch.tensor([1, 0, 1])
    ce = F.cross_entropy(logits, y, reduction="none")  # 60, unbounded
    capped = -torch.log(torch.softmax(logits, 1).gather(1, y[:, None]).squeeze(1) + 1e-8)  # 18.4
    idx, x = torch.arange(3), torch.as_tensor(split.x_train[:3])

    def loss(task_loss, per_sample):
        obj = LossVal(validation=split.x_valid, task_loss=task_loss)
        state = obj.build(3)
        obj.on_fit_start(None, MLP(2, 2), state)
        return float(obj.loss(state, ValuationStep(per_sample, idx, x, logits, y)))

    assert loss("auto", ce) == loss("auto", capped)
    assert loss("user", ce) > 3 * loss("user", capped)


def test_lossval_without_validation_uses_the_fits_validation_loader(split):
    given, _, _ = fit(split, LossVal(validation=(split.x_valid, split.y_valid)), val=True)
    from_fit, _, _ = fit(split, LossVal(), val=True)
    np.testing.assert_array_equal(given.values.values, from_fit.values.values)
    with pytest.raises(ValueError, match="no `validation=` and the fit has no validation dataloader"):
        fit(split, LossVal())


def _test_accuracy(model, split):
    model.eval()
    with torch.no_grad():
        pred = model(torch.as_tensor(split.x_test, dtype=torch.float32)).argmax(1).numpy()
    return float((pred == split.y_test).mean())


def test_lossval_default_does_not_reduce_test_accuracy_and_beats_its_final_weights(split):
    from sklearn.metrics import roc_auc_score

    _, _, plain = fit(split, model_cls=PlainMLP, epochs=5)
    cb, _, model = fit(split, LossVal(validation=(split.x_valid, split.y_valid)), epochs=5)
    assert _test_accuracy(model, split) >= _test_accuracy(plain, split)
    weights, _, _ = fit(split, LossVal(validation=(split.x_valid, split.y_valid), signal="weights"), epochs=5)
    noisy = np.zeros(len(split.y_train), dtype=bool)
    noisy[split.noisy] = True
    auroc = {k: roc_auc_score(noisy, -c.values.values) for k, c in (("traj", cb), ("w", weights))}
    assert auroc["traj"] > auroc["w"] and auroc["traj"] > 0.85, auroc


def test_lossval_trajectory_is_the_mean_standardised_descent_of_the_weights_gradient():
    from lightning_dv.methods.base import ValuationStep

    torch.manual_seed(0)
    x_val, objective = torch.randn(20, 3), None
    objective = LossVal(validation=x_val, learn_weights=True)
    state = objective.build(num_rows=6)
    objective._val_features = x_val
    expected = torch.zeros(6)
    for rows in (torch.tensor([0, 1, 2, 3]), torch.tensor([2, 3, 4, 5])):
        step = ValuationStep(torch.rand(4) + 0.1, rows, inputs=torch.randn(4, 3))
        loss = objective.loss(state, step)
        leaf = state.weights._pending[-1][1]  # this step's weights (constraint "none": w = raw)
        (grad,) = torch.autograd.grad(loss, leaf, retain_graph=True)
        loss.backward()
        g = grad.double()
        expected[rows] += (-(g - g.mean()) / g.std()).float()
    objective.on_train_epoch_end(None, None, state)
    expected[2:4] /= 2  # rows 2, 3 were seen twice in the epoch: their epoch mean
    torch.testing.assert_close(objective.values(state), expected, rtol=1e-5, atol=1e-5)
