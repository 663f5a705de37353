"""Write the per-row state of NDDV, AUM and row-sparse weights as a checkout lays it out, mid-epoch,
with the values the checkout computes before and after replaying the rest of the run.

``tests/data/state_main_5c1bc3b.pt`` was written by main at 5c1bc3b (session 5's layout: float32
counters, NDDV's per-epoch weight column, four separate weight vectors); ``tests/test_nddv.py``
loads it into this code, replays the same records and checks the values bit for bit.

Usage, from the root of the checkout whose layout is wanted: ``python tests/scripts/state_layout.py OUT.pt``.
"""

import sys

import torch

from lightning_dv.methods.aum import AUM
from lightning_dv.methods.nddv import NDDV
from lightning_dv.methods.weights import SampleWeights, step_row_weights

ROWS, CLASSES, BATCH, STEPS, EPOCHS = 40, 3, 8, 6, 3


def records(seed: int = 0) -> list[list[tuple[torch.Tensor, ...]]]:
    """Per epoch, per step: rows (a repeat in some batches), logits, labels, weight-gradient factors."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(EPOCHS):
        epoch = []
        for _ in range(STEPS):
            rows = torch.randint(0, ROWS, (BATCH,), generator=g)
            epoch.append((rows, torch.randn(BATCH, CLASSES, generator=g),
                          torch.randint(0, CLASSES, (BATCH,), generator=g), torch.randn(BATCH, generator=g)))  # fmt: skip
        out.append(epoch)
    return out


def play(nddv, state, aum, margins, epochs) -> None:
    """Record each step in NDDV's and AUM's states (NDDV's softplus weights read and stepped); end epochs."""
    for epoch, steps in epochs:
        for rows, logits, labels, factor in steps:
            w = state.weights(rows)
            state.record(rows, logits, labels, w.detach(), {})
            (w * factor).sum().backward()
            step_row_weights(state.weights)
            margins.record(rows, logits, labels)
        if epoch < EPOCHS - 1 or steps is not HALF:
            nddv.sync(state)
            margins.flush()
            margins.margin.reduce()


def results(nddv, state, aum, margins, weights) -> dict:
    return {
        "nddv_values": nddv.values(state),
        "nddv_last": NDDV(aggregate="last").values(state),
        "nddv_columns": nddv.extra_columns(state),
        "aum_values": aum.values(margins),
        "aum_columns": aum.extra_columns(margins),
        "weights_all": weights.all(),
    }


def sparse_steps(weights, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(0, weights.num_samples, (BATCH,), generator=g)
        (weights(rows) * torch.randn(BATCH, generator=g)).sum().backward()
        step_row_weights(weights)


HALF: list = []

if __name__ == "__main__":
    data = records()
    nddv, aum = NDDV(window=2), AUM(window=2)
    state, margins = nddv.build(ROWS), aum.build(ROWS)
    HALF[:] = data[-1][: STEPS // 2]
    play(nddv, state, aum, margins, [(0, data[0]), (1, data[1]), (2, HALF)])
    weights = SampleWeights(300, constraint="softplus", dense_below=0)  # row-sparse
    sparse_steps(weights, 50, seed=1)
    saved = {
        "nddv": {k: v.clone() for k, v in state.state_dict().items()},
        "aum": {k: v.clone() for k, v in margins.state_dict().items()},
        "weights": {k: v.clone() for k, v in weights.state_dict().items()},
        "mid": results(nddv, state, aum, margins, weights),
    }
    play(nddv, state, aum, margins, [(2, data[-1][STEPS // 2 :])])
    sparse_steps(weights, 20, seed=2)
    saved["end"] = results(nddv, state, aum, margins, weights)
    torch.save(saved, sys.argv[1])
