"""Per-step cost of the per-row weights' update: dense (the old scheme) against row-sparse.

Dense: a full-length gradient (index_put of the batch rows' gradients into an N-vector, what
autograd produced for ``raw[idx]``) and ``torch.optim.Adam`` over all N rows. Row-sparse:
``SampleWeights`` read, backward into the batch leaf, merge and row-sparse Adam. Both on one
thread, median over steps, in one process. DDP's dense all-reduce of the N-vector is not
included (single process); the sparse exchange sends ``16 B x batch`` per rank instead.

Usage: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_weights [--rows 10000 1000000 10000000]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_dv.methods.weights import SampleWeights, exchange_row_gradients


def dense_step_ms(n: int, batch: int, steps: int) -> float:
    p = torch.nn.Parameter(torch.ones(n))
    opt = torch.optim.Adam([p], lr=0.01)
    times = []
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,))
        t0 = time.perf_counter()
        (p[idx] * torch.randn(batch)).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[3:])


def sparse_step_ms(n: int, batch: int, steps: int) -> float:
    w = SampleWeights(n, lr=0.01)
    times = []
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,))
        t0 = time.perf_counter()
        (w(idx) * torch.randn(batch)).sum().backward()
        w.adam_step(*exchange_row_gradients(*w.take_gradients()))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[3:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", type=int, default=[1_000, 10_000, 1_000_000, 10_000_000])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| N | dense grad + Adam (ms/step) | row-sparse (ms/step) |\n|---|---|---|")
    for n in args.rows:
        d, s = dense_step_ms(n, args.batch, args.steps), sparse_step_ms(n, args.batch, args.steps)
        print(f"| {n:,} | {d:.3f} | {s:.3f} |", flush=True)


if __name__ == "__main__":
    main()
