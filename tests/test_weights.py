"""Row-sparse weights and their Adam against the brute-force dense reference (torch.optim.Adam)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_dv.methods.weights import SampleWeights, exchange_row_gradients, step_row_weights


def dense_reference(n, batches, grad_fn, constraint="none", lr=0.05, betas=(0.9, 0.999), init=1.0):
    """torch.optim.Adam on the dense N-vector; zero gradient outside the batch; clamp after each step."""
    import math

    raw0 = math.log(math.expm1(init)) if constraint == "softplus" else init
    p = torch.nn.Parameter(torch.full((n,), raw0, dtype=torch.float64))  # exact: no float32 drift
    opt = torch.optim.Adam([p], lr=lr, betas=betas)
    history = []
    for rows in batches:
        w = torch.nn.functional.softplus(p) if constraint == "softplus" else p
        grad_fn(rows, w[rows]).backward()
        opt.step()
        opt.zero_grad()
        if constraint == "clamp":
            with torch.no_grad():
                p.clamp_(min=0.0)
        history.append((torch.nn.functional.softplus(p) if constraint == "softplus" else p).detach().float())
    return history


def sparse_run(n, batches, grad_fn, constraint="none", lr=0.05, betas=(0.9, 0.999), dense_below=0, host=True):
    w = SampleWeights(n, constraint=constraint, lr=lr, betas=betas, dense_below=dense_below)
    w.host = host  # False: the torch path that CUDA tensors take
    history = []
    for rows in batches:
        grad_fn(rows, w(rows)).backward()
        step_row_weights(w)  # the callback's step (host: NumPy from the leaves to the update)
        history.append(w.all().clone())
    return w, history


def batches_with_gaps(n, steps, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        # Rows 0..4 recur every step, others are drawn at random (gaps of every length, some
        # longer than the tail window, some rows never), one duplicate per batch.
        rows = torch.cat([torch.arange(5), torch.randint(5, n - 10, (batch,), generator=g)])
        out.append(torch.cat([rows, rows[-1:]]))
    return out


def grad_fn(rows, w):
    # A fixed, row- and step-dependent linear loss of mixed sign: the gradient does not feed back
    # on the weights, so the two implementations can only differ by rounding.
    c = torch.cos(rows.double() * 1.7 + grad_fn.calls) + 0.3
    grad_fn.calls += 1
    return (w * c.to(w.dtype)).sum()


@pytest.mark.parametrize(
    "dense_below, host",
    [(0, True), (0, False), (10**6, True)],  # row-sparse on NumPy views, row-sparse in torch, small-N dense
)
@pytest.mark.parametrize("constraint", ["none", "softplus", "clamp"])
def test_sparse_adam_equals_dense_adam_at_every_step(constraint, dense_below, host):
    n, batches = 300, batches_with_gaps(300, 300, 8)
    grad_fn.calls = 0
    dense = dense_reference(n, batches, grad_fn, constraint)
    grad_fn.calls = 0
    _, sparse = sparse_run(n, batches, grad_fn, constraint, dense_below=dense_below, host=host)
    for t, (d, s) in enumerate(zip(dense, sparse)):
        torch.testing.assert_close(s, d, rtol=1e-5, atol=2e-6, msg=f"step {t}")
    assert (dense[-1][-10:] == dense[0][-10:]).all()  # never-touched rows exist in the test


def test_tiny_gradients_take_the_exact_tail_and_still_equal_dense_adam():
    # Rows 0, 3, 6, ... get gradients ~1e-9 (sqrt(v) near eps: the series in eps / sqrt(v) does not
    # serve them, their K tail terms are summed), the others ~1: both kinds in every batch.
    def scaled(rows, w):
        c = torch.cos(rows.double() * 1.7 + scaled.calls) + 0.3
        c = torch.where(rows % 3 == 0, c * 1e-9, c)
        scaled.calls += 1
        return (w * c.to(w.dtype)).sum()

    n, batches = 120, batches_with_gaps(120, 200, 10, seed=2)
    scaled.calls = 0
    dense = dense_reference(n, batches, scaled, lr=0.01)
    scaled.calls = 0
    w, sparse = sparse_run(n, batches, scaled, lr=0.01)
    for t, (d, s) in enumerate(zip(dense, sparse)):
        torch.testing.assert_close(s, d, rtol=1e-5, atol=2e-6, msg=f"step {t}")
    u = w.exp_avg_sq.sqrt()
    assert bool((u[w.exp_avg != 0] < w._host_adam._u_min).any()) and bool((u > w._host_adam._u_min).any())


def test_host_read_equals_the_torch_read_after_a_resume():
    n, batches = 200, batches_with_gaps(200, 80, 12, seed=3)
    grad_fn.calls = 0
    w, _ = sparse_run(n, batches, grad_fn, lr=0.02)
    resumed = SampleWeights(n, lr=0.02, dense_below=0)
    resumed.load_state_dict(w.state_dict())  # no cached tail tables: the read recomputes them
    rows = torch.arange(n)
    host = resumed.current_raw(rows)
    resumed.host = False
    torch.testing.assert_close(host, resumed.current_raw(rows), rtol=0, atol=1e-6)
    torch.testing.assert_close(host, w.current_raw(rows), rtol=0, atol=1e-6)


def test_other_betas_and_checkpoint_round_trip():
    n, batches = 100, batches_with_gaps(100, 120, 6, seed=1)
    grad_fn.calls = 0
    dense = dense_reference(n, batches, grad_fn, betas=(0.5, 0.9), lr=0.01)
    grad_fn.calls = 0
    w, _ = sparse_run(n, batches[:60], grad_fn, betas=(0.5, 0.9), lr=0.01)
    resumed = SampleWeights(n, betas=(0.5, 0.9), lr=0.01, dense_below=0)
    resumed.load_state_dict(w.state_dict())
    for rows in batches[60:]:
        grad_fn(rows, resumed(rows)).backward()
        resumed.adam_step(*exchange_row_gradients(*resumed.take_gradients()))
    torch.testing.assert_close(resumed.all(), dense[-1], rtol=1e-5, atol=2e-6)


def test_state_is_16_bytes_per_row_and_not_a_ddp_gradient():
    w = SampleWeights(1000)
    per_row = sum(p.numel() * p.element_size() for p in w.parameters() if p.dim() == 1) / 1000
    assert per_row == 16
    assert not any(p.requires_grad for p in w.parameters())


def test_reading_without_grad_leaves_nothing_pending():
    w = SampleWeights(10)
    with torch.no_grad():
        w(torch.tensor([1, 2]))
    rows, pairs = w.take_gradients()
    assert rows.numel() == 0 and pairs.shape == (0, 2)


def test_exchange_sums_duplicates_and_step_recomputes_values_when_not_given():
    rows, grads, values = exchange_row_gradients(
        torch.tensor([4, 2, 4, 4]), torch.tensor([[1.0, 7.0], [2.0, 5.0], [3.0, 7.0], [4.0, 7.0]])
    )
    assert rows.tolist() == [2, 4] and grads.tolist() == [2.0, 8.0] and values.tolist() == [5.0, 7.0]
    a, b = SampleWeights(6, lr=0.1, dense_below=0), SampleWeights(6, lr=0.1, dense_below=0)
    for t in range(3):
        r, g = torch.tensor([t, 5]), torch.tensor([1.0, -2.0])
        a.adam_step(r, g)
        b.adam_step(r, g, b.current_raw(r))
    torch.testing.assert_close(a.all(), b.all())


def test_a_checkpoint_keeps_its_mode():
    small = SampleWeights(10)  # dense
    small.adam_step(torch.tensor([1]), torch.tensor([1.0]))
    other = SampleWeights(10, dense_below=0)
    other.load_state_dict(small.state_dict())
    assert other.dense
    torch.testing.assert_close(other.all(), small.all())


def test_two_process_exchange_and_row_sharded_state_equal_their_dense_references(tmp_path):
    # tests/scripts/sharded_rows.py under torchrun, 2 gloo processes: (a) the callback's exchange
    # of (row, gradient) pairs equals the dense all-reduce it replaced, identical on both ranks;
    # (b) docs/scaling.md's row-range shards (values fetched from and gradients routed to the
    # owners with all_to_all) end with the same weights as the replicated scheme.
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29533",
            str(root / "tests" / "scripts" / "sharded_rows.py"),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["exchange_ok"] and r1["exchange_ok"]
    torch.testing.assert_close(r0["exchanged_rows"], r1["exchanged_rows"], rtol=0, atol=0)
    torch.testing.assert_close(r0["replicated"], r1["replicated"], rtol=0, atol=0)
    sharded = torch.cat([r0["shard"], r1["shard"]])
    torch.testing.assert_close(sharded, r0["replicated"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(sharded, torch.ones_like(sharded))


def test_ddp_lossval_fit_with_accumulation_keeps_the_row_state_identical_on_both_ranks(tmp_path):
    # The callback's path end to end (LossVal with learned weights): 2 gloo processes (tests/scripts/ddp_worker.py), gradient
    # accumulation 2, 101 rows (one padded duplicate): every row got a gradient, identical state.
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    script = str(root / "tests" / "scripts" / "ddp_worker.py")
    proc = subprocess.run(
        [sys.executable, script, "lossval_learned", str(tmp_path), "--accumulate", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"d2_rank{r}.pt", weights_only=False) for r in (0, 1))
    for k in r0["state"]:
        torch.testing.assert_close(r0["state"][k], r1["state"][k], rtol=0, atol=0, msg=k)
    steps = 2 * math.ceil(math.ceil(51 / 8) / 2)  # 2 epochs, 51 rows per rank, batch 8, accumulate 2
    assert int(r0["state"]["weights.step"]) == steps
    assert (r0["state"]["weights.exp_avg_sq"] > 0).all()  # every row, the padded one too


def test_host_views_follow_the_module_through_copies_loads_and_moves():
    """The NumPy views of the host path are made per storage: a copy, an ``assign=True`` load or a
    move steps its own tensors, never the original's."""
    import copy

    n, batches = 50_000, batches_with_gaps(50_000, 6, 8, seed=4)
    grad_fn.calls = 0
    w, _ = sparse_run(n, batches[:3], grad_fn)  # row-sparse (above dense_below), host path
    assert not w.dense and w._host_views() is not None
    before = w.state_dict()
    twin = copy.deepcopy(w)
    for rows in batches[3:]:
        grad_fn(rows, twin(rows)).backward()
        step_row_weights(twin)
    for key, value in w.state_dict().items():  # the original did not move
        assert torch.equal(value, before[key]), key
    assert not torch.equal(twin.raw, w.raw)
    loaded = SampleWeights(n, lr=0.05, dense_below=0)  # sparse_run's lr
    loaded.load_state_dict({k: v.clone() for k, v in twin.state_dict().items()}, assign=True)
    rows = torch.arange(n)
    torch.testing.assert_close(loaded.current_raw(rows), twin.current_raw(rows), rtol=0, atol=0)
    moved = twin.to(torch.device("cpu"), torch.float64)  # a dtype change is refused: same storage
    assert moved.raw.dtype == torch.float32 and moved._host_views() is not None
