"""Per-step profile of the valuation hot path (MLP 16-64-2, batch 32, one thread, thread CPU time).

Three views, each in one process:

- ``weights``: the per-row weights' read and step in a tight loop (softplus, batch 32), dense
  and row-sparse (NumPy path) at N = 10^3 and 10^4, row-sparse (NumPy and torch paths) at
  N = 10^6, interleaved blocks, medians.
- ``fit``: NDDV fits (learned weights, ``nddv_learned``) of 60 steps, plain / row-sparse NumPy / row-sparse torch / dense weights
  interleaved, median of each repeat's step ratio over the plain fit.
- ``parts``: inclusive CPU time per step of the hot-path functions in an NDDV or AUM fit (each
  wrapped with a timer; the wrappers add ~1 us per call), next to the median step of the fit and
  of a plain fit (fits of 60 steps at N > 10^4, else 3 epochs; ``--objective``).
- ``medians``: the median CPU time per call of the weights' read and step in three NDDV fits
  (learned weights) of 60 steps (dense up to 16k rows, row-sparse above).

Usage: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_step_profile {weights,fit,parts,medians} [--rows N]
[--objective nddv|nddv_learned|aum]``. NDDV's default keeps its weights fixed (session 6): the
weights' views time ``nddv_learned``.
Results: docs/scaling.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import importlib
import statistics
import time

import torch

from lightning_dv.methods.weights import SampleWeights, step_row_weights

HOT_PATH = (
    ("lightning_dv.callbacks.data_valuation", "DataValuation.compute_loss"),
    ("lightning_dv.callbacks.data_valuation", "DataValuation.on_before_optimizer_step"),
    ("lightning_dv.methods.nddv.objective", "NDDV.loss"),
    ("lightning_dv.methods.aum.objective", "AUM.loss"),
    ("lightning_dv.methods.aum.objective", "assigned_margin"),
    ("lightning_dv.methods.weights", "SampleWeights.forward"),
    ("lightning_dv.methods.weights", "SampleWeights.current_raw"),
    ("lightning_dv.methods.weights", "SampleWeights._host_raw"),
    ("lightning_dv.methods.weights", "SampleWeights._host_take_and_step"),
    ("lightning_dv.methods.weights", "SampleWeights._dense_step"),
    ("lightning_dv.methods.weights", "SampleWeights._take"),
    ("lightning_dv.methods.host_adam", "HostRowAdam.remaining"),
    ("lightning_dv.methods.host_adam", "HostRowAdam.step"),
    ("lightning_dv.methods.weights", "merge_rows"),
    ("lightning_dv.methods.nddv.state", "NDDVState.record"),
    ("lightning_dv.methods.nddv.state", "NDDVState.flush"),
    ("lightning_dv.distributed", "RowStatistics.update"),
    ("lightning_dv.callbacks.guards", "VisitCounter.add"),
    ("lightning_dv.callbacks.collect", "RowLabels.record"),
    ("lightning_dv.callbacks.data_valuation", "check_step_values"),
    ("lightning_dv.callbacks.data_valuation", "check_step_arguments"),
    ("lightning_dv.callbacks.data_valuation", "returned_loss"),
)


def weights_loop(blocks: int = 30, per_block: int = 40) -> dict[str, tuple[float, float]]:
    """``variant -> (median read us, median step us)`` of the weights alone."""
    variants = {"dense 1e3": (1000, 10**9, True), "dense 1e4": (10**4, 10**9, True)}
    variants |= {"sparse numpy 1e3": (1000, 0, True), "sparse numpy 1e4": (10**4, 0, True)}
    variants |= {"sparse numpy 1e6": (10**6, 0, True), "sparse torch 1e6": (10**6, 0, False)}
    g = torch.Generator().manual_seed(0)
    made = {}
    for name, (n, dense_below, host) in variants.items():
        made[name] = SampleWeights(n, constraint="softplus", dense_below=dense_below), n
        made[name][0].host = host
    times = {name: ([], []) for name in variants}
    for block in range(blocks):
        for name, (w, n) in made.items():
            for _ in range(per_block):
                idx = (
                    torch.randperm(n, generator=g)[:32]
                    if n <= 10**4
                    else torch.randint(0, n, (32,), generator=g)
                )
                t0 = time.thread_time_ns()
                x = w(idx)
                t1 = time.thread_time_ns()
                x.sum().backward()
                t2 = time.thread_time_ns()
                step_row_weights(w)
                t3 = time.thread_time_ns()
                if block > 2:  # every row of the small sets has an open tail by then
                    times[name][0].append(t1 - t0)
                    times[name][1].append(t3 - t2)
    return {k: (statistics.median(r) / 1e3, statistics.median(s) / 1e3) for k, (r, s) in times.items()}


@functools.cache
def _patched() -> dict:
    """Make every new SampleWeights take the mode in the returned dict (host path, dense_below)."""
    mode = {"host": True, "dense_below": None}
    init = SampleWeights.__init__

    def patched(self, *args, **kwargs):
        if mode["dense_below"] is not None:
            kwargs["dense_below"] = mode["dense_below"]
        init(self, *args, **kwargs)
        self.host = mode["host"]

    SampleWeights.__init__ = patched
    return mode


def fit_ratios(rows: int, repeats: int = 7) -> dict[str, float]:
    """Median step ratio over the plain fit of NDDV fits with each weights mode."""
    from benchmarks.overhead import objective_factories, time_fit, workload_data

    mode = _patched()
    x, y = workload_data("mlp", rows)
    modes = {"plain": None, "sparse numpy": (True, 0), "sparse torch": (False, 0)}
    if rows <= 20_000:
        modes["dense"] = (True, 10**9)
    steps = {name: [] for name in modes}
    for _ in range(repeats):
        for name, m in modes.items():
            if m is not None:
                mode["host"], mode["dense_below"] = m
            objective = None if m is None else objective_factories()["nddv_learned"](None, None)
            steps[name].append(
                time_fit(x, y, objective, max_batches=60, measure_memory=False, clock="cpu")[2]
            )
    return {k: statistics.median(a / b for a, b in zip(v, steps["plain"])) for k, v in steps.items()}


@contextlib.contextmanager
def _timed(targets, record):
    """Wrap each ``(module, "Class.attr" or "function")`` of ``targets`` so every call reports its
    thread CPU time to ``record(qualname, ns)``; the originals are restored at the end."""
    originals = []
    for module, qualname in targets:
        names = qualname.split(".")
        owner = importlib.import_module(module)
        if len(names) > 1:
            owner = getattr(owner, names[0])
        original = getattr(owner, names[-1], None)
        if original is None:
            continue

        def timed(*args, _f=original, _q=qualname, **kwargs):
            t0 = time.thread_time_ns()
            try:
                return _f(*args, **kwargs)
            finally:
                record(_q, time.thread_time_ns() - t0)

        originals.append((owner, names[-1], original))
        setattr(owner, names[-1], timed)
    try:
        yield
    finally:
        for owner, attr, original in originals:
            setattr(owner, attr, original)


def parts(rows: int, objective: str = "nddv") -> dict[str, float]:
    """Inclusive CPU time per step (us) of the hot-path functions in one fit with ``objective``,
    and the median step (us) of that fit and of a plain fit of the same data."""
    from benchmarks.overhead import objective_factories, time_fit, workload_data

    total, calls = collections.Counter(), collections.Counter()

    def record(qualname: str, ns: int) -> None:
        total[qualname] += ns
        calls[qualname] += 1

    x, y = workload_data("mlp", rows)
    epochs, batches = (3, None) if rows <= 10_000 else (1, 60)
    factory = objective_factories()[objective]
    with _timed(HOT_PATH, record):
        plain = time_fit(x, y, None, epochs, batches, measure_memory=False, clock="cpu")[2]
        step = time_fit(x, y, factory(None, None), epochs, batches, measure_memory=False, clock="cpu")[2]
    steps = calls["DataValuation.on_before_optimizer_step"]
    out = {"median step, plain fit": plain * 1e6, f"median step, {objective} fit": step * 1e6}
    return out | {q: total[q] / steps / 1e3 for _, q in HOT_PATH if calls[q]}


#: The weights' read and step, timed per call by the ``medians`` view (missing ones are skipped).
WEIGHT_CALLS = (
    ("lightning_dv.methods.weights", "SampleWeights.forward"),
    ("lightning_dv.methods.weights", "SampleWeights._dense_step"),
    ("lightning_dv.methods.weights", "SampleWeights._host_take_and_step"),
    ("lightning_dv.methods.host_adam", "HostRowAdam.read"),
    ("lightning_dv.methods.host_adam", "HostRowAdam.step"),
)


def medians(rows: int, fits: int = 3) -> dict[str, float]:
    """Median CPU time per call (us) of the weights' read and step in ``fits`` NDDV fits of 60 steps."""
    from benchmarks.overhead import objective_factories, time_fit, workload_data

    times = collections.defaultdict(list)
    x, y = workload_data("mlp", rows)
    with _timed(WEIGHT_CALLS, lambda qualname, ns: times[qualname].append(ns)):
        for _ in range(fits):
            time_fit(
                x,
                y,
                objective_factories()["nddv_learned"](None, None),
                1,
                60,
                measure_memory=False,
                clock="cpu",
            )
    return {q: statistics.median(t) / 1e3 for q, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("view", choices=("weights", "fit", "parts", "medians"))
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 1_000_000])
    parser.add_argument(
        "--objective", choices=("nddv", "nddv_learned", "aum"), default="nddv", help="parts view only"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.view == "weights":
        for name, (read, step) in weights_loop().items():
            print(f"{name:18s} read {read:7.1f} us  step {step:7.1f} us")
        return
    for rows in args.rows:
        if args.view == "medians":
            result = medians(rows)
        else:
            result = fit_ratios(rows) if args.view == "fit" else parts(rows, args.objective)
        for name, value in result.items():
            print(f"N={rows:<9,d} {name:42s} {value:8.2f}{'x' if args.view == 'fit' else ' us/step'}")


if __name__ == "__main__":
    main()
