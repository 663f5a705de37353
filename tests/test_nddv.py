"""NDDV objective and ControlledDynamicsNet: real fits through the DataValuation callback."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import MLP, digits_split, loader, seeded, trainer_kwargs
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)
from torch import nn

from lightning_dv import DataValuation, DataValuationMixin
from lightning_dv.methods.base import ValuationStep
from lightning_dv.methods.nddv import NDDV
from lightning_dv.methods.nddv.dynamics import ControlledDynamicsNet
from lightning_dv.methods.nddv.formulas import (
    marginal_calibration,
    robust_clip,
    robust_score,
    state_costate_value,
    terminal_probabilities,
)
from lightning_dv.metrics import detection_auroc, two_means_split

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def split():
    return digits_split(0.1)


@pytest.fixture(scope="module")
def clean_meta():
    s = digits_split(0.0)  # same rows as `split`'s validation part, clean labels
    return s.x_valid, s.y_valid


def fit(model, objective, x, y, epochs=2, batch_size=32, shuffle=True, **kw):
    cb = DataValuation(objective)
    trainer = L.Trainer(max_epochs=epochs, callbacks=[cb], **trainer_kwargs(**kw))
    trainer.fit(model, loader(x, y, batch_size=batch_size, shuffle=shuffle))
    return cb.values, trainer


# -- the value --------------------------------------------------------------------------------
def test_value_is_state_times_costate_of_each_rows_own_terminal_cost():
    """Closed form == autograd of sum_i Phi_i w.r.t. X_T (each row's cost depends on its own state only)."""
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(7, 4), 1).requires_grad_(True)
    y = torch.randint(0, 4, (7,))
    w = torch.rand(7) + 0.5
    phi = (w * F.cross_entropy(probs, y, reduction="none")).sum()
    costate = torch.autograd.grad(phi, probs)[0]
    expected = -(probs.detach() * costate).mean(1)
    got = state_costate_value(probs.detach(), F.one_hot(y, 4).float(), w)
    torch.testing.assert_close(got, expected)
    # marginal calibration: v_i minus the mean of the OTHER rows
    v = torch.tensor([1.0, 2.0, 6.0])
    torch.testing.assert_close(marginal_calibration(v), torch.tensor([1 - 4.0, 2 - 3.5, 6 - 1.5]))


def test_robust_calibration_one_outlier_does_not_own_a_cluster():
    g = torch.Generator().manual_seed(0)
    bulk = torch.randn(1000, generator=g)
    noisy = torch.randn(100, generator=g) * 0.3 - 4.0  # a real low cluster
    fence = 0.5 * 1101**0.5
    for outlier in (1e6, -1e6):
        v = torch.cat([bulk, noisy, torch.tensor([outlier])])
        assert int(two_means_split(v).sum()) in (1, len(v) - 1)  # raw: the outlier owns a cluster
        calibrated = robust_clip(v)
        low = two_means_split(calibrated)
        assert bool(low[1000:1100].all())  # the noisy cluster, not the outlier alone
        assert int((low[:1100] != two_means_split(v[:1100])).sum()) <= 20  # ~ the split without the outlier
        score = robust_score(v)
        torch.testing.assert_close(calibrated[:1100], score[:1100].float())  # the bulk is untouched
        assert abs(float(calibrated[-1])) == pytest.approx(fence)


def test_binary_single_logit_and_soft_labels():
    p = terminal_probabilities(torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(p.sum(1), torch.ones(2))
    assert p.shape == (2, 2) and float(p[1, 1]) > 0.8


def test_epoch_aggregation_mean_and_last_by_hand():
    """Two 'epochs' through build / loss / sync: 'mean' averages a row's values, 'last' keeps the latest."""
    torch.manual_seed(0)
    logits = [torch.randn(6, 3), torch.randn(6, 3)]
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    per_epoch = []
    results = {}
    for aggregate in ("mean", "last"):
        objective = NDDV(aggregate=aggregate, calibration="marginal", interaction=0.0)
        state = objective.build(6)
        per_epoch = []
        for z in logits:
            for rows in (torch.arange(0, 3), torch.arange(3, 6)):  # two batches per epoch
                out = z[rows].requires_grad_(True)
                step = ValuationStep(
                    F.cross_entropy(out, y[rows], reduction="none"), rows, None, out, y[rows]
                )
                objective.loss(state, step).backward()
            objective.sync(state)
            per_epoch.append(state.raw_value.detach().clone())
        results[aggregate] = objective.raw_values(state)
    torch.testing.assert_close(results["last"], per_epoch[1])
    torch.testing.assert_close(results["mean"], (per_epoch[0] + per_epoch[1]) / 2)
    # softplus weights start at 1, so the first epoch's raw value is the unweighted closed form
    expected = state_costate_value(torch.softmax(logits[0], 1), F.one_hot(y, 3).float(), torch.ones(6))
    torch.testing.assert_close(per_epoch[0], expected)


def test_value_does_not_depend_on_batch_size(split):
    """Same frozen model, same rows, batch 16 vs 64: identical per-row values (the authors' scale with 1/B)."""
    out = []
    for bs in (16, 64):
        seeded(0)
        model = MLP(64, 10, lr=0.0)  # Adam with lr 0: the model stays at its (seeded) init
        values, _ = fit(model, NDDV(lr=1e-12), split.x_train[:256], split.y_train[:256], 1, bs)
        out.append(values)
    np.testing.assert_allclose(
        out[0].columns["nddv_state_costate"], out[1].columns["nddv_state_costate"], atol=1e-7
    )
    np.testing.assert_allclose(out[0].values, out[1].values, atol=1e-5)
    assert np.ptp(out[0].values) > 0.5  # not trivially constant


def test_detects_label_noise_on_digits_and_records_trajectories(split, tmp_path):
    seeded(0)
    model = MLP(64, 10)
    path = tmp_path / "nddv.csv"
    cb = DataValuation(NDDV(), export_path=path, known_noisy=split.noisy)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = L.Trainer(max_epochs=5, callbacks=[cb], **trainer_kwargs(logger=logger))
    trainer.fit(model, loader(split.x_train, split.y_train))
    events = EventAccumulator(logger.log_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    events.Reload()
    assert len(events.Histograms("data_values/nddv/histogram")) == 5  # one histogram per epoch
    assert any("trajectories" in tag for tag in events.Tags()["images"])  # lowest / highest rows figure
    dv = cb.values
    assert detection_auroc(dv.values, split.noisy) > 0.9
    assert dv.trajectory.shape == (5, 1000)  # one entry per row per epoch
    assert not np.allclose(dv.trajectory[0], dv.trajectory[-1])
    np.testing.assert_allclose(dv.trajectory[-1], dv.values, atol=1e-6)
    assert bool((model.dv_state.seen == 5).all())  # every row seen once per epoch
    assert {"nddv_state_costate", "nddv_state_costate_mean", "nddv_marginal", "nddv_weight"} <= set(
        dv.columns
    )
    np.testing.assert_allclose(  # the default value aggregates the epochs: the mean of the per-epoch values
        dv.columns["nddv_state_costate_mean"], model.dv_state.value_sum.detach().numpy() / 5, rtol=1e-6
    )
    # the default keeps the weights fixed at 1 (the model trains on the plain loss)
    assert model.dv_state.weights is None and (dv.columns["nddv_weight"] == 1).all()
    # mean field: the weighted mean of the terminal states, a distribution over the 10 classes
    mu = model.dv_state.mean_field.detach()
    assert mu.shape == (10,) and abs(float(mu.sum()) - 1) < 1e-5
    import pandas as pd

    table = pd.read_csv(path, skiprows=1)  # first line: the # lightning-dv header
    assert len(table) == 1000 and "nddv_state_costate" in table.columns


def test_regression_is_refused_clearly(split):
    model = MLP(64, 1, regression=True)
    with pytest.raises(ValueError, match="regression"):
        fit(model, NDDV(), split.x_train[:64], split.y_train[:64].astype(np.float32), 1)


def test_outputs_are_required():
    class NoOutputs(MLP):
        def training_step(self, batch, batch_idx):
            idx, x, y = batch
            return self.valuation_loss(F.cross_entropy(self(x), y, reduction="none"), idx)

    x, y = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32), np.arange(32) % 3
    with pytest.raises(ValueError, match="outputs=logits"):
        fit(NoOutputs(4, 3), NDDV(), x, y, 1)


def test_meta_weighting_needs_a_meta_set():
    with pytest.raises(ValueError, match="meta=\\(x_meta, y_meta\\)"):
        NDDV(weighting="meta")


# -- the weight network (bi-level) ------------------------------------------------------------
def test_meta_gradient_matches_finite_differences():
    """The weight network really receives d meta_loss / d phi (the authors' never trains): float64 check."""
    torch.manual_seed(0)
    model = MLP(5, 3, hidden=8).double()
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    xm, ym = torch.randn(20, 5, dtype=torch.float64), torch.randint(0, 3, (20,))
    objective = NDDV(weighting="meta", meta=(xm, ym), pseudo_lr=0.5, hidden=4, meta_loss=F.cross_entropy)
    state = objective.build(16)
    state.weight_net.double()
    out = model(x)
    step = ValuationStep(F.cross_entropy(out, y, reduction="none"), torch.arange(16), x, out, y, model)
    grads, _ = objective.meta_gradient(state, step)
    first = state.weight_net.net[0].weight  # (4, 1): each entry reshapes the weight-vs-loss curve
    assert float(grads[0].abs().max()) > 1e-6
    h = 1e-5
    for j in range(first.shape[0]):
        losses = []
        for sign in (1, -1):
            with torch.no_grad():
                first[j, 0] += sign * h
            losses.append(float(objective.meta_gradient(state, step)[1]))
            with torch.no_grad():
                first[j, 0] -= sign * h
        fd = (losses[0] - losses[1]) / (2 * h)
        assert abs(float(grads[0][j, 0]) - fd) <= 1e-4 * abs(fd) + 1e-9, (j, float(grads[0][j, 0]), fd)


def test_weight_network_trains_during_fit(split, clean_meta):
    class Snapshot(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.before = {k: v.clone() for k, v in pl_module.dv_state.weight_net.state_dict().items()}

    seeded(0)
    model, snap = MLP(64, 10), Snapshot()
    cb = DataValuation(NDDV(weighting="meta", meta=clean_meta, lr=0.01))
    trainer = L.Trainer(max_epochs=2, callbacks=[cb, snap], **trainer_kwargs())
    trainer.fit(model, loader(split.x_train, split.y_train))
    values, state, before = cb.values, model.dv_state, snap.before
    assert int(state.meta_steps) == trainer.global_step == 64
    after = state.weight_net.state_dict()
    assert any(not torch.allclose(before[k], after[k]) for k in before)
    w = state.weight_net(torch.tensor([0.01, 1.0, 5.0]))
    assert float(w.max() - w.min()) > 1e-3  # a non-constant function of the loss
    assert detection_auroc(values.values, split.noisy) > 0.85


# -- resume -----------------------------------------------------------------------------------
@pytest.mark.parametrize("weighting", ["meta", "learned"])  # fixed softplus: tests/test_objective_contract.py
def test_resume_reproduces_uninterrupted_values(weighting, split, clean_meta, tmp_path):
    x, y = split.x_train[:320], split.y_train[:320]

    def objective():
        if weighting == "learned":
            return NDDV(learn_weights=True)
        return NDDV(weighting=weighting, meta=clean_meta, meta_batch_size=50)

    seeded(0)
    full, _ = fit(MLP(64, 10), objective(), x, y, 4, shuffle=False)
    seeded(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    cb = DataValuation(objective())
    L.Trainer(max_epochs=2, callbacks=[cb, ckpt], **trainer_kwargs(enable_checkpointing=True)).fit(
        MLP(64, 10), loader(x, y, shuffle=False)
    )
    seeded(123)  # the resumed fit must not depend on the global seed
    cb2 = DataValuation(objective())
    L.Trainer(max_epochs=4, callbacks=[cb2], **trainer_kwargs()).fit(
        MLP(64, 10), loader(x, y, shuffle=False), ckpt_path=tmp_path / "last.ckpt"
    )
    resumed = cb2.values
    np.testing.assert_allclose(resumed.values, full.values, atol=1e-5)
    np.testing.assert_allclose(resumed.trajectory, full.trajectory, atol=1e-5)
    np.testing.assert_allclose(resumed.columns["nddv_weight"], full.columns["nddv_weight"], atol=1e-6)


# -- the paper's model ------------------------------------------------------------------------
def test_controlled_dynamics_fresh_noise_each_step_and_none_in_eval():
    torch.manual_seed(0)
    net = ControlledDynamicsNet(3, 2, steps=3, sigma=0.5, interaction=0.0)
    for control in net.controls:  # zero controls: each step adds only sigma * dW_t
        nn.init.zeros_(control[-1].weight)
        nn.init.zeros_(control[-1].bias)
    x = torch.randn(200, 3)
    states = net.trajectory(x)
    increments = [b - a for a, b in zip(states, states[1:])]
    for inc in increments:  # dW_t ~ N(0, dt): sigma * sqrt(dt) = 0.5 / sqrt(3)
        assert abs(float(inc.std()) - 0.5 / 3**0.5) < 0.03
    assert not torch.allclose(increments[0], increments[1])  # fresh every step
    assert not torch.allclose(net.trajectory(x)[1], states[1])  # and every pass
    net.eval()
    torch.testing.assert_close(net(x), net(x))
    torch.testing.assert_close(net.trajectory(x)[-1], x)  # no control, no drift, no noise
    net.interaction = 1.0
    net.set_mean_field(torch.ones(3))
    assert float((net.trajectory(x)[-1] - x).mean()) > 0  # drift a * (mu - X) pulls towards mu


class DynamicsClassifier(DataValuationMixin, L.LightningModule):
    def __init__(self, d_in, n_classes):
        super().__init__()
        self.net = ControlledDynamicsNet(d_in, n_classes)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        idx, x, y = batch
        out = self(x)
        return self.valuation_loss(F.cross_entropy(out, y, reduction="none"), idx, outputs=out, targets=y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_controlled_dynamics_end_to_end_updates_its_mean_field(split, clean_meta):
    seeded(0)
    model = DynamicsClassifier(64, 10)
    values, _ = fit(
        model, NDDV(weighting="meta", meta=clean_meta, interaction=0.0), split.x_train, split.y_train, 3
    )
    mu = model.net.mean_field
    assert float(mu.abs().sum()) > 0
    # the weighted mean of the terminal states of the last epoch: recompute it for an eval-mode
    # pass is not exact (noise, BatchNorm), but it must be of the terminal states' scale
    model.eval()
    with torch.no_grad():
        model(torch.as_tensor(split.x_train))
    ref = model.net.terminal_state.mean(0)
    assert float((mu - ref).norm()) < 0.5 * float(ref.norm()) + 0.5
    assert detection_auroc(values.values, split.noisy) > 0.85


# -- DDP (the one worker script, tests/scripts/ddp_worker.py) ----------------------------------------
def test_ddp_values_and_mean_field_match_single_rank(tmp_path):
    """Two gloo ranks, frozen model: identical state on both, every row once, equal to one process."""
    from test_objective_contract import run_worker

    ranks = run_worker("nddv", tmp_path, "--frozen", "--rows", "103", "--devices", "2")
    (single,) = run_worker("nddv", tmp_path, "--frozen", "--rows", "103", "--devices", "1")
    for got in ranks:
        st, ref = got["state"], single["state"]
        assert (st["stats.epochs"] == 2.0).all()  # every row counted exactly once in each of the 2 epochs
        torch.testing.assert_close(st["stats.last"], ref["stats.last"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got["values"], single["values"], rtol=0, atol=1e-5)
        # the mean field counts a row once per rank: the padded row (1 of 103) weighs twice
        torch.testing.assert_close(st["mean_field"], ref["mean_field"], rtol=0, atol=2 / 103)
    torch.testing.assert_close(
        ranks[0]["state"]["mean_field"], ranks[1]["state"]["mean_field"], rtol=0, atol=0
    )


@pytest.mark.slow
def test_ddp_meta_step_keeps_the_weight_network_identical_on_both_ranks(tmp_path):
    """The meta-gradient is averaged by hand across ranks: both ranks must hold the same, trained phi."""
    from test_objective_contract import run_worker

    r0, r1 = run_worker("nddv_meta", tmp_path)
    phi = [k for k in r0["state"] if k.startswith("weight_net.")]
    assert phi
    for k in phi:
        torch.testing.assert_close(r0["state"][k], r1["state"][k], rtol=0, atol=0)
    torch.testing.assert_close(r0["values"], r1["values"], rtol=0, atol=0)
    assert float(r0["state"]["meta_steps"]) == 2 * 7  # 51 rows per rank, batch 8: 7 steps per epoch
    assert (r0["state"]["stats.epochs"] == 2).all()


def test_upper_scale_keeps_order_and_lets_2_means_cut_in_the_low_tail():
    from lightning_dv.methods.nddv.objective import robust_clip
    from lightning_dv.metrics import detection_auroc, kmeans_f1

    g = torch.Generator().manual_seed(0)
    clean = torch.randn(900, generator=g).abs() * 3.0  # clean rows: a long upper tail
    noisy = -2.0 - torch.rand(100, generator=g)  # corrupted rows: a low tail
    v = torch.cat([clean, noisy])
    rows = np.arange(900, 1000)
    plain, squeezed = robust_clip(v), robust_clip(v, upper_scale=0.1)
    assert torch.equal(plain.argsort(stable=True), squeezed.argsort(stable=True))
    assert detection_auroc(plain, rows) == detection_auroc(squeezed, rows)
    assert kmeans_f1(squeezed, rows) > kmeans_f1(plain, rows) + 0.2
    with pytest.raises(ValueError, match="upper_scale"):
        NDDV(upper_scale=0.0)


def test_nddv_value_with_class_indices_equals_the_one_hot_form_and_coupling_needs_a_gradient():
    from lightning_dv.methods.nddv.formulas import state_costate_value, target_distribution

    torch.manual_seed(0)
    p = torch.softmax(torch.randn(6, 3), dim=1)
    y, w = torch.tensor([0, 2, 1, 1, 0, 2]), torch.rand(6) + 0.5
    torch.testing.assert_close(
        state_costate_value(p, y, w), state_costate_value(p, target_distribution(y, 3), w)
    )
    objective = NDDV()
    state = objective.build(6)
    logits = torch.randn(6, 3, requires_grad=True)
    per_sample = F.cross_entropy(logits, y, reduction="none")
    detached = objective.loss(
        state, ValuationStep(per_sample.detach(), torch.arange(6), outputs=logits.detach(), targets=y)
    )
    attached = objective.loss(state, ValuationStep(per_sample, torch.arange(6), outputs=logits, targets=y))
    # with detached outputs the coupling has no gradient to give and is left out of the value
    probs = torch.softmax(logits.detach(), 1)
    coupling = 0.5 * ((probs - 1 / 3) ** 2).sum(1).mean()
    torch.testing.assert_close(attached.detach() - detached.detach(), coupling)


def test_weighted_loss_node_has_the_gradients_of_the_plain_expression():
    from lightning_dv.methods.nddv.formulas import weighted_loss

    g = torch.Generator().manual_seed(1)
    w = (torch.rand(7, generator=g, dtype=torch.float64) + 0.2).requires_grad_()
    loss = torch.rand(7, generator=g, dtype=torch.float64).requires_grad_()
    p = torch.softmax(torch.randn(7, 3, generator=g, dtype=torch.float64), 1).requires_grad_()
    mu = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, c: weighted_loss(a, b, c, mu, 0.07, 1e-12), (w, loss, p))
    assert torch.autograd.gradcheck(lambda a, b: weighted_loss(a, b, eps=1e-12), (w, loss))
    fused = weighted_loss(w, loss, p, mu, 0.07, 1e-12)
    plain = torch.dot(w, loss) / (w.sum() + 1e-12) + 0.07 * (p - mu).square().sum()
    for a, b in zip(torch.autograd.grad(fused, (w, loss, p)), torch.autograd.grad(plain, (w, loss, p))):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(fused, plain)


def test_weight_column_read_in_chunks_equals_all_weights_in_row_sparse_mode(monkeypatch):
    """NDDV's export column, ``SampleWeights.all()``, sums the recent rows' momentum tails a chunk
    of rows at a time: the same numbers as reading every row, tails included."""
    from lightning_dv.methods import weights as weights_module
    from lightning_dv.methods.weights import SampleWeights, exchange_row_gradients

    g = torch.Generator().manual_seed(0)
    w = SampleWeights(20_000, constraint="softplus")  # above dense_below: row-sparse Adam
    assert not w.dense
    for _ in range(200):
        idx = torch.randint(0, 20_000, (32,), generator=g)
        (w(idx) * torch.randn(32, generator=g)).sum().backward()
        w.adam_step(*exchange_row_gradients(*w.take_gradients()))
    every_row = w.transform(w.current_raw(torch.arange(20_000)))
    for chunk in (1024, 64, 7):  # the default, and chunks that split the ~5,600 recent rows
        monkeypatch.setattr(weights_module, "TAIL_ROWS", chunk)
        assert torch.equal(w.all(), every_row)


def _step_by_step(state, records):
    """The per-step reference: value, statistics and mean-field sums applied at every step."""
    from lightning_dv.methods.nddv.formulas import state_costate_value

    for rows, logits, target, weight, terminal in records:
        probs = terminal_probabilities(logits)
        value = state_costate_value(probs, target, weight)
        record = (
            value if state.stats.width == 1 else torch.stack([value, weight], dim=1)
        )  # softplus: values only
        new = state.stats.update(rows, record)
        state.field.update(probs, weight * new)
        state.dynamics_field("net").update(terminal, weight * new)


def test_held_records_equal_step_by_step_updates():
    from lightning_dv.methods.nddv.state import NDDVState

    g = torch.Generator().manual_seed(0)
    n, k = 12, 3
    records = []
    for size in [5] * 9 + [3, 5]:  # rows repeat across steps; one batch repeats a row; unequal sizes
        rows = torch.randint(0, n, (size,), generator=g)
        if len(records) == 4:
            rows[1] = rows[0]  # both records of a row within one step count as its first
        logits = torch.randn(size, k, generator=g)
        records.append((rows, logits, torch.randint(0, k, (size,), generator=g), torch.rand(size, generator=g),
                        torch.randn(size, 4, generator=g)))  # fmt: skip
    reference, held = NDDVState(n, "softplus", 4), NDDVState(n, "softplus", 4)
    _step_by_step(reference, records)
    for rows, logits, target, weight, terminal in records:
        held.record(rows, logits, target, weight, {"net": terminal})
    assert len(held._pending) == len(records) - 1  # the first record is applied at once, the rest held
    mid_epoch = held.state_dict()  # a checkpoint applies the held records first
    assert len(held._pending) == 0
    for key, expected in reference.state_dict().items():
        torch.testing.assert_close(mid_epoch[key], expected, rtol=1e-6, atol=1e-6, msg=key)
    assert torch.equal(mid_epoch["stats.count"], reference.stats.count)  # counts exactly


def test_held_labels_out_of_range_fail_when_applied():
    from lightning_dv.methods.nddv.state import NDDVState

    state = NDDVState(4, "softplus", 4)
    probs = torch.full((2, 2), 0.5)
    with pytest.raises(ValueError, match="labels must lie in"):  # the first step is applied at once
        state.record(torch.tensor([0, 1]), probs, torch.tensor([0, 2]), torch.ones(2), {})
    state.record(torch.tensor([0, 1]), probs, torch.tensor([0, 1]), torch.ones(2), {})
    state.record(torch.tensor([2, 3]), probs, torch.tensor([5, 1]), torch.ones(2), {})  # held
    with pytest.raises(ValueError, match=r"got \[0, 5\]"):
        state.flush()


def test_a_checkpoint_of_mains_layout_loads_and_resumes_bit_for_bit():
    # tests/data/state_main_5c1bc3b.pt: NDDV's, AUM's and row-sparse weights' state written mid-epoch
    # by main at 5c1bc3b (float32 counters, a per-epoch weight column, four weight vectors), with
    # the values main computed then and after replaying the epoch's rest (tests/scripts/state_layout.py).
    import importlib.util

    from lightning_dv.methods.weights import SampleWeights

    path = Path(__file__).parent / "scripts" / "state_layout.py"
    spec = importlib.util.spec_from_file_location("state_layout", path)
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    saved = torch.load(Path(__file__).parent / "data" / "state_main_5c1bc3b.pt")
    assert (
        saved["nddv"]["stats.sum"].shape == (layout.ROWS, 2)
        and saved["aum"]["margin.count"].is_floating_point()
    )
    # main's state holds learned softplus weights: the default (fixed) NDDV refuses it by name
    with pytest.raises(ValueError, match=r"learned softplus weights.*learn_weights=True"):
        layout.NDDV(window=2).build(layout.ROWS).load_state_dict(saved["nddv"])
    nddv, aum = layout.NDDV(window=2, learn_weights=True), layout.AUM(window=2)
    state, margins = nddv.build(layout.ROWS), aum.build(layout.ROWS)
    state.load_state_dict(saved["nddv"])
    margins.load_state_dict(saved["aum"])
    weights = SampleWeights(300, constraint="softplus", dense_below=0)
    weights.load_state_dict(saved["weights"])
    assert state.stats.sum.shape == (layout.ROWS,) and state.stats.count.dtype == torch.uint8

    def same(got, expected):
        for key, value in expected.items():
            if isinstance(value, dict):
                same(got[key], value)
            else:
                assert got[key].dtype == value.dtype and torch.equal(got[key], value), key

    same(layout.results(nddv, state, aum, margins, weights), saved["mid"])
    data = layout.records()
    layout.HALF[:] = []  # the replayed rest ends the epoch
    layout.play(nddv, state, aum, margins, [(2, data[-1][layout.STEPS // 2 :])])
    layout.sparse_steps(weights, 20, seed=2)
    same(layout.results(nddv, state, aum, margins, weights), saved["end"])


# -- fixed vs learned softplus weights (learn_weights) --------------------------------------------
class RecordingMLP(MLP):
    """Keeps every training step's (epoch, rows, logits, labels) as the objective saw them (before the update)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        idx, x, y = batch
        with torch.no_grad():
            self.seen.append((self.current_epoch, idx.clone(), self(x).clone(), y.clone()))
        return super().training_step(batch, batch_idx)


def test_fixed_weights_values_equal_a_brute_force_reference_with_no_weight_state_or_step(split):
    """Default NDDV at model_loss='plain': every row weighs 1. Reference written from the formula in
    float64, row by row: v_i = -(1/K) sum_k p_ik (softmax(p_i)_k - [k = y_i]) with p_i = softmax(z_i),
    the mean over epochs, the marginal calibration; mu = the plain mean of the epoch's terminal states."""
    x, y = split.x_train[:200], split.y_train[:200]
    seeded(0)
    model = RecordingMLP(64, 10)
    cb = DataValuation(NDDV(calibration="marginal"))
    trainer = L.Trainer(max_epochs=3, callbacks=[cb], **trainer_kwargs())
    trainer.fit(model, loader(x, y, batch_size=32))
    state, n, k = model.dv_state, len(x), 10
    assert state.weights is None and not any(p.requires_grad for p in state.parameters())
    assert cb.optimizer is None and cb.optimizer_steps == 0  # no weight step
    per_row = sum(
        t.numel() * t.element_size() for t in state.state_dict().values() if t.ndim and t.shape[0] == n
    )
    assert per_row == 14 * n  # value sum (4), count (1), total (4), epochs (1), latest (4)

    v = np.zeros((3, n))
    probs = {}
    for epoch, rows, logits, labels in model.seen:
        for r, z, label in zip(rows.tolist(), logits.double(), labels.tolist()):
            p = torch.softmax(z, 0)
            soft = torch.softmax(p, 0)  # the costate of CE on the terminal state p: softmax(p) - onehot
            v[epoch, r] = float(-(p * (soft - F.one_hot(torch.tensor(label), k).double())).sum() / k)
            probs[epoch, r] = p
    raw = v.mean(0)
    expected = raw - (raw.sum() - raw) / (n - 1)
    np.testing.assert_allclose(cb.values.columns["nddv_state_costate_mean"], raw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(cb.values.values, expected, rtol=1e-5, atol=1e-6)
    mu = torch.stack([probs[2, r] for r in range(n)]).mean(0)  # the last epoch's, every row weighing 1
    torch.testing.assert_close(state.mean_field.double(), mu, rtol=1e-5, atol=1e-6)
    assert (cb.values.columns["nddv_weight"] == 1).all()


def test_learned_weights_by_default_only_where_the_model_reads_them(split):
    assert NDDV().learned is False and NDDV(learn_weights=True).learned is True
    for mode in ("reweight", "objective"):
        assert DataValuation(NDDV(), model_loss=mode).objective.learned is True
    assert DataValuation(NDDV(), model_loss="plain").objective.learned is False
    meta = (torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    assert NDDV(weighting="meta", meta=meta).learned is False  # the weight network, no per-row weights
    # learned weights step every step and go down for the noisy rows
    seeded(0)
    cb = DataValuation(NDDV(learn_weights=True))
    L.Trainer(max_epochs=3, callbacks=[cb], **trainer_kwargs()).fit(
        MLP(64, 10), loader(split.x_train, split.y_train)
    )
    assert cb.optimizer_steps == 3 * 32
    w = cb.values.columns["nddv_weight"]
    assert w[split.noisy].mean() < np.delete(w, split.noisy).mean()


def test_learn_weights_errors_name_the_argument():
    with pytest.raises(TypeError, match="`learn_weights` must be True, False or None"):
        NDDV(learn_weights="yes")
    meta = (torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="`weighting='meta'` computes the weights with a weight network"):
        NDDV(weighting="meta", meta=meta, learn_weights=False)
    for mode in ("reweight", "objective"):
        with pytest.raises(ValueError, match=f"model_loss='{mode}'.*`NDDV\\(learn_weights=False\\)` keeps"):
            DataValuation(NDDV(learn_weights=False), model_loss=mode)


@pytest.mark.parametrize("written", [True, None])
def test_resuming_the_other_kind_of_weights_names_learn_weights(written, split, tmp_path):
    x, y = split.x_train[:64], split.y_train[:64]
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = L.Trainer(max_epochs=1, callbacks=[DataValuation(NDDV(learn_weights=written)), ckpt],
                      **trainer_kwargs(enable_checkpointing=True))  # fmt: skip
    first.fit(MLP(64, 10), loader(x, y))
    kind, wanted = ("learned", "True") if written else ("fixed", "False")
    resumed = NDDV(learn_weights=None if written else True)
    with pytest.raises(
        ValueError, match=f"NDDV's state with {kind} softplus weights.*learn_weights={wanted}"
    ):
        L.Trainer(max_epochs=2, callbacks=[DataValuation(resumed)], **trainer_kwargs()).fit(
            MLP(64, 10), loader(x, y), ckpt_path=tmp_path / "last.ckpt"
        )
