"""Training overhead of valuation: a plain Lightning fit against the same fit with each objective.

For every training-set size N and validation size J, the same model
(:class:`~lightning_dv.modules.MLPClassifier` on synthetic Gaussian-logistic data, batch 32, or
``--workload cnn``: :class:`~benchmarks.fitting.SmallCNN` on 3x32x32 images, batch 128) is fit
``repeats`` times without valuation and with each objective, interleaved in one process so that
drift hits all variants alike. Reported: the median over repeats of the step-time ratio (median
step with the objective over the median plain step: the per-step cost), of the wall-time ratio
``t(objective) / t(plain)`` of the whole fit (each repeat's ratio uses that repeat's plain fit)
and of the peak memory the fit added on top of what the process held before it (resident set
size sampled every millisecond on CPU; ``torch.cuda.max_memory_allocated`` on GPU).

``--max-batches`` caps the steps per fit so that the 1,000,000-row setting runs in minutes:
the per-step costs, and the O(N) weight update among them, are still paid in full.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from benchmarks.baselines import MethodUnavailable
from benchmarks.registry import project_class, quiet_lightning
from lightning_dv.io import atomic_write

ROWS = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
WORKLOADS = ("mlp", "cnn")
VALID_SIZES = (100, 1_000, 10_000)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: no cheap resettable RSS reading
        return None


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak resident set size of this process (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _high_water_mark() is not None


def _high_water_mark() -> int | None:
    """The kernel's peak resident set size of this process since the last reset (bytes), or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class PeakMemory:
    """Context manager measuring the peak memory a block adds (bytes; None where unmeasurable).

    On CUDA it uses the allocator's peak statistics. On Linux CPUs it resets the kernel's
    resident-set high-water mark (``/proc/self/clear_refs``) and reads it back (``VmHWM``): exact,
    however loaded the machine. Elsewhere a thread samples the resident set size every
    ``interval`` seconds (a short peak between two samples is missed under load). Memory freed
    back to the allocator but not to the OS stays counted, so either is an upper bound of what
    the block itself used.

    Example:
        >>> with PeakMemory() as pm:
        ...     block = np.ones(10_000_000)
        >>> pm.peak_bytes is None or pm.peak_bytes > 40_000_000
        True
    """

    def __init__(self, device: str = "cpu", interval: float = 0.001) -> None:
        self.device, self.interval = device, interval
        self.peak_bytes: int | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        self._start = _rss_bytes()
        self._peak = self._start
        self._kernel_peak = self._start is not None and _reset_high_water_mark()
        if self._start is not None and not self._kernel_peak:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes() or 0)

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._start
            return
        if self._start is None:
            return
        if self._kernel_peak:
            self._peak = max(self._peak, _high_water_mark() or 0)
            self.peak_bytes = self._peak - self._start
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes() or 0)
        self.peak_bytes = self._peak - self._start


def synthetic_data(rows: int, features: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features with logistic labels (two classes), float32 / int64."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    beta = rng.standard_normal(features).astype(np.float32)
    y = (rng.random(rows) < 1.0 / (1.0 + np.exp(-(x @ beta)))).astype(np.int64)
    return x, y


def objective_factories() -> dict[str, Callable[[np.ndarray, np.ndarray], object]]:
    """``name -> factory(x_valid, y_valid)`` of the training-time objectives (imported lazily)."""

    def lossval(xv: np.ndarray, yv: np.ndarray):
        return project_class("lossval")(validation=(xv, yv))

    def lossval_learned(xv: np.ndarray, yv: np.ndarray):  # the default before session 6
        return project_class("lossval")(validation=(xv, yv), learn_weights=True)

    def lossval_exact(xv: np.ndarray, yv: np.ndarray):
        return project_class("lossval")(validation=(xv, yv), ot="exact")

    def nddv(xv: np.ndarray, yv: np.ndarray):
        return project_class("nddv")()

    def nddv_learned(xv: np.ndarray, yv: np.ndarray):  # the default before session 6
        return project_class("nddv")(learn_weights=True)

    def aum(xv: np.ndarray, yv: np.ndarray):
        return project_class("aum")()

    return {
        "lossval": lossval,
        "lossval_learned": lossval_learned,
        "lossval_exact": lossval_exact,
        "nddv": nddv,
        "nddv_learned": nddv_learned,
        "aum": aum,
    }


class StepTimer:
    """Lightning callback recording the wall time of every training step (batch start to batch end:
    forward, backward, both optimizer steps; not data loading or epoch-end work)."""

    def __new__(cls):
        from lightning.pytorch.callbacks import Callback

        class _StepTimer(Callback):
            def __init__(self) -> None:
                self.times: list[float] = []
                self.cpu_times: list[float] = []

            def on_train_batch_start(self, *args) -> None:
                self._c0 = time.thread_time()
                self._t0 = time.perf_counter()

            def on_train_batch_end(self, *args) -> None:
                self.times.append(time.perf_counter() - self._t0)
                self.cpu_times.append(time.thread_time() - self._c0)

        return _StepTimer()


def workload_data(workload: str, rows: int, seed: int = 0):
    """``(x, y)`` arrays (MLP) or a pooled image dataset (CNN) of ``rows`` rows."""
    if workload == "mlp":
        return synthetic_data(rows, seed=seed)
    from benchmarks.fitting import PooledImages

    return PooledImages(rows, seed=seed), None


def validation_data(workload: str, valid: int) -> tuple[np.ndarray, np.ndarray]:
    if workload == "mlp":
        return synthetic_data(valid, seed=1)
    from benchmarks.fitting import PooledImages

    pool = PooledImages(valid, pool=valid, seed=1)
    return pool.images.numpy(), pool.labels.numpy()


def time_fit(
    x,
    y: np.ndarray | None,
    objective=None,
    epochs: int = 1,
    max_batches: int | None = None,
    batch_size: int | None = None,
    accelerator: str = "cpu",
    seed: int = 0,
    measure_memory: bool = True,
    workload: str = "mlp",
    clock: str = "wall",
) -> tuple[float, int | None, float]:
    """Wall time (s), added peak memory (bytes) and median step time (s) of one ``Trainer.fit``,
    plain or with ``objective``; ``x, y`` from :func:`workload_data`.

    ``measure_memory=False`` skips the sampling thread (it costs CPU time on small machines) and
    returns ``None`` for the memory. Batch size: 32 (MLP, the paper's) or 128 (CNN) by default.
    ``clock="cpu"``: the step time is this thread's CPU time (``time.thread_time``), which other
    processes on a shared machine do not inflate; ``"wall"``: ``time.perf_counter``.
    """
    import lightning as L
    from torch.utils.data import DataLoader

    from benchmarks.fitting import SmallCNN, indexed_loader, quiet_trainer
    from lightning_dv.data import IndexedDataset
    from lightning_dv.modules import MLPClassifier

    L.seed_everything(seed, verbose=False)
    timer = StepTimer()
    callbacks = [timer]
    if objective is not None:
        from lightning_dv.callbacks import DataValuation as data_valuation

        callbacks.append(data_valuation(objective, record_trajectory=False))
    if workload == "mlp":
        model = MLPClassifier(x.shape[1], int(y.max()) + 1, valuate=objective is not None)
        loader = indexed_loader(x, y, batch_size=batch_size or 32, seed=seed)
    else:
        import torch

        model = SmallCNN(valuate=objective is not None)
        g = torch.Generator().manual_seed(seed)
        loader = DataLoader(IndexedDataset(x), batch_size=batch_size or 128, shuffle=True, generator=g)
    device = "cuda" if accelerator in ("gpu", "cuda") else "cpu"
    with quiet_lightning():
        trainer = quiet_trainer(
            epochs, callbacks=callbacks, accelerator=accelerator, limit_train_batches=max_batches or 1.0
        )
        mem = PeakMemory(device)
        with mem if measure_memory else contextlib.nullcontext():
            t0 = time.perf_counter()
            trainer.fit(model, loader)
            wall = time.perf_counter() - t0
    times = timer.cpu_times if clock == "cpu" else timer.times
    steady = times[min(3, len(times) - 1) :] or [float("nan")]  # first steps warm up
    return wall, mem.peak_bytes, statistics.median(steady)


def probe_memory(
    rows: int,
    valid: int,
    variant: str,
    epochs: int = 1,
    max_batches: int | None = 200,
    accelerator: str = "cpu",
    workload: str = "mlp",
) -> float:
    """Peak memory (MB) one fit adds, measured in a fresh Python process (data made before measuring)."""
    import json
    import subprocess

    code = (
        "import json, torch; torch.set_num_threads(1); "
        "from benchmarks.overhead import _probe; "
        f"print(json.dumps(_probe({rows}, {valid}, {variant!r}, {epochs}, {max_batches!r}, {accelerator!r}, "
        f"{workload!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe for N={rows} J={valid} {variant} failed:\n{out.stderr[-2000:]}")
    peak = json.loads(out.stdout.strip().splitlines()[-1])
    return float("nan") if peak is None else peak / 2**20


def _probe(
    rows: int,
    valid: int,
    variant: str,
    epochs: int,
    max_batches: int | None,
    accelerator: str,
    workload: str = "mlp",
):
    """Child side of :func:`probe_memory`: one fit after the data exist; returns the added peak bytes."""
    x, y = workload_data(workload, rows)
    xv, yv = validation_data(workload, valid)
    objective = None if variant == "plain" else objective_factories()[variant](xv, yv)
    return time_fit(x, y, objective, epochs, max_batches, accelerator=accelerator, workload=workload)[1]


def run_overhead(
    rows: Sequence[int] = ROWS,
    valid_sizes: Sequence[int] = VALID_SIZES,
    objectives: Sequence[str] = ("lossval", "nddv", "aum"),
    repeats: int = 5,
    max_batches: int | None = 200,
    max_rows: int | None = None,
    epochs: int = 1,
    accelerator: str = "cpu",
    log: Callable[[str], None] | None = print,
    memory: bool = True,
    workload: str = "mlp",
    clock: str = "wall",
):
    """Measure every (N, J, objective) setting; one row per fit, as a DataFrame.

    Times come from fits interleaved in this process: at each N every repeat fits the plain
    model and each objective once, the order rotating from repeat to repeat, so drift and
    neighbours' load hit all variants alike; many short repeats (``max_batches``) beat few long
    ones. The step is timed from batch start to batch end (no data loading), so the plain step
    is the same computation at every N. Peak memory comes from one fresh
    subprocess per (N, J, variant) (:func:`probe_memory`): inside a long-lived process the
    allocator reuses what earlier fits freed, which hides what a fit needs.

    Args:
        rows: Training-set sizes N.
        valid_sizes: Validation-set sizes J (used by LossVal's OT term).
        objectives: Names from :func:`objective_factories`; unavailable ones are skipped with a notice.
        repeats: Fits per variant (the report takes medians).
        max_batches: Cap on the steps of each fit (None: full epochs).
        max_rows: Drop training-set sizes above this (short runs).
        epochs: Epochs per fit.
        accelerator: Lightning accelerator (``"cpu"`` or ``"gpu"``).
        log: Receives progress lines; None for silence.
        memory: Measure peak memory in fresh subprocesses (a few seconds each).
        workload: ``"mlp"`` (MLPClassifier on 16 Gaussian features, batch 32) or ``"cnn"``
            (:class:`~benchmarks.fitting.SmallCNN` on 3x32x32 images, batch 128).
        clock: ``"cpu"`` (thread CPU time per step; for a shared CPU machine) or ``"wall"``.

    Returns:
        DataFrame with columns ``workload, rows, valid, variant, repeat, wall_s, step_s, peak_mb,
        steps`` (``step_s``: median step time of the fit; ``peak_mb``: the fresh-process
        measurement of that setting, NaN without ``memory``).
    """
    import pandas as pd

    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; use one of {', '.join(WORKLOADS)}.")
    say = log or (lambda _msg: None)
    factories = objective_factories()
    unknown = [o for o in objectives if o not in factories]
    if unknown:
        raise ValueError(f"unknown objective(s) {unknown}; available: {', '.join(factories)}.")
    rows = [n for n in rows if max_rows is None or n <= max_rows]
    available = []
    xv0, yv0 = validation_data(workload, max(valid_sizes))
    for name in objectives:
        try:
            factories[name](xv0[:10], yv0[:10])
            available.append(name)
        except MethodUnavailable as err:
            say(f"skipping {name}: {err}")
    # One unrecorded fit per variant first: the first fit in a process pays one-off costs
    # (imports, allocator growth, thread pools) that would otherwise inflate one variant only.
    xw, yw = workload_data(workload, 512, seed=2)
    for variant in ["plain", *available]:
        objective = None if variant == "plain" else factories[variant](xv0[:100], yv0[:100])
        time_fit(xw, yw, objective, 1, 4, accelerator=accelerator, measure_memory=False, workload=workload)
    batch = 32 if workload == "mlp" else 128
    records = []
    for n in rows:
        x, y = workload_data(workload, n)
        steps = int(np.ceil(n / batch)) if max_batches is None else min(max_batches, int(np.ceil(n / batch)))
        steps *= epochs
        for j in valid_sizes:
            xv, yv = xv0[:j], yv0[:j]
            variants = ["plain", *available]
            for r in range(repeats):
                for variant in variants[r % len(variants) :] + variants[: r % len(variants)]:
                    objective = None if variant == "plain" else factories[variant](xv, yv)
                    wall, _, step = time_fit(
                        x,
                        y,
                        objective,
                        epochs,
                        max_batches,
                        accelerator=accelerator,
                        seed=r,
                        measure_memory=False,
                        workload=workload,
                        clock=clock,
                    )
                    records.append(
                        {
                            "workload": workload,
                            "rows": n,
                            "valid": j,
                            "variant": variant,
                            "repeat": r,
                            "wall_s": wall,
                            "step_s": step,
                            "clock": clock,
                            "steps": steps,
                        }
                    )
                    say(f"{workload} N={n} J={j} repeat {r + 1}/{repeats} {variant}: {wall:.2f} s")
            for variant in ["plain", *available]:
                mb = (
                    probe_memory(n, j, variant, epochs, max_batches, accelerator, workload)
                    if memory
                    else float("nan")
                )
                for rec in records:
                    if (rec["rows"], rec["valid"], rec["variant"]) == (n, j, variant):
                        rec["peak_mb"] = mb
                if memory:
                    say(f"N={n} J={j} {variant}: peak memory added by the fit (fresh process) {mb:.0f} MB")
    return pd.DataFrame(records)


def overhead_table(df, reference_rows: int | None = 10_000) -> str:
    """Markdown table of the medians over repeats: step-time, fit-time and memory against the plain fit.

    The step ratio (median step with the objective over the median plain step, per repeat) is
    the per-step cost, with its interquartile range over repeats; the fit ratio also counts
    epoch-end work, which ``--max-batches`` does not amortise over a whole epoch. *vs N ref* is
    goal 1's ratio of ratios: each repeat's step ratio at this N over the median step ratio at
    ``reference_rows`` (same workload, J and objective; default 10^4, else the smallest N), with
    its interquartile range.
    """
    lines = [
        "| workload | N (train rows) | J (validation) | objective | steps | plain step (ms) | "
        "step with objective (ms) | step ratio | step ratio IQR | vs N ref (IQR) | fit ratio | "
        "peak memory of the fit: plain (MB) | with objective (MB) |",
        "|---" * 13 + "|",
    ]
    df = df.copy()
    if "workload" not in df:
        df["workload"] = "mlp"
    if "step_s" not in df:
        df["step_s"] = float("nan")
    if "peak_mb" not in df:
        df["peak_mb"] = float("nan")

    def step_ratios(part, variant):
        plain = part[part["variant"] == "plain"].set_index("repeat")
        obj = part[part["variant"] == variant].set_index("repeat")
        return (obj["step_s"] / plain["step_s"]).dropna()

    for (w, n, j), part in df.groupby(["workload", "rows", "valid"], sort=True):
        plain = part[part["variant"] == "plain"].set_index("repeat")
        sizes = sorted(set(df[(df["workload"] == w) & (df["valid"] == j)]["rows"]))
        ref = reference_rows if reference_rows in sizes else sizes[0]
        ref_part = df[(df["workload"] == w) & (df["valid"] == j) & (df["rows"] == ref)]
        for variant in [v for v in dict.fromkeys(part["variant"]) if v != "plain"]:
            obj = part[part["variant"] == variant].set_index("repeat")
            ratios = (obj["wall_s"] / plain["wall_s"]).dropna()
            sr = step_ratios(part, variant)
            if len(sr):
                q1, q3 = np.nanpercentile(sr, [25, 75])
                step_ratio, iqr = f"**{statistics.median(sr):.2f}x**", f"{q1:.2f}-{q3:.2f}"
            else:
                step_ratio, iqr = "n/a", "n/a"
            ref_sr = step_ratios(ref_part, variant)
            if len(sr) and len(ref_sr):
                rr = sr / statistics.median(ref_sr)
                r1, r3 = np.nanpercentile(rr, [25, 75])
                vs_ref = f"{statistics.median(rr):.2f} ({r1:.2f}-{r3:.2f}) vs {ref:,}"
            else:
                vs_ref = "n/a"
            lines.append(
                f"| {w} | {n:,} | {j:,} | {variant} | {int(obj['steps'].iloc[0])} | "
                f"{1e3 * np.nanmedian(plain['step_s']):.2f} | {1e3 * np.nanmedian(obj['step_s']):.2f} | "
                f"{step_ratio} | {iqr} | {vs_ref} | {statistics.median(ratios):.2f}x | "
                f"{np.nanmedian(plain['peak_mb']):.0f} | {np.nanmedian(obj['peak_mb']):.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks overhead``: run :func:`run_overhead`, write ``overhead.csv`` and ``.md``.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``), e.g.
            ``["--rows", "1000", "100000", "--valid", "100", "--repeats", "5", "--out", "DIR"]``.

    Returns:
        Process exit code.
    """
    from benchmarks.protocol import machine_description

    p = argparse.ArgumentParser(prog="python -m benchmarks overhead", description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", type=int, default=list(ROWS), help="training-set sizes")
    p.add_argument("--valid", nargs="+", type=int, default=list(VALID_SIZES), help="validation-set sizes")
    p.add_argument(
        "--objectives", nargs="+", default=["lossval", "nddv", "aum"], help="objectives to compare"
    )
    p.add_argument(
        "--workload", default="mlp", choices=list(WORKLOADS), help="MLP (batch 32) or CNN (batch 128)"
    )
    p.add_argument("--repeats", type=int, default=5, help="fits per variant (medians are reported)")
    p.add_argument("--max-batches", type=int, default=200, help="cap on steps per fit; 0 = full epochs")
    p.add_argument("--max-rows", type=int, default=None, help="skip training sets larger than this")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory probes")
    p.add_argument(
        "--clock",
        default=None,
        choices=["cpu", "wall"],
        help="step time: thread CPU time (default on CPU: robust to other processes) or wall time (default on GPU)",
    )
    p.add_argument("--reference-rows", type=int, default=10_000, help="N of the 'vs N ref' column")
    p.add_argument("--out", default="bench_overhead", help="output folder")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    import shlex

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    df = run_overhead(
        args.rows,
        args.valid,
        args.objectives,
        args.repeats,
        args.max_batches or None,
        args.max_rows,
        args.epochs,
        args.accelerator,
        memory=not args.no_memory,
        workload=args.workload,
        clock=args.clock or ("cpu" if args.accelerator == "cpu" else "wall"),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "overhead.csv", lambda tmp: df.to_csv(tmp, index=False))
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else "CPU"
    command = "python -m benchmarks overhead " + shlex.join(argv)
    text = (
        "# Training overhead of valuation (medians over repeats)\n\n"
        f"Command: `{command}`\n\nMachine: {machine_description()}; device: {device}\n\n"
        + (overhead_table(df, args.reference_rows) if not df.empty else "No fit completed.\n")
    )
    atomic_write(out / "overhead.md", lambda tmp: Path(tmp).write_text(text))
    print(text)
    return 0
