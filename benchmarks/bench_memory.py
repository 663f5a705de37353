"""Where a valuation fit's peak memory comes from: the kernel's high-water mark at every phase.

One full-epoch fit (MLP, batch 32, J = 100, as ``benchmarks.overhead.probe_memory``) per fresh
process, with the phases of the :class:`~lightning_dv.callbacks.DataValuation` callback (set-up,
the training steps, the epoch end and the fit end, each split into its parts) wrapped by a probe
that resets the kernel's peak resident set size (``/proc/self/clear_refs``) when a phase starts and
reads it (``VmHWM``) when it ends; nested phases fold their peaks into the phases around them.
Figures are MB above the resident set size just before ``trainer.fit`` (what ``probe_memory``
reports as the fit's peak), and ``+MB`` the phase's own peak above the memory held when it began.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_memory --rows 1000000 --objectives aum nddv lossval

Linux only (the probe needs the resettable high-water mark).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.overhead import _high_water_mark, _reset_high_water_mark, _rss_bytes


class PhaseProbe:
    """Peak and held memory of nested phases, from the kernel's resettable high-water mark.

    A phase is named by the phases open around it (``"fit end > build values"``); a phase entered
    several times keeps its highest peak and its largest own rise.

    Example:
        >>> import numpy as np
        >>> probe = PhaseProbe()
        >>> with probe.phase("outer"):
        ...     with probe.phase("inner"):
        ...         block = np.ones(5_000_000)
        >>> report = probe.report()
        >>> report["outer"]["peak"] >= report["outer > inner"]["peak"]
        True
    """

    def __init__(self) -> None:
        self.base = _rss_bytes() or 0
        self._open: list[dict] = []
        self._phases: dict[str, dict[str, float]] = {}
        _reset_high_water_mark()

    def _fold(self) -> None:
        peak = _high_water_mark() or 0
        for call in self._open:
            call["peak"] = max(call["peak"], peak)
        _reset_high_water_mark()

    @contextlib.contextmanager
    def phase(self, name: str):
        self._fold()
        key = " > ".join([c["name"] for c in self._open if c["name"] != "whole fit"] + [name])
        rss = _rss_bytes() or 0
        call = {"name": name, "start": rss, "peak": rss}
        self._open.append(call)
        try:
            yield
        finally:
            self._fold()
            self._open.pop()
            entry = self._phases.setdefault(key, {"start": rss, "peak": 0, "own": 0, "calls": 0})
            entry["peak"] = max(entry["peak"], call["peak"])
            entry["own"] = max(entry["own"], call["peak"] - call["start"])
            entry["end"] = _rss_bytes() or 0
            entry["calls"] += 1

    def report(self) -> dict[str, dict[str, float]]:
        mb = 2**20
        return {
            name: {
                "start": (e["start"] - self.base) / mb,
                "peak": (e["peak"] - self.base) / mb,
                "own": e["own"] / mb,
                "end": (e["end"] - self.base) / mb,
                "calls": e["calls"],
            }
            for name, e in self._phases.items()
        }


def _wrap(owner, attr: str, probe: PhaseProbe, name: str) -> None:
    fn = getattr(owner, attr)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with probe.phase(name):
            return fn(*args, **kwargs)

    setattr(owner, attr, wrapped)


def _instrument(probe: PhaseProbe, objective) -> None:
    """Wrap the callback's hooks and their parts (module attributes, so the callback's calls see them)."""
    import lightning_dv.callbacks.data_valuation as dvm
    import lightning_dv.values as values_module
    from lightning_dv.callbacks.collect import RowLabels
    from lightning_dv.callbacks.guards import VisitCounter

    cls = dvm.DataValuation
    for attr, name in (
        ("setup", "setup"),
        ("on_fit_start", "fit start"),
        ("on_train_epoch_end", "epoch end"),
        ("on_fit_end", "fit end"),
        ("_check_something_valued", "visits sync"),
        ("_build_values", "build values"),
    ):
        _wrap(cls, attr, probe, name)
    for attr, name in (
        ("log_values", "log values (histogram, scalars)"),
        ("per_class_scalars", "per-class scalars"),
        ("log_lowest_rows", "lowest rows table"),
        ("log_trajectory_figure", "trajectory figure"),
        ("export_values", "export"),
    ):
        _wrap(dvm, attr, probe, name)
    _wrap(RowLabels, "merged", probe, "labels merged")
    _wrap(VisitCounter, "total", probe, "visits total")
    _wrap(values_module, "_two_means_flags", probe, "DataValues flags (2-means)")
    _wrap(values_module.DataValues, "__post_init__", probe, "DataValues")
    for attr, name in (
        ("on_train_epoch_end", "objective epoch end"),
        ("values", "objective values"),
        ("extra_columns", "extra columns"),
    ):
        bound = getattr(objective, attr)

        def wrapped(*args, _fn=bound, _name=name, **kwargs):
            with probe.phase(_name):
                return _fn(*args, **kwargs)

        setattr(objective, attr, wrapped)


def breakdown(
    rows: int, variant: str, valid: int = 100, export: str | None = None, logger: bool = False
) -> dict:
    """One full-epoch fit of ``variant`` with the phase probe (run it in a fresh process).

    ``export``: also write the values (``"csv"``, ``"parquet"``, ``"npz"``); ``logger``: with a
    TensorBoardLogger (histogram, per-class scalars, lowest-rows table), else no logger as in
    ``probe_memory``.
    """
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback

    from benchmarks.fitting import indexed_loader, quiet_trainer
    from benchmarks.overhead import objective_factories, synthetic_data
    from benchmarks.registry import quiet_lightning
    from lightning_dv.callbacks import DataValuation
    from lightning_dv.modules import MLPClassifier

    torch.set_num_threads(1)
    x, y = synthetic_data(rows, seed=0)
    xv, yv = synthetic_data(valid, seed=1)
    objective = None if variant == "plain" else objective_factories()[variant](xv, yv)
    L.seed_everything(0, verbose=False)
    model = MLPClassifier(x.shape[1], int(y.max()) + 1, valuate=objective is not None)
    loader = indexed_loader(x, y, batch_size=32, seed=0)
    probe = PhaseProbe()

    class Steps(Callback):
        """The training steps: from the first batch to the epoch's last (no epoch-end work)."""

        def on_train_epoch_start(self, *args) -> None:
            self._cm = probe.phase("training steps")
            self._cm.__enter__()

        def on_train_epoch_end(self, *args) -> None:  # runs before DataValuation's (list order)
            self._cm.__exit__(None, None, None)

    callbacks: list = [Steps()]
    if objective is not None:
        _instrument(probe, objective)
        path = None if export is None else Path(tempfile.mkdtemp()) / f"values.{export}"
        callbacks.append(DataValuation(objective, export_path=path, record_trajectory=False))
    extra = {}
    if logger:
        from lightning.pytorch.loggers import TensorBoardLogger

        extra["logger"] = TensorBoardLogger(tempfile.mkdtemp(), name="memory")
    trainer = quiet_trainer(1, callbacks=callbacks, **extra)
    with quiet_lightning(), probe.phase("whole fit"):
        trainer.fit(model, loader)
    return probe.report()


def run(rows: int, variant: str, export: str | None = None, logger: bool = False) -> dict:
    """:func:`breakdown` in a fresh Python process (the allocator holds nothing of an earlier fit)."""
    code = (
        "import json; from benchmarks.bench_memory import breakdown; "
        f"print(json.dumps(breakdown({rows}, {variant!r}, export={export!r}, logger={logger!r})))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"breakdown of {variant} at N={rows} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(reports: dict[str, dict]) -> str:
    """A markdown table: one line per phase, peak (MB over the pre-fit RSS) and own rise per variant."""
    variants = list(reports)
    names: list[str] = []
    for rep in reports.values():
        names += [n for n in rep if n not in names]
    head = "| phase | " + " | ".join(f"{v}: peak (own +MB)" for v in variants) + " |"
    lines = [head, "|---" * (len(variants) + 1) + "|"]
    for n in names:
        cells = []
        for v in variants:
            e = reports[v].get(n)
            cells.append("" if e is None else f"{e['peak']:.1f} (+{e['own']:.1f})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_memory", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--objectives", nargs="+", default=["plain", "aum", "nddv", "lossval"])
    p.add_argument("--export", choices=["csv", "parquet", "npz"], default=None, help="also export the values")
    p.add_argument("--logger", action="store_true", help="fit with a TensorBoardLogger")
    p.add_argument("--json", type=Path, default=None, help="also write the raw reports here")
    args = p.parse_args(argv)
    reports = {}
    for v in args.objectives:
        reports[v] = run(args.rows, v, args.export, args.logger)
        print(f"{v}: whole fit peak {reports[v]['whole fit']['peak']:.1f} MB", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(reports, indent=1))
    print(table(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
