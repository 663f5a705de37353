"""The shared calibration, the per-row epoch window and the AUM / NDDV options built on them."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import MLP, MarginObjective, contract_data, loader, seeded, trainer_kwargs

from lightning_dv import DataValuation
from lightning_dv.datasets import load_bundled, make_split
from lightning_dv.distributed import RowStatistics
from lightning_dv.methods.aum import AUM
from lightning_dv.methods.base import ValuationStep
from lightning_dv.methods.calibration import calibrate, robust_clip
from lightning_dv.methods.nddv import NDDV


def reference_calibration(x: np.ndarray, fence: float, upper: float) -> np.ndarray:
    """Median/MAD score, clipped, upper half scaled: written out in numpy."""
    med = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - med))
    z = np.clip((x - med) / mad, -fence, fence)
    return np.where(z > 0, z * upper, z)


def test_calibrate_matches_the_closed_form_and_keeps_the_order():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_cauchy(199), [1e6, -1e6]])  # odd length: torch's median is numpy's
    out = calibrate(torch.as_tensor(x), upper_scale=0.2).numpy()
    fence = max(3.0, 0.5 * np.sqrt(len(x)))
    np.testing.assert_allclose(out, reference_calibration(x, fence, 0.2), rtol=1e-5, atol=1e-5)
    assert (np.diff(out[np.argsort(x, kind="stable")]) >= 0).all()  # monotone: AUROC unchanged
    assert out.max() <= 0.2 * fence + 1e-6 and out.min() >= -fence - 1e-6


def test_calibrate_unseen_rows_sit_at_the_median_and_none_is_identity():
    x = torch.tensor([5.0, -3.0, 1.0, 2.0, 100.0])
    seen = torch.tensor([True, True, True, True, False])
    out = calibrate(x, seen=seen, fence=3.0)
    assert out[4] == 0
    torch.testing.assert_close(out[:4], robust_clip(x[:4], 3.0, 0.1))
    torch.testing.assert_close(calibrate(x, "none"), x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"calibration": "zscore"}, "calibration"),
        ({"upper_scale": 0.0}, "upper_scale"),
        ({"fence": -1}, "fence"),
    ],
)
def test_calibrate_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        calibrate(torch.ones(3), **kwargs)
    if "calibration" not in kwargs:
        with pytest.raises(ValueError, match=match):
            AUM(**kwargs)


def test_row_statistics_window_against_brute_force():
    """Random records over 5 epochs (rows repeated, some epochs skipped): the mean of the first 2 epoch means."""
    rng = np.random.default_rng(1)
    stats = RowStatistics(6, window=2)
    epoch_means: dict[int, list[float]] = {i: [] for i in range(6)}
    for _ in range(5):
        rows = rng.integers(0, 6, size=8)
        vals = rng.normal(size=8)
        stats.update(torch.as_tensor(rows), torch.as_tensor(vals, dtype=torch.float32))
        stats.reduce()
        for r in set(rows.tolist()):
            epoch_means[r].append(float(vals[rows == r].mean()))
    expected = [np.mean(m[:2]) if m else 0.0 for m in epoch_means.values()]
    np.testing.assert_allclose(stats.mean().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert stats.epochs.tolist() == [float(len(m)) for m in epoch_means.values()]
    with pytest.raises(ValueError, match="window"):
        RowStatistics(3, window=0)


def _fit(objective, epochs, seed=0):
    x, y, _, _ = contract_data()
    seeded(seed)
    valuation = DataValuation(objective)
    L.Trainer(max_epochs=epochs, callbacks=[valuation], **trainer_kwargs()).fit(
        MLP(x.shape[1], 3), loader(x, y, batch_size=16, seed=seed)
    )
    return valuation.values


def test_aum_window_freezes_values_and_raw_mode_is_the_papers_mean_margin():
    """window=2 over 4 epochs: the values stop changing after epoch 2; window=None, calibration='none'
    equals the plain area-under-the-margin accumulator of the same fit."""
    frozen = _fit(AUM(window=2), epochs=4)
    traj = np.asarray(frozen.trajectory)
    np.testing.assert_array_equal(traj[1], traj[3])
    assert not np.array_equal(traj[0], traj[1])
    margin = torch.as_tensor(np.asarray(frozen.columns["aum_margin"]))
    np.testing.assert_allclose(frozen.values, calibrate(margin, gate=0.0).numpy(), rtol=1e-6)
    raw = _fit(AUM(window=None, calibration="none"), epochs=3)
    reference = _fit(MarginObjective(), epochs=3)
    np.testing.assert_allclose(raw.values, reference.values, rtol=1e-6)


def test_nddv_window_freezes_the_mean_after_window_epochs():
    torch.manual_seed(0)
    logits = [torch.randn(6, 3) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    objective = NDDV(calibration="marginal", interaction=0.0, window=2)
    state = objective.build(6)
    per_epoch = []
    for z in logits:
        out = z.clone().requires_grad_(True)
        objective.loss(
            state, ValuationStep(F.cross_entropy(out, y, reduction="none"), torch.arange(6), None, out, y)
        ).backward()
        objective.sync(state)
        per_epoch.append(state.raw_value.detach().clone())
    torch.testing.assert_close(objective.raw_values(state), (per_epoch[0] + per_epoch[1]) / 2)
    with pytest.raises(ValueError, match="window"):
        NDDV(window=0)


def test_aum_calibration_flags_label_noise_like_its_ranking():
    """Digits, 10% label noise, 10 epochs: calibrated 2-means F1 close to the share found in the lowest 10%."""
    from lightning_dv.metrics import detection_auroc, kmeans_f1

    s = make_split("digits", noise=0.1, seed=3, n_train=500, n_test=100)
    seeded(3)
    valuation = DataValuation(AUM())
    L.Trainer(max_epochs=10, callbacks=[valuation], **trainer_kwargs()).fit(
        MLP(s.x_train.shape[1], s.num_classes), loader(s.x_train, s.y_train, seed=3)
    )
    v = valuation.values
    raw = np.asarray(v.columns["aum_margin"])
    assert detection_auroc(v.values, s.noisy) > 0.95
    assert kmeans_f1(v.values, s.noisy) > 0.7 > kmeans_f1(raw, s.noisy) + 0.1


@pytest.mark.parametrize("name", ["overlap", "moons"])
def test_synthetic_generators_are_deterministic_classification_sets(name):
    x, y = load_bundled(name, seed=4)
    x2, y2 = load_bundled(name, seed=4)
    np.testing.assert_array_equal(x, x2)
    assert x.dtype == np.float32 and y.dtype == np.int64 and len(x) == 5000
    assert set(np.unique(y).tolist()) == ({0, 1, 2} if name == "overlap" else {0, 1})
    s = make_split(name, noise=0.2, seed=0)
    assert len(s.x_train) == 1000 and len(s.noisy) == 200


@pytest.mark.parametrize("n", [2, 3, 7, 50, 400])
def test_gate_low_cluster_makes_two_means_flag_exactly_the_gated_rows(n):
    """Brute force over random heavy-tailed scores and any mask: 2-means of the output is the
    2-means low cluster of the input AND the mask, and a monotone gate keeps the order."""
    from lightning_dv.methods.calibration import gate_low_cluster
    from lightning_dv.metrics import two_means_split

    rng = np.random.default_rng(n)
    for trial in range(40):
        raw = torch.as_tensor(rng.standard_t(2, size=n) + rng.normal(size=n) * trial, dtype=torch.float64)
        scores = robust_clip(raw, upper_scale=0.1).double()
        allowed = torch.as_tensor(rng.random(n) < 0.5) if trial % 2 else raw < float(rng.normal())
        want = two_means_split(scores) & allowed
        out = gate_low_cluster(scores, allowed)
        if want.any() and not want.all():
            assert torch.equal(two_means_split(out), want)
            if trial % 2 == 0:  # gate = raw below a threshold: the order of the rows is kept
                o = torch.argsort(raw, stable=True)
                assert bool((out[o].diff() >= 0).all())
        else:
            assert torch.equal(out, scores)


def test_aum_gate_flags_only_rows_whose_label_loses_and_rejects_bad_gates():
    """make_classification, 10% flipped labels, 10 epochs: 2-means alone flags rows the model still
    labels as given (margin >= 0); the gate drops them and F1 does not fall."""
    from lightning_dv.metrics import detection_auroc, kmeans_f1, two_means_split

    s = make_split("classification", noise=0.1, seed=101, n_train=600, n_test=100)
    out = {}
    for gate in (0.0, None):
        seeded(101)
        valuation = DataValuation(AUM(gate=gate))
        L.Trainer(max_epochs=10, callbacks=[valuation], **trainer_kwargs()).fit(
            MLP(s.x_train.shape[1], s.num_classes), loader(s.x_train, s.y_train, seed=101)
        )
        out[gate] = valuation.values
    gated, plain = out[0.0], out[None]
    margin = np.asarray(gated.columns["aum_margin"])
    np.testing.assert_array_equal(margin, np.asarray(plain.columns["aum_margin"]))  # same fit
    flags = two_means_split(gated.values).numpy()
    tolerance = 0.1 * 1.4826 * np.median(np.abs(margin - np.median(margin)))  # AUM's default gate_tolerance
    assert (margin[flags] < -tolerance).all() and (margin[two_means_split(plain.values).numpy()] >= 0).any()
    assert flags.sum() < two_means_split(plain.values).sum()
    assert kmeans_f1(gated.values, s.noisy) >= kmeans_f1(plain.values, s.noisy)
    assert detection_auroc(gated.values, s.noisy) == pytest.approx(detection_auroc(plain.values, s.noisy))
    assert np.array_equal(gated.flagged, flags)  # DataValues' own flag is the gated decision
    with pytest.raises(ValueError, match="gate"):
        AUM(gate="zero")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_robust_clip_and_score_equal_the_plain_float64_formula(dtype, monkeypatch):
    """Bit for bit what the formula gives on a float64 copy (median by torch), across chunks."""
    import lightning_dv.methods.calibration as calibration
    from lightning_dv.methods.calibration import robust_score

    monkeypatch.setattr(calibration, "_CHUNK", 7)
    g = torch.Generator().manual_seed(0)
    for x in (torch.randn(101, generator=g).exp(), torch.randint(-2, 3, (50,)).float(), torch.zeros(9)):
        x = x.to(dtype)
        x64 = x.double()
        med = x64.median()
        dev = (x64 - med).abs()
        scale = 1.4826 * dev.median()
        scale = scale if scale > 0 else dev.mean()
        z = torch.zeros_like(x64) if not scale > 0 else (x64 - med) / scale
        assert torch.equal(robust_score(x), z)
        fence = max(3.0, 0.5 * x.numel() ** 0.5)
        zc = z.clamp(-fence, fence)
        assert torch.equal(robust_clip(x, upper_scale=0.1), torch.where(zc > 0, zc * 0.1, zc).float())


@pytest.mark.parametrize("n", [5, 40, 400])
def test_gate_tolerance_flags_the_brute_force_rule_and_keeps_the_order(n):
    """calibrate(gate=g, gate_tolerance=t): 2-means on the output flags exactly the rows of the
    brute-force rule "low 2-means cluster of the clipped robust score AND x < g - t * 1.4826 MAD"
    (written out in numpy with torch's lower median, odd and even n), and the order is kept."""
    from lightning_dv.metrics import two_means_split

    rng = np.random.default_rng(n)
    for trial in range(30):
        x = np.concatenate([rng.normal(2.0, 1.0, n - n // 5), rng.normal(-1.5, 1.0 + trial / 10, n // 5)])
        tol = [0.0, 0.1, 0.5, 2.0][trial % 4]
        lower_median = lambda v: np.sort(v)[(len(v) - 1) // 2]  # torch's median: the lower middle  # noqa: E731
        med = lower_median(x)
        mad = 1.4826 * lower_median(np.abs(x - med))
        z = np.clip((x - med) / mad, -max(3.0, 0.5 * np.sqrt(n)), np.inf)
        want = two_means_split(np.where(z > 0, 0.1 * np.minimum(z, max(3.0, 0.5 * np.sqrt(n))), z)).numpy()
        want &= x < 0.0 - tol * mad
        out = calibrate(torch.as_tensor(x), gate=0.0, gate_tolerance=tol)
        if want.any() and not want.all():
            assert np.array_equal(two_means_split(out).numpy(), want)
        order = np.argsort(x, kind="stable")
        assert (np.diff(out.numpy()[order]) >= 0).all()
    # tolerance 0 is the plain gate; a bad tolerance names the argument
    x = torch.as_tensor(rng.normal(size=50))
    from lightning_dv.methods.calibration import gate_low_cluster

    assert torch.equal(
        calibrate(x, gate=0.0, gate_tolerance=0.0),
        gate_low_cluster(robust_clip(x, None, 0.1).double(), x < 0),
    )
    for bad in (-0.1, float("inf"), "0.1", True):
        with pytest.raises(ValueError, match="gate_tolerance"):
            calibrate(x, gate=0.0, gate_tolerance=bad)
        with pytest.raises(ValueError, match="gate_tolerance"):
            AUM(gate_tolerance=bad)
