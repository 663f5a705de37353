"""AUM's deferred per-row records: held steps equal the step-by-step margin updates."""

from __future__ import annotations

import pytest
import torch

from lightning_dv.distributed import RowStatistics
from lightning_dv.methods.aum.objective import AUMState, assigned_margin


def _records(n=12, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for size in [5] * 9 + [3, 5]:  # rows repeat across and within steps; unequal batch sizes
        rows = torch.randint(0, n, (size,), generator=g)
        if len(out) == 4:
            rows[1] = rows[0]
        out.append((rows, torch.randn(size, k, generator=g), torch.randint(0, k, (size,), generator=g)))
    return out


@pytest.mark.parametrize("window", [None, 1])
def test_held_margins_equal_step_by_step_updates_and_a_checkpoint_applies_them(window):
    n = 12
    reference, held = RowStatistics(n, window=window), AUMState(n, window=window)
    for epoch in range(2):
        records = _records(n, seed=epoch)
        for rows, logits, labels in records:
            reference.update(rows, assigned_margin(logits, labels))
            held.record(rows, logits, labels)
        assert len(held._pending) > 0  # held until a read
        mid_epoch = held.state_dict()  # a checkpoint applies the held records first
        assert len(held._pending) == 0
        torch.testing.assert_close(mid_epoch["margin.sum"], reference.sum, rtol=1e-6, atol=1e-6)
        assert torch.equal(mid_epoch["margin.count"], reference.count)
        held.flush()
        held.margin.reduce()
        reference.reduce()
        torch.testing.assert_close(held.margin.mean(), reference.mean(), rtol=1e-6, atol=1e-6)
    # a load replaces the state: records held for the old one are dropped
    held.record(*_records(n)[0])
    held.record(*_records(n)[1])
    held.load_state_dict(mid_epoch)
    held.flush()
    torch.testing.assert_close(held.margin.sum, mid_epoch["margin.sum"])


def test_binary_logits_and_wrong_labels():
    state = AUMState(4)
    with pytest.raises(ValueError, match="labels must lie in"):  # the first step is applied at once
        state.record(torch.tensor([0, 1]), torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="integer class labels"):  # shapes and dtypes: every step
        state.record(torch.tensor([0, 1]), torch.zeros(2, 2), torch.tensor([0.0, 1.0]))
    state.record(torch.tensor([2, 3]), torch.zeros(2, 2), torch.tensor([5, 1]))  # held
    with pytest.raises(ValueError, match=r"got \[1, 5\]"):
        state.flush()
    binary = AUMState(2)
    for _ in range(3):  # one logit per row: read as [0, z]
        binary.record(torch.tensor([0, 1]), torch.tensor([1.5, 1.5]), torch.tensor([1, 0]))
    binary.flush()
    assert binary.margin.sum.tolist() == [4.5, -4.5]


def test_wide_logits_are_not_held_for_many_steps():
    """Records of many classes (an LM-sized head) flush once they hold ~1M elements, not after 64 steps."""
    n, classes = 64, 40_000
    state, reference = AUMState(n), RowStatistics(n)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        rows = torch.randint(0, n, (16,), generator=g)
        logits, labels = torch.randn(16, classes, generator=g), torch.randint(0, classes, (16,), generator=g)
        state.record(rows, logits, labels)
        reference.update(rows, assigned_margin(logits, labels))
        held = sum(c.numel() for record in state._pending._records for c in record)
        assert held < 2 * 16 * classes  # at most this step's and one earlier step's logits
    state.flush()
    torch.testing.assert_close(state.margin.sum, reference.sum, rtol=1e-6, atol=1e-6)
