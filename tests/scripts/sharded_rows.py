"""Run by tests/test_ddp.py: a 2-process simulation of the ROW-SHARDED valuation state of docs/scaling.md.

Each rank owns the rows [rank * N / W, (rank + 1) * N / W) as a SampleWeights of that size. Per
step a rank (1) sends the ids of its batch rows to their owners and gets their current values back,
(2) after backward sends its (row, [gradient, value]) pairs to the owners, (3) each owner merges
what it received (duplicates summed, divided by the world size) and takes one row-sparse Adam step
on its shard. The same batches also drive a REPLICATED SampleWeights(N) on every rank (the
callback's scheme); each rank saves both, and the test checks the shards concatenate to the
replicated weights.

It also checks the callback's replicated exchange against the dense all-reduce it replaced.

Usage: torchrun --nproc_per_node=2 sharded_rows.py OUT_DIR
"""

import os
import sys

import torch
import torch.distributed as dist

from lightning_dv.methods.weights import SampleWeights, exchange_row_gradients, merge_row_gradients

N, STEPS, BATCH = 50, 120, 6


def all_to_all(chunks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Send chunks[r] to rank r; return what every rank sent here (ragged: sizes go first)."""
    world = dist.get_world_size()
    sizes = torch.tensor([c.shape[0] for c in chunks])
    recv_sizes = torch.empty(world, dtype=torch.long)
    dist.all_to_all_single(recv_sizes, sizes)
    tail = chunks[0].shape[1:]
    out = torch.empty(int(recv_sizes.sum()), *tail, dtype=chunks[0].dtype)
    dist.all_to_all_single(out, torch.cat(chunks), recv_sizes.tolist(), sizes.tolist())
    return list(out.split(recv_sizes.tolist()))


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    per = N // world
    lo = rank * per
    shard = SampleWeights(per, lr=0.05)
    replicated = SampleWeights(N, lr=0.05)
    g = torch.Generator().manual_seed(rank)
    bytes_sent = 0
    for t in range(STEPS):
        rows = torch.randint(0, N, (BATCH,), generator=g)
        rows[0] = rows[1]  # a duplicate within the batch; ranks also draw common rows
        owner = rows // per
        order = torch.argsort(owner, stable=True)
        rows_sorted = rows[order]
        by_owner = [rows_sorted[owner[order] == r] for r in range(world)]
        # (1) fetch the current values of the batch rows from their owners
        asked = all_to_all(by_owner)
        answers = [shard.current_raw(a - lo) for a in asked]
        got = torch.cat(all_to_all(answers))
        values = torch.empty(BATCH)
        values[order] = got
        bytes_sent += 2 * sum(c.numel() for c in by_owner) * 8
        # the loss of this step: a value-dependent quadratic, its gradient c * w
        c = torch.cos(rows.float() + t)
        leaf = values.clone().requires_grad_(True)
        (0.5 * c * leaf**2).sum().backward()
        # (2) route (row, [gradient, value]) to the owners, (3) owners merge and step
        pairs = torch.stack([leaf.grad, values], dim=1)[order]
        received_rows = all_to_all(by_owner)
        received_pairs = all_to_all([pairs[owner[order] == r] for r in range(world)])
        r_rows, r_grads, r_values = merge_row_gradients(
            torch.cat(received_rows) - lo, torch.cat(received_pairs), world
        )
        shard.adam_step(r_rows, r_grads, r_values)
        # the replicated scheme on the same batch, for comparison
        w = replicated(rows)
        (0.5 * c * w**2).sum().backward()
        replicated.adam_step(*exchange_row_gradients(*replicated.take_gradients()))
    # The replicated exchange against the dense reference it replaces: scatter each rank's
    # (row, gradient) pairs into an N-vector, all-reduce, divide by the world size (DDP's average).
    k = 5 + 3 * rank  # unequal lengths, duplicates within and across ranks
    rows = torch.randint(0, 12, (k,), generator=g)
    grads = torch.randn(k, generator=g)
    got_rows, got_grads, got_values = exchange_row_gradients(rows, torch.stack([grads, rows * 0.5], dim=1))
    dense = torch.zeros(12).index_add_(0, rows, grads)
    dist.all_reduce(dense)
    dense /= world
    exchange_ok = bool(
        torch.allclose(dense[got_rows], got_grads, atol=1e-6)
        and torch.equal(got_values, got_rows * 0.5)
        and torch.count_nonzero(dense) <= got_rows.numel()
    )
    torch.save(
        {
            "exchange_ok": exchange_ok,
            "exchanged_rows": got_rows,
            "shard": shard.all(),
            "lo": lo,
            "replicated": replicated.all(),
            "bytes_per_step": bytes_sent / STEPS,
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
