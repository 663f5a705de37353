"""RowStatistics' narrow counters: exact against a brute-force count, promoted before any overflow."""

from __future__ import annotations

import io

import torch

from lightning_dv.distributed import NARROW_COUNT, WIDE_COUNT, RowStatistics
from lightning_dv.methods.aum import AUM
from lightning_dv.methods.nddv import NDDV


def test_counts_past_the_narrow_type_are_promoted_and_stay_exact():
    stats = RowStatistics(3, window=None)
    assert stats.count.dtype == stats.epochs.dtype == NARROW_COUNT
    for _ in range(20):  # row 0: 20 x 13 = 260 records in one epoch, past uint8's 255
        stats.update(torch.tensor([0] * 13 + [1]), torch.ones(14))
    assert stats.count.dtype == WIDE_COUNT and stats.count.tolist() == [260, 20, 0]
    held = RowStatistics(3)  # the held-records path (one update with steps), 300 records of row 2
    held.update(
        torch.tensor([2] * 300), torch.arange(300.0), step=torch.arange(300).div(3, rounding_mode="floor")
    )
    assert held.count.dtype == WIDE_COUNT and held.count.tolist() == [0, 0, 300]
    _ = held.reduce()
    assert held.mean().tolist() == [0.0, 0.0, float(torch.arange(300.0).mean())]


def test_epochs_past_the_narrow_type_are_promoted_and_the_mean_is_exact():
    stats, values = RowStatistics(2, window=None), []
    for epoch in range(300):
        x = float(epoch % 7) - 2.5
        values.append(x)
        _ = stats.update(torch.tensor([0]), torch.tensor([x]))
        _ = stats.reduce()
    assert stats.epochs.dtype == WIDE_COUNT and stats.epochs.tolist() == [300, 0]
    reference = torch.zeros(1)
    for x in values:  # the float32 running total, then the division, as RowStatistics does
        reference += x
    assert stats.mean().tolist() == [float(reference / 300), 0.0]
    windowed = RowStatistics(1, window=260)  # a window beyond the narrow range: clamped exactly
    for _ in range(270):
        _ = windowed.update(torch.tensor([0]), torch.tensor([1.0]))
        _ = windowed.reduce()
    assert windowed.mean().tolist() == [1.0] and windowed.total.tolist() == [260.0]


def test_a_checkpoint_with_large_or_float_counters_loads_exactly():
    wide = RowStatistics(2)
    wide.update(torch.tensor([0] * 300), torch.ones(300))
    buf = io.BytesIO()
    torch.save(wide.state_dict(), buf)
    buf.seek(0)
    loaded = RowStatistics(2)
    loaded.load_state_dict(torch.load(buf))
    assert loaded.count.dtype == WIDE_COUNT and loaded.count.tolist() == [300, 0]
    old = {k: v.float() for k, v in RowStatistics(2).state_dict().items()}  # main's float32 counters
    old["count"] = torch.tensor([3.0, 0.0])
    old["epochs"] = torch.tensor([2.0, 1.0])
    small = RowStatistics(2)
    small.load_state_dict(old)
    assert (
        small.count.dtype == NARROW_COUNT
        and small.count.tolist() == [3, 0]
        and small.epochs.tolist() == [2, 1]
    )


def test_per_row_state_bytes():
    def per_row(module, n):
        return (
            sum(p.numel() * p.element_size() for p in module.parameters() if p.dim() >= 1 and p.shape[0] == n)
            / n
        )

    n = 20_000  # row-sparse weights
    assert (
        per_row(NDDV().build(n), n) == 4 + 1 + 4 + 1 + 4
    )  # fixed weights: value sum, count, total, epochs, last
    assert per_row(NDDV(learn_weights=True).build(n), n) == 16 + 14  # with the learned weights
    assert per_row(AUM().build(n), n) == 4 + 1 + 4 + 1
    assert (
        per_row(NDDV(weighting="meta", meta=(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))).build(n), n)
        == 26
    )
