"""Complexity-gap score: exactness against the brute-force definition, invariances, duplicates,
detection of flipped labels, memory errors, and the Lightning callback in a real fit."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

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

from lightning_dv.callbacks import ComplexityGapValuation
from lightning_dv.data import IndexedDataset
from lightning_dv.methods.complexity_gap import (
    NotPositiveDefiniteError,
    cg_scores,
    complexity_gap,
    plan_problems,
)
from lightning_dv.metrics import detection_auroc, two_means_split
from lightning_dv.values import DataValues

TOL = dict(rtol=1e-9, atol=1e-9)


# -- brute-force reference: the definition, re-solving without row i ----------------------------
def ntk_gram(x: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    xn = x / x.norm(dim=1, keepdim=True)
    rho = (xn @ xn.T).clamp(-1.0, 1.0)
    h = rho * (math.pi - torch.arccos(rho)) / (2 * math.pi)
    h.fill_diagonal_(0.5)
    return h + ridge * torch.eye(len(x), dtype=x.dtype)


def brute_cg(x: torch.Tensor, y: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """CG(i) = y^T H^-1 y - y_-i^T H_-i^-1 y_-i, every i, by solving each reduced system."""
    h = ntk_gram(x, ridge)
    full = y @ torch.linalg.solve(h, y)
    out = []
    for i in range(len(y)):
        keep = torch.arange(len(y)) != i
        out.append(full - y[keep] @ torch.linalg.solve(h[keep][:, keep], y[keep]))
    return torch.stack(out)


def brute_plan(x: torch.Tensor, problems, n: int, ridge: float = 0.0) -> torch.Tensor:
    """Average of the brute-force scores over the same problems (same negatives)."""
    total = torch.zeros(n, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.float64)
    for p in problems:
        cg = brute_cg(x[p.rows], p.targets, ridge)[len(p.rows) - p.num_scored :]
        total[p.scored_rows] += cg
        count[p.scored_rows] += 1
    assert (count > 0).all(), "every row must be scored"
    return total / count


def data(n: int = 40, d: int = 6, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def cg(dv: DataValues) -> torch.Tensor:
    return torch.as_tensor(dv.columns["cg_score"])


# -- exactness ----------------------------------------------------------------------------------
@pytest.mark.parametrize("block_size", [1, 7, 1024])
def test_binary_equals_brute_force(block_size):
    x, y = data(n=33, classes=2, seed=1)
    dv = complexity_gap(x, y, mode="binary", block_size=block_size)
    ref = brute_cg(x, torch.where(y == 1, 1.0, -1.0).double())
    torch.testing.assert_close(cg(dv), ref, **TOL)
    torch.testing.assert_close(torch.as_tensor(dv.values), -ref, **TOL)
    assert (cg(dv) >= 0).all()


def test_cg_scores_of_a_partial_block_equal_brute_force():
    x, y = data(n=30, classes=2, seed=2)
    t = torch.where(y == 1, 1.0, -1.0).double()
    xn = x / x.norm(dim=1, keepdim=True)
    ref = brute_cg(x, t)
    for num_scored in (1, 11, 30):
        got = cg_scores(xn, t, num_scored, block_size=4)
        torch.testing.assert_close(got, ref[30 - num_scored :], **TOL)


@pytest.mark.parametrize("ratio,rep", [(1.0, 1), (0.5, 3), (2.5, 2)])
def test_one_vs_rest_equals_brute_force_on_the_same_negatives(ratio, rep):
    x, y = data(n=45, classes=3, seed=3)
    dv = complexity_gap(x, y, ratio=ratio, rep=rep, seed=7, block_size=6)
    problems = plan_problems(y, ratio=ratio, rep=rep, seed=7)
    torch.testing.assert_close(cg(dv), brute_plan(x, problems, len(y)), **TOL)


def test_plan_follows_the_authors_scheme():
    y = torch.tensor([0] * 10 + [1] * 4 + [2] * 6)
    problems = plan_problems(y, ratio=1.5, rep=2, seed=3)
    assert len(problems) == 6
    for p in problems:
        scored, context = p.scored_rows, p.rows[: len(p.rows) - p.num_scored]
        assert (y[scored] == p.label).all() and sorted(scored.tolist()) == torch.nonzero(y == p.label).view(
            -1
        ).tolist()
        assert (y[context] != p.label).all() and len(set(context.tolist())) == len(context)
        assert len(context) == min(int(p.num_scored * 1.5), int((y != p.label).sum()))
        assert (p.targets[: len(context)] == -1).all() and (p.targets[len(context) :] == 1).all()
    # seeded: same seed, same negatives; repetitions draw fresh negatives
    again = plan_problems(y, ratio=1.5, rep=2, seed=3)
    assert all(torch.equal(a.rows, b.rows) for a, b in zip(problems, again))
    assert not torch.equal(problems[1].rows, problems[4].rows)  # class 1, rep 0 vs rep 1


def test_subsample_splits_problems_and_still_scores_every_row_exactly():
    x, y = data(n=40, classes=2, seed=4)
    problems = plan_problems(y, ratio=1.0, rep=1, seed=0, subsample=8)
    assert max(p.num_scored for p in problems) <= 8
    dv = complexity_gap(x, y, subsample=8, seed=0, block_size=3)
    torch.testing.assert_close(cg(dv), brute_plan(x, problems, len(y)), **TOL)
    dvb = complexity_gap(x, y, mode="binary", subsample=13, seed=0)
    torch.testing.assert_close(
        cg(dvb), brute_plan(x, plan_problems(y, mode="binary", subsample=13, seed=0), len(y)), **TOL
    )


def test_ridge_equals_brute_force_with_ridge():
    x, y = data(n=25, classes=2, seed=5)
    dv = complexity_gap(x, y, mode="binary", ridge=0.1)
    torch.testing.assert_close(cg(dv), brute_cg(x, torch.where(y == 1, 1.0, -1.0).double(), ridge=0.1), **TOL)


# -- invariances --------------------------------------------------------------------------------
def test_invariant_to_input_scaling_and_label_names():
    x, y = data(n=36, classes=3, seed=6)
    base = complexity_gap(x, y, seed=1)
    g = torch.Generator().manual_seed(0)
    scale = torch.rand(len(x), 1, generator=g, dtype=torch.float64) * 100 + 1e-3
    scaled = complexity_gap(x * scale * 1e4, y, seed=1)
    torch.testing.assert_close(cg(scaled), cg(base), rtol=1e-9, atol=1e-9)
    names = np.array(["cat", "dog", "emu"])[y.numpy()]  # any label values, same sorted class order
    torch.testing.assert_close(cg(complexity_gap(x.numpy(), names, seed=1)), cg(base), **TOL)


def test_float32_inputs_are_computed_in_float64():
    x, y = data(n=30, classes=2, seed=7)
    dv = complexity_gap(x.float(), y, mode="binary")
    ref = brute_cg(x.float().double(), torch.where(y == 1, 1.0, -1.0).double())
    torch.testing.assert_close(cg(dv), ref, **TOL)


# -- duplicates ---------------------------------------------------------------------------------
def test_same_label_duplicates_are_merged_exactly_and_reported():
    x, y = data(n=30, classes=2, seed=8)
    t = torch.where(y == 1, 1.0, -1.0).double()
    x_dup = torch.cat([x, 3.0 * x[4:5], x[9:10]])  # a scaled copy and an exact copy, same labels
    y_dup = torch.cat([y, y[4:5], y[9:10]])
    with pytest.warns(UserWarning, match=r"rows \[4, 30\].*rows \[9, 31\]"):
        dv = complexity_gap(x_dup, y_dup, mode="binary")
    got = cg(dv)
    assert got[[4, 9, 30, 31]].tolist() == [0.0, 0.0, 0.0, 0.0]
    others = [i for i in range(30) if i not in (4, 9)]
    # the others are scored on the set with each copy once: the exact ridge -> 0 limit
    torch.testing.assert_close(got[others], brute_cg(x, t)[others], **TOL)
    assert dv.columns["duplicate_of"][[4, 30, 9, 31, 0]].tolist() == [4, 4, 9, 9, -1]
    # ... which a tiny ridge approaches
    tiny = cg(complexity_gap(x_dup, y_dup, mode="binary", ridge=1e-9))
    torch.testing.assert_close(tiny[others], got[others], rtol=1e-5, atol=1e-5)
    assert tiny[[4, 9, 30, 31]].abs().max() < 1e-5


def test_conflicting_duplicates_score_most_suspicious_and_the_rest_exactly():
    x, y = data(n=30, classes=2, seed=9)
    x_dup = torch.cat([x, x[3:4], 2.0 * x[7:8], x[7:8]])  # row 3 twice; row 7 three times (scaled)
    y_dup = torch.cat([y, 1 - y[3:4], y[7:8], 1 - y[7:8]])
    conflicting = [3, 7, 30, 31, 32]
    rest = [i for i in range(33) if i not in conflicting]
    with pytest.warns(UserWarning, match=r"rows \[3, 30\].*most suspicious"):
        dv = complexity_gap(x_dup, y_dup, mode="binary")
    got = cg(dv)
    # every other row: exactly the brute-force score on the data without the conflicting rows
    t = torch.where(y_dup == 1, 1.0, -1.0).double()
    torch.testing.assert_close(got[rest], brute_cg(x_dup[rest], t[rest]), **TOL)
    # the conflicting rows: the most suspicious (just above every finite score), in the low 2-means cluster
    assert (got[conflicting] > got[rest].max()).all() and torch.isfinite(got).all()
    assert set(dv.lowest(5).index.tolist()) == set(conflicting)
    assert dv.columns["conflicting"].nonzero()[0].tolist() == conflicting
    assert two_means_split(dv.values)[conflicting].all()
    assert dv.metadata["conflicting_rows"] == 5
    # one-vs-rest: identical to the scores computed on the rest alone (same negatives drawn)
    with pytest.warns(UserWarning):
        ovr = cg(complexity_gap(x_dup, y_dup, seed=3))
    torch.testing.assert_close(ovr[rest], cg(complexity_gap(x_dup[rest], y_dup[rest], seed=3)), **TOL)
    # ridge= stays an option: the conflicting copies stay in and score highest
    with pytest.warns(UserWarning, match=r"rows \[3, 30\]"):
        ridged = complexity_gap(x_dup, y_dup, mode="binary", ridge=1e-3)
    torch.testing.assert_close(cg(ridged), brute_cg(x_dup, t, ridge=1e-3), **TOL)
    assert set(ridged.lowest(2).index.tolist()) <= set(conflicting)


def test_near_duplicates_are_merged_and_a_singular_problem_is_a_clear_error():
    x, y = data(n=20, classes=2, seed=10)
    x_near = torch.cat([x, x[2:3] * (1 + 1e-15) + 1e-13])
    with pytest.warns(UserWarning, match=r"rows \[2, 20\]"):
        dv = complexity_gap(x_near, torch.cat([y, y[2:3]]), mode="binary")
    assert cg(dv)[[2, 20]].tolist() == [0.0, 0.0]
    # the kernel solver itself (no duplicate merging) refuses a singular Gram matrix clearly
    xn = torch.cat([x, x[2:3]]) / torch.cat([x, x[2:3]]).norm(dim=1, keepdim=True)
    t = torch.ones(21, dtype=torch.float64)
    with pytest.raises(NotPositiveDefiniteError, match=r"row position 20 .*ridge=1e-6"):
        cg_scores(xn, t, 21)
    # two directions 2e-13 apart that straddle the duplicate grid: not merged, numerically equal;
    # the error names the dataset row, and a ridge makes the problem solvable
    a0 = 0.5 * 2.0**-32
    pair = torch.tensor([[a0 - 1e-13, 1.0], [a0 + 1e-13, 1.0]], dtype=torch.float64)
    x2 = torch.cat([x[:5, :2], pair[:1], x[5:12, :2], pair[1:]])
    y2 = torch.arange(14) % 2
    with pytest.raises(NotPositiveDefiniteError, match=r"dataset row 13\), ridge=0.0"):
        complexity_gap(x2, y2, mode="binary")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pivot warning: expected here
        assert np.isfinite(complexity_gap(x2, y2, mode="binary", ridge=1e-6).values).all()


# -- detection ----------------------------------------------------------------------------------
def test_flipped_labels_are_detected():
    g = torch.Generator().manual_seed(11)
    n, classes = 300, 3
    y_clean = torch.arange(n) % classes
    centers = torch.randn(classes, 8, generator=g, dtype=torch.float64) * 3
    x = centers[y_clean] + torch.randn(n, 8, generator=g, dtype=torch.float64)
    noisy = torch.randperm(n, generator=g)[:30]
    y = y_clean.clone()
    y[noisy] = (y[noisy] + 1 + torch.randint(0, classes - 1, (30,), generator=g)) % classes
    dv = complexity_gap(x, y, rep=2, seed=0)
    auroc = detection_auroc(dv.values, noisy.numpy())
    assert auroc > 0.9, auroc
    assert detection_auroc(-dv.values, noisy.numpy()) < 0.2  # the sign convention: high CG = low value


# -- memory and arguments -----------------------------------------------------------------------
def test_memory_check_names_the_size_and_the_subsample_option():
    x, y = data(n=200, classes=2, seed=12)
    with pytest.raises(MemoryError, match=r"needs about .*GiB.*200 x 200.*subsample=\d+") as err:
        complexity_gap(x, y, mode="binary", max_memory_bytes=200_000)
    # the suggested value fits
    k = int(str(err.value).split("subsample=")[1].split()[0])
    dv = complexity_gap(x, y, mode="binary", max_memory_bytes=200_000, subsample=k)
    assert len(dv) == 200 and np.isfinite(dv.values).all()


def test_bad_arguments_are_explained():
    x, y = data(n=20, classes=3)
    with pytest.raises(ValueError, match="exactly two classes"):
        complexity_gap(x, y, mode="binary")
    with pytest.raises(ValueError, match="at least two classes"):
        complexity_gap(x, torch.zeros(20, dtype=torch.long))
    with pytest.raises(ValueError, match="one label per row"):
        complexity_gap(x, y[:5])
    with pytest.raises(ValueError, match="mode="):
        complexity_gap(x, y, mode="multi")
    with pytest.raises(ValueError, match="NaN"):
        complexity_gap(torch.full((20, 3), float("nan")), y)


def test_progress_is_reported_per_problem():
    x, y = data(n=30, classes=3)
    calls = []
    complexity_gap(x, y, rep=2, progress=lambda done, total, msg: calls.append((done, total, msg)))
    assert [c[0] for c in calls] == list(range(1, 7)) and all(c[1] == 6 for c in calls)
    assert "class 0, rep 0" in calls[0][2]


def test_progress_bar_counts_problems_and_is_switched_off_by_progress_false(capfd, monkeypatch):
    from lightning_dv.methods.complexity_gap import score

    x, y = data(n=30, classes=3)
    capfd.readouterr()
    complexity_gap(x, y, rep=2)  # a fast run: the bar waits PROGRESS_DELAY_S and never shows
    assert "complexity gap" not in capfd.readouterr().err
    monkeypatch.setattr(score, "PROGRESS_DELAY_S", 0.0)  # as if every problem were slow
    complexity_gap(x, y, rep=2)
    assert "complexity gap" in (err := capfd.readouterr().err) and "6/6" in err
    complexity_gap(x, y, rep=2, progress=False)
    assert capfd.readouterr().err == ""


# -- the callback in a real fit ------------------------------------------------------------------
class TinyModel(L.LightningModule):
    def __init__(self, d: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Linear(d, classes)

    def training_step(self, batch, batch_idx):
        _, x, y = batch
        return nn.functional.cross_entropy(self.net(x.flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_callback_in_fit_logs_exports_and_matches_the_functional(tmp_path):
    g = torch.Generator().manual_seed(13)
    n = 96
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, 3, generator=g)
    x[:, 0, 0] += 4.0 * y - 2.0
    noisy = torch.tensor([5, 17, 40, 77])
    y[noisy] = 1 - y[noisy]
    ids = [f"row-{i}" for i in range(n)]
    train = IndexedDataset(TensorDataset(x, y), ids=ids)
    cb = ComplexityGapValuation(export_path=tmp_path / "cg.parquet", known_noisy=noisy, seed=3)
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[cb],
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(TinyModel(6, 2), DataLoader(train, batch_size=16, shuffle=True))

    ref = complexity_gap(x, y, seed=3)
    dv = cb.values.sorted_by_row()
    assert dv.index.tolist() == list(range(n)) and dv.ids.tolist() == ids
    np.testing.assert_allclose(dv.values, ref.values, rtol=1e-12, atol=1e-12)
    expected_auroc = detection_auroc(dv.values, noisy.numpy())
    assert expected_auroc > 0.9

    back = DataValues.load(tmp_path / "cg.parquet").sorted_by_row()
    np.testing.assert_array_equal(back.values, dv.values)
    np.testing.assert_array_equal(back.columns["cg_score"], dv.columns["cg_score"])
    assert back.ids.tolist() == ids

    acc = EventAccumulator(logger.log_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    acc.Reload()
    assert "data_values/complexity_gap/histogram" in acc.Tags()["histograms"]
    hist = acc.Histograms("data_values/complexity_gap/histogram")
    assert len(hist) == 1 and hist[0].histogram_value.num == n
    auroc = acc.Scalars("data_values/complexity_gap/detection_auroc")
    assert auroc[0].value == pytest.approx(expected_auroc, abs=1e-6)


def test_callback_with_a_frozen_encoder_and_a_partial_loader():
    g = torch.Generator().manual_seed(14)
    x = torch.randn(60, 5, generator=g)
    y = torch.arange(60) % 3
    encoder = nn.Sequential(nn.Linear(5, 7), nn.Tanh()).requires_grad_(False)
    cb = ComplexityGapValuation(features=encoder, rep=2, seed=1)
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    # drop_last: the 12 rows of the last batch are never seen and get no value
    loader = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=16, shuffle=False, drop_last=True)
    trainer.fit(TinyModel(5, 3), loader)
    with torch.no_grad():
        ref = complexity_gap(encoder(x[:48]), y[:48], rep=2, seed=1)
    dv = cb.values.sorted_by_row()
    assert dv.index.tolist() == list(range(48))
    np.testing.assert_allclose(dv.columns["cg_score"], ref.columns["cg_score"], rtol=1e-9, atol=1e-12)


def test_callback_refuses_batches_without_row_index():
    x, y = torch.randn(20, 3), torch.arange(20) % 2
    trainer = L.Trainer(
        max_epochs=1, callbacks=[ComplexityGapValuation()], logger=False, enable_progress_bar=False
    )
    with pytest.raises(TypeError, match="IndexedDataset"):
        trainer.fit(TinyModel(3, 2), DataLoader(TensorDataset(x, y), batch_size=8))


DDP_SCRIPT = """
import sys, numpy as np, torch, lightning as L
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from lightning_dv.callbacks import ComplexityGapValuation
from lightning_dv.data import IndexedDataset

class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 3)
    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch[1]), batch[2])
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

out = sys.argv[1]
g = torch.Generator().manual_seed(0)
x, y = torch.randn(51, 4, generator=g), torch.arange(51) % 3   # 51 rows: the sampler pads rank 1
cb = ComplexityGapValuation(export_path=out + "/cg.npz", seed=2)
trainer = L.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_epochs=1, callbacks=[cb], logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Tiny(), DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=8, shuffle=True))
v = cb.values.sorted_by_row()
np.savez(out + f"/rank{trainer.global_rank}.npz", row=v.index, value=v.values)
"""


def test_callback_under_ddp_gathers_every_shard(tmp_path):
    """Two CPU ranks (gloo), each sees half the rows: both must hold the full-set scores."""
    script = tmp_path / "ddp_cg.py"
    script.write_text(DDP_SCRIPT)
    # the child must import this checkout (the editable install's finder may point at another one)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(51, 4, generator=g), torch.arange(51) % 3
    ref = complexity_gap(x, y, seed=2).values
    for rank in (0, 1):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert got["row"].tolist() == list(range(51))
        np.testing.assert_allclose(got["value"], ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(DataValues.load(tmp_path / "cg.npz").sorted_by_row().values, ref, rtol=1e-12)
