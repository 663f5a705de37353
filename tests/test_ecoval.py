"""Tests of EcoVal: cluster valuation, production-function fit, batched trainer, unseen points."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dv.callbacks import EcoValValuation
from lightning_dv.data import IndexedDataset
from lightning_dv.methods.ecoval import (
    EcoVal,
    fit_cobb_douglas,
    neighbour_agreement,
    sample_subsets,
    train_softmax_batched,
)
from lightning_dv.values import DataValues

torch.set_num_threads(1)
FAST = {"n_clusters": 12, "n_subsets": 200, "steps": 100}


def blobs(seed: int, n: int = 150, group: int = 30):
    """Two overlapping classes plus a coherent group of WRONG labels inside class 0's region.

    Rows ``2n .. 2n+group-1`` are the group: class-0 territory, labelled 1. The validation set
    labels that territory 0, so the group is harmful.
    """
    rng = np.random.default_rng(seed)
    x = np.concatenate(
        [
            rng.normal([-1.5, 0], 1.0, (n, 2)),
            rng.normal([1.5, 0], 1.0, (n, 2)),
            rng.normal([-2.5, 2.5], 0.4, (group, 2)),
        ]
    ).astype(np.float32)
    y = np.concatenate([np.zeros(n), np.ones(n), np.ones(group)]).astype(np.int64)
    xv = np.concatenate(
        [
            rng.normal([-1.5, 0], 1.0, (100, 2)),
            rng.normal([1.5, 0], 1.0, (100, 2)),
            rng.normal([-2.5, 2.5], 0.4, (10, 2)),
        ]
    ).astype(np.float32)
    yv = np.concatenate([np.zeros(100), np.ones(100), np.zeros(10)]).astype(np.int64)
    return x, y, xv, yv


@pytest.fixture(scope="module")
def fitted():
    x, y, xv, yv = blobs(0)
    eco = EcoVal(seed=0, **FAST)
    return eco, eco.fit(x, y, xv, yv), (x, y, xv, yv)


# -- valuation behaviour ------------------------------------------------------------------------
def test_flipped_cluster_gets_low_value(fitted):
    eco, dv, (x, y, _, _) = fitted
    group = np.arange(300, 330)
    clusters = np.unique(dv.columns["cluster"][group])
    assert len(clusters) == 1, "the coherent group should form its own cluster"
    # the group agrees with itself, so the neighbourhood term alone cannot find it ...
    assert dv.columns["intrinsic"][group].mean() > 0.8
    # ... its cluster's elasticity is negative, and that pushes it below 90% of the clean rows
    assert eco.production.alpha[clusters[0]] < 0
    assert dv.columns["extrinsic"][group].max() < 0
    assert dv.values[group].max() < np.quantile(dv.values[:300], 0.1)
    assert isinstance(dv, DataValues) and len(dv) == len(x)


def test_total_value_formula(fitted):
    """total = intrinsic + w * (alpha_k / sum|alpha|) / (n_k / N), w = 0.3 if harmful else 0.1."""
    eco, dv, (x, _, _, _) = fitted
    alpha = eco.production.shrunk_alpha()
    sizes = np.bincount(dv.columns["cluster"])
    e = alpha / np.abs(eco.production.alpha).sum() / (sizes / len(x))
    expected = dv.columns["intrinsic"] + (np.where(e < 0, 0.3, 0.1) * e)[dv.columns["cluster"]]
    np.testing.assert_allclose(dv.values, expected, rtol=1e-12)
    assert (e < 0).any() and (e > 0).any()
    # the extrinsic column is the marginal product alpha_k * U / n_k at the full data
    u_full = np.exp(eco.production.log_utility(sizes))
    np.testing.assert_allclose(
        dv.columns["extrinsic"], (alpha * u_full / sizes)[dv.columns["cluster"]], rtol=1e-12
    )
    assert dv.metadata["n_trainings"] == FAST["n_subsets"]
    assert dv.metadata["wall_time_s"] > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_duplicating_a_useful_cluster_does_not_raise_its_value(seed):
    x, y, xv, yv = blobs(seed, group=0)
    eco = EcoVal(seed=seed, **FAST)
    dv = eco.fit(x, y, xv, yv)
    k = int(np.argmax(eco.cluster_score))  # the most productive cluster per unit of data
    members = np.flatnonzero(dv.columns["cluster"] == k)
    dv2 = EcoVal(seed=seed, **FAST).fit(
        np.concatenate([x, x[members]]), np.concatenate([y, y[members]]), xv, yv
    )
    # copies are no evidence for a point: the neighbourhood term is exactly unchanged
    np.testing.assert_array_equal(dv2.columns["intrinsic"][members], dv.columns["intrinsic"][members])
    assert dv2.values[members].mean() <= dv.values[members].mean() + 1e-9
    assert dv2.values[len(x) :].mean() <= dv.values[members].mean() + 1e-9


def test_neighbour_agreement_brute_force():
    rng = np.random.default_rng(3)
    ref = torch.tensor(rng.normal(size=(40, 3)))
    ref_y = torch.tensor(rng.integers(0, 3, 40))
    got = neighbour_agreement(ref, ref_y, ref, ref_y, n_neighbors=5)
    for i in range(40):
        d = ((ref - ref[i]) ** 2).sum(1).sqrt()
        d[i] = float("inf")
        nn_idx = torch.argsort(d)[:5]
        assert got[i] == pytest.approx(float((ref_y[nn_idx] == ref_y[i]).double().mean()))
    # duplicated reference rows count once; the query's own copies are excluded
    ref2, ref_y2 = torch.cat([ref, ref[:10]]), torch.cat([ref_y, ref_y[:10]])
    np.testing.assert_array_equal(neighbour_agreement(ref2, ref_y2, ref, ref_y, 5), got)


# -- out of sample -------------------------------------------------------------------------------
def test_out_of_sample_copies_match_in_sample_values(fitted):
    eco, dv, (x, y, _, _) = fitted
    rows = np.arange(0, 330, 7)
    new = eco.value(x[rows], y[rows])
    np.testing.assert_array_equal(new.columns["cluster"], dv.columns["cluster"][rows])
    np.testing.assert_allclose(new.values, dv.values[rows], atol=1e-12)
    np.testing.assert_allclose(new.columns["intrinsic"], dv.columns["intrinsic"][rows], atol=1e-12)
    assert new.metadata["n_trainings"] == 0


@pytest.mark.parametrize("per_class", [True, False])
def test_features_function_and_global_clusters(per_class):
    x, y, xv, yv = blobs(2)
    proj = torch.tensor([[1.0, 0.5, -1.0], [0.0, 2.0, 1.0]])
    calls = []

    def embed(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.shape[0])
        return t @ proj

    eco = EcoVal(features=embed, per_class=per_class, **FAST)
    dv = eco.fit(x, y, xv, yv)
    assert eco.centroids.shape[1] == 3 and calls == [len(x), len(xv)]
    if not per_class:  # one set of clusters for all classes
        assert (eco.centroid_class == -1).all()
    new = eco.value(x[:40], y[:40])
    assert calls[-1] == 40
    np.testing.assert_allclose(new.values, dv.values[:40], atol=1e-12)


def test_held_out_points_valued_without_retraining():
    x, y, xv, yv = blobs(1)
    held = np.concatenate([np.arange(0, 300, 15), np.arange(300, 330, 3)])  # 20 clean + 10 of the group
    keep = np.setdiff1d(np.arange(len(x)), held)
    eco = EcoVal(seed=1, **FAST)
    dv_full = EcoVal(seed=1, **FAST).fit(x, y, xv, yv)
    eco.fit(x[keep], y[keep], xv, yv)
    new = eco.value(x[held], y[held])
    # the held-out members of the harmful group join its cluster and come out below the clean rows
    assert new.values[20:].max() < np.median(new.values[:20])
    # and the out-of-sample values track the in-sample values of a fit that saw them
    rho = np.corrcoef(np.argsort(np.argsort(new.values)), np.argsort(np.argsort(dv_full.values[held])))[0, 1]
    assert rho > 0.6


# -- production function -------------------------------------------------------------------------
def test_cobb_douglas_recovers_known_elasticities():
    rng = np.random.default_rng(0)
    cluster = np.repeat(np.arange(6), [10, 20, 30, 15, 25, 40])
    _, counts = sample_subsets(cluster, 300, (0.2, 1.0), seed=0)
    alpha = np.array([0.30, -0.20, 0.10, 0.0, 0.05, -0.08])
    clean = -0.4 + np.log(counts) @ alpha
    log_u = clean + rng.normal(0, 0.005, 300)
    fit = fit_cobb_douglas(counts, log_u, ridge=1e-6)
    np.testing.assert_allclose(fit.alpha, alpha, atol=0.01)
    assert fit.log_a == pytest.approx(-0.4, abs=0.03)
    assert fit.r2 > 0.99
    # standard errors match the scatter of the estimate over fresh noise draws
    draws = [fit_cobb_douglas(counts, clean + rng.normal(0, 0.005, 300), 1e-6).alpha for _ in range(100)]
    np.testing.assert_allclose(np.std(draws, axis=0), fit.stderr, rtol=0.3)
    # shrinkage zeroes the elasticity that is truly 0 and keeps the strong ones
    shrunk = fit.shrunk_alpha()
    assert abs(shrunk[3]) <= abs(fit.alpha[3]) and shrunk[0] == pytest.approx(fit.alpha[0], rel=0.01)
    # Euler: extrinsic values (marginal products times counts) add up to returns-to-scale times U
    full = counts[0]
    assert (fit.marginal_products(full) * full).sum() == pytest.approx(
        fit.alpha.sum() * np.exp(fit.log_utility(full)), rel=1e-10
    )


def test_sample_subsets_counts_and_full_first():
    cluster = np.array([0, 0, 0, 1, 1, 2])
    masks, counts = sample_subsets(cluster, 50, (0.3, 0.7), seed=1)
    assert masks[0].all() and counts[0].tolist() == [3, 2, 1]
    for k in range(3):
        np.testing.assert_array_equal(masks[:, cluster == k].sum(1), counts[:, k])
    assert counts.min() >= 1


# -- trainings -----------------------------------------------------------------------------------
def test_batched_trainer_equals_per_subset_loop_and_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(60, 4)))
    y = torch.tensor(rng.integers(0, 3, 60))
    masks = torch.tensor(rng.random((4, 60)) < 0.7)
    l2, steps = 0.05, 60
    batched = train_softmax_batched(x, y, masks, 3, steps=steps, l2=l2)
    xb = torch.cat([x, torch.ones(60, 1, dtype=x.dtype)], 1)
    for s in range(4):
        # the same accelerated scheme, one subset at a time, with autograd gradients
        m = masks[s].double()
        lipschitz = torch.linalg.eigvalsh(xb.T @ (xb * m[:, None]) / m.sum())[-1] / 2 + l2
        w = torch.zeros(5, 3, dtype=x.dtype)
        w_prev = w
        for t in range(steps):
            look = (w + t / (t + 3.0) * (w - w_prev)).requires_grad_(True)
            obj = (F.cross_entropy(xb @ look, y, reduction="none") * m).sum() / m.sum()
            obj = obj + l2 / 2 * (look[:-1] ** 2).sum()
            (grad,) = torch.autograd.grad(obj, look)
            w_prev, w = w, (look - grad / lipschitz).detach()
        torch.testing.assert_close(batched[s], w, rtol=1e-9, atol=1e-9)
    # run to convergence: the optimum of the convex problem is scikit-learn's
    converged = train_softmax_batched(x, y, masks, 3, steps=3000, l2=l2)
    for s in range(4):
        rows = masks[s].numpy()
        ref = LogisticRegression(C=1.0 / (l2 * rows.sum()), tol=1e-12, max_iter=10000).fit(x[rows], y[rows])
        np.testing.assert_allclose(converged[s, :-1].numpy(), ref.coef_.T, atol=1e-5)
        probs = torch.softmax(xb @ converged[s], 1).numpy()
        np.testing.assert_allclose(probs, ref.predict_proba(x.numpy()), atol=1e-5)


def test_progress_is_logged_per_block_of_subsets(caplog):
    import logging

    x, y, xv, yv = blobs(0, n=30, group=0)
    with caplog.at_level(logging.INFO, logger="lightning_dv.methods.ecoval"):
        EcoVal(n_clusters=4, n_subsets=20, steps=10, subset_batch=8).fit(x, y, xv, yv)
    text = caplog.text
    assert "60 rows in 4 clusters; 20 trainings" in text
    assert "trained 8/20" in text and "trained 16/20" in text and "trained 20/20" in text
    assert "done in" in text


class TinyMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        _, x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


def test_lightning_module_utility_model(capfd, caplog):
    import logging

    x, y, xv, yv = blobs(0, n=30, group=0)
    eco = EcoVal(n_clusters=4, utility_model=TinyMLP, n_subsets=3, trainer_kwargs={"max_epochs": 5})
    capfd.readouterr()
    with caplog.at_level(logging.INFO):  # Lightning's banners are INFO records of its loggers
        dv = eco.fit(x, y, xv, yv)
    out = "".join(capfd.readouterr()) + caplog.text
    assert dv.metadata["n_trainings"] == 3 and dv.metadata["utility_model"] == "lightning"
    assert dv.metadata["utility_full"] > 0.8  # the MLP really trained: two separated classes
    assert np.isfinite(dv.values).all()
    # no Lightning banners from the nested fits, one k/N bar instead
    for banner in ("GPU available", "TPU available", "HPU available", "max_epochs=", "LOCAL_RANK"):
        assert banner not in out
    assert "EcoVal trainings" in out and "3/3" in out
    EcoVal(n_clusters=4, utility_model=TinyMLP, n_subsets=2, progress=False).fit(x, y, xv, yv)
    assert "EcoVal trainings" not in "".join(capfd.readouterr())


# -- logging, export, callback -------------------------------------------------------------------
def test_callback_values_training_rows_at_train_start(tmp_path):
    x, y, xv, yv = blobs(0, n=40, group=10)
    loader = DataLoader(
        IndexedDataset(TensorDataset(torch.tensor(x), torch.tensor(y))), batch_size=16, shuffle=True
    )
    cb = EcoValValuation(
        EcoVal(n_clusters=6, n_subsets=50, steps=50), (xv, yv), export_path=str(tmp_path / "v.npz")
    )
    trainer = pl.Trainer(
        max_epochs=1, callbacks=[cb], logger=False, enable_progress_bar=False, enable_checkpointing=False
    )
    trainer.fit(TinyMLP(), loader)
    direct = EcoVal(n_clusters=6, n_subsets=50, steps=50).fit(x, y, xv, yv)
    np.testing.assert_allclose(cb.values.values, direct.values)  # rows put back in dataset order
    assert (tmp_path / "v.npz").exists()


# -- errors --------------------------------------------------------------------------------------
def test_clear_errors(fitted):
    eco, _, (x, y, xv, yv) = fitted
    with pytest.raises(ValueError, match="`utility` must be one of"):
        EcoVal(utility="f1")
    with pytest.raises(TypeError, match="pass a factory"):
        EcoVal(utility_model=TinyMLP())
    with pytest.raises(ValueError, match="fraction_range"):
        EcoVal(fraction_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="one label per row"):
        EcoVal(**FAST).fit(x, y[:-1], xv, yv)
    with pytest.raises(ValueError, match="integer class labels"):
        EcoVal(**FAST).fit(x, y + 0.5, xv, yv)
    with pytest.raises(ValueError, match="features but `x_valid` has"):
        EcoVal(**FAST).fit(x, y, xv[:, :1], yv)
    with pytest.raises(ValueError, match="holds class 5"):
        eco.value(x[:2], np.array([0, 5]))
    with pytest.raises(RuntimeError, match="call `fit"):
        EcoVal().value(x, y)
    with pytest.raises(ValueError, match=">= 1"):
        fit_cobb_douglas(np.array([[0, 2], [1, 2], [2, 1]]), np.zeros(3))
    with pytest.raises(TypeError, match="IndexedDataset"):  # same error as every whole-set callback
        cb = EcoValValuation(EcoVal(**FAST), (xv, yv))
        loader = DataLoader(TensorDataset(torch.tensor(x), torch.tensor(y)), batch_size=64)
        trainer = pl.Trainer(max_epochs=1, callbacks=[cb], logger=False, enable_progress_bar=False)
        trainer.fit(TinyMLP(), loader)
