"""The OpenDataVal benchmark protocol (shared/METHODS.md section 5) as a reusable runner.

For every dataset x noise kind x noise rate x seed, ONE split is made with
:func:`~lightning_dv.datasets.make_split` and every method values the same training rows. Each
run is scored by:

- ``f1``: 2-means detection F1 of the low cluster against the corrupted rows;
- ``auroc``: AUROC of ``-value`` for the corrupted rows (insensitive to heavy tails);
- ``discovery_area``: area under the corruption-discovery curve (share of corrupted rows found
  while inspecting the lowest 0..100% of values; random = 0.5, perfect = 1 - p/2);
- point removal: test accuracy of a logistic regression retrained without the lowest (and,
  separately, the highest) valued 5%..50% of the training rows;
- ``wall_s``: wall time of the valuation alone.

:func:`run_protocol` returns one row per run; :func:`write_report` writes ``runs.csv``,
``summary.md`` and the PNG plots.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from benchmarks.baselines import MethodUnavailable, _fit_predict_proba, logistic_model
from benchmarks.registry import get_method
from lightning_dv.datasets import BUNDLED, REGRESSION, Split, make_split
from lightning_dv.distributed import scatter_rows
from lightning_dv.io import atomic_write
from lightning_dv.metrics import detection_auroc, discovery_curve, kmeans_f1
from lightning_dv.values import DataValues

#: Classification datasets that need no download (the protocol's default).
DEFAULT_DATASETS = tuple(d for d in BUNDLED if d not in REGRESSION)
#: Fractions of rows removed for the point-removal curves.
REMOVAL_FRACTIONS = tuple(round(f, 2) for f in np.arange(0.05, 0.501, 0.05))
#: Fractions inspected for the stored discovery curve.
DISCOVERY_FRACTIONS = tuple(round(f, 2) for f in np.arange(0.05, 1.001, 0.05))


def align_values(values: DataValues, num_rows: int, method: str) -> np.ndarray:
    """The values as an array in dataset-row order, checked to cover every row exactly once."""
    try:
        v = scatter_rows(values.index, values.values, num_rows, each_once=True)[0].numpy()
    except ValueError as err:
        raise ValueError(
            f"method {method!r} returned {len(values)} values; expected exactly one value per training row "
            f"0..{num_rows - 1}: {err}"
        ) from None
    if not np.all(np.isfinite(v)):
        raise ValueError(f"method {method!r} returned {int((~np.isfinite(v)).sum())} non-finite values.")
    return v


def discovery_area(values: np.ndarray, noisy: np.ndarray, points: int = 101) -> float:
    """Area under the corruption-discovery curve on ``[0, 1]`` (random ~ 0.5, perfect = 1 - p/2).

    Example:
        >>> round(discovery_area(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0])), 3)
        0.875
    """
    grid = np.linspace(0.0, 1.0, points)
    curve = discovery_curve(values, noisy, fractions=grid)
    return float(np.trapezoid(curve, grid) if hasattr(np, "trapezoid") else np.trapz(curve, grid))


def removal_accuracy(
    split: Split, values: np.ndarray, fractions: Sequence[float], lowest: bool, seed: int = 0
) -> list[float]:
    """Test accuracy of a logistic regression retrained without the lowest (or highest) valued rows.

    Ties in the values are broken by row order (rows are randomly permuted by the split).

    Example:
        >>> s = make_split("iris", noise=0.1, seed=0)
        >>> acc = removal_accuracy(s, np.arange(len(s.y_train), dtype=float), [0.1], lowest=True)
        >>> 0.0 <= acc[0] <= 1.0
        True
    """
    order = np.argsort(values if lowest else -values, kind="stable")
    n = len(values)
    out = []
    for f in fractions:
        keep = np.sort(order[int(round(f * n)) :])
        if len(keep) == 0:
            out.append(float("nan"))
            continue
        proba = _fit_predict_proba(
            logistic_model(seed), split.x_train[keep], split.y_train[keep], split.x_test, split.num_classes
        )
        out.append(float((proba.argmax(1) == split.y_test).mean()))
    return out


def evaluate(
    values: np.ndarray, split: Split, removal_fractions: Sequence[float] = REMOVAL_FRACTIONS, seed: int = 0
) -> dict[str, float]:
    """All protocol metrics of one run, as a flat dict (removal curves only when fractions are given)."""
    row: dict[str, float] = {
        "f1": kmeans_f1(values, split.noisy),
        "auroc": detection_auroc(values, split.noisy),
        "discovery_area": discovery_area(values, split.noisy),
    }
    for f, d in zip(DISCOVERY_FRACTIONS, discovery_curve(values, split.noisy, fractions=DISCOVERY_FRACTIONS)):
        row[f"discovery_{f:.2f}"] = float(d)
    if removal_fractions:
        for f, acc in zip(removal_fractions, removal_accuracy(split, values, removal_fractions, True, seed)):
            row[f"remove_low_{f:.2f}"] = acc
        for f, acc in zip(removal_fractions, removal_accuracy(split, values, removal_fractions, False, seed)):
            row[f"remove_high_{f:.2f}"] = acc
    return row


def run_protocol(
    methods: Sequence[str],
    datasets: Sequence[str] = DEFAULT_DATASETS,
    noise_rates: Sequence[float] = (0.1, 0.2),
    noise_kinds: Sequence[str] = ("label",),
    seeds: Sequence[int] = (0, 1, 2),
    removal_fractions: Sequence[float] = REMOVAL_FRACTIONS,
    log: Callable[[str], None] | None = print,
    split_kwargs: dict | None = None,
):
    """Run every method on identical splits and return one row per run as a DataFrame.

    Args:
        methods: Registered method names (see :data:`~benchmarks.registry.METHODS`).
        datasets: Bundled classification datasets (``lightning_dv.datasets.BUNDLED``).
        noise_rates: Fractions of corrupted rows.
        noise_kinds: Any of ``"label"``, ``"feature"``, ``"mixed"``.
        seeds: Seeds; each seed is one split (and one noise draw) shared by all methods.
        removal_fractions: Fractions for the point-removal curves; empty to skip them (faster).
        log: Receives one progress line per run (and skip/failure notices); None for silence.
        split_kwargs: Extra arguments for :func:`~lightning_dv.datasets.make_split` (e.g. ``n_train``).

    Returns:
        A :class:`pandas.DataFrame` with columns ``dataset, noise_kind, noise, seed, method, kind,
        n_train, n_noisy, f1, auroc, discovery_area, wall_s, discovery_*, remove_low_*,
        remove_high_*, acc_full, model_acc, model``: ``model_acc`` is the test accuracy of the
        model the method trained (training-time methods), else ``acc_full`` (logistic regression on
        all rows); ``model`` says which. Its ``attrs`` hold ``skipped`` (method -> reason) and
        ``failed`` (list of run descriptions with the error).

    Example:
        >>> df = run_protocol(["random"], ["iris"], [0.2], seeds=[0], removal_fractions=(), log=None)
        >>> df[["dataset", "method", "noise"]].values.tolist()
        [['iris', 'random', 0.2]]
    """
    import pandas as pd

    say = log or (lambda _msg: None)
    regs = [get_method(m) for m in methods]
    for d in datasets:
        if d in REGRESSION:
            raise ValueError(
                f"dataset {d!r} is a regression set; the protocol covers classification datasets."
            )
        if d not in BUNDLED:
            raise ValueError(f"unknown dataset {d!r}; choose from {', '.join(DEFAULT_DATASETS)}.")
    skipped: dict[str, str] = {}
    failed: list[str] = []
    rows = []
    settings = [(d, k, p, s) for d in datasets for k in noise_kinds for p in noise_rates for s in seeds]
    total = len(settings) * len(regs)
    done = 0
    for dataset, kind, rate, seed in settings:
        split = make_split(dataset, noise=rate, noise_kind=kind, seed=seed, **(split_kwargs or {}))
        n = len(split.y_train)
        acc_full = (
            removal_accuracy(split, np.zeros(n), [0.0], True, seed)[0] if removal_fractions else float("nan")
        )
        for method in regs:
            done += 1
            tag = f"[{done}/{total}] {dataset} {kind} {rate:.2f} seed {seed} {method.name}"
            if method.name in skipped:
                continue
            t0 = time.perf_counter()
            try:
                dv = method.fn(split, seed)
                wall = time.perf_counter() - t0
                values = align_values(dv, n, method.name)
            except MethodUnavailable as err:
                skipped[method.name] = str(err)
                say(f"{tag}: SKIPPED for all runs: {err}")
                continue
            except Exception as err:  # noqa: BLE001 - one failing run must not lose the others
                failed.append(
                    f"{dataset} {kind} {rate} seed {seed} {method.name}: {type(err).__name__}: {err}"
                )
                say(f"{tag}: FAILED: {type(err).__name__}: {err}")
                continue
            metrics = evaluate(values, split, removal_fractions, seed)
            # The model's test accuracy next to the detection figures: the model the method trained
            # (training-time methods), else the logistic regression on all rows (acc_full).
            model_acc = dv.metadata.get("test_accuracy", acc_full)
            model = dv.metadata.get("model", "logistic regression on all rows (no model of its own)")
            rows.append(
                {
                    "dataset": dataset,
                    "noise_kind": kind,
                    "noise": float(rate),
                    "seed": int(seed),
                    "method": method.name,
                    "kind": method.kind,
                    "n_train": n,
                    "n_noisy": len(split.noisy),
                    "wall_s": wall,
                    "acc_full": acc_full,
                    "model_acc": model_acc,
                    "model": model,
                    **metrics,
                }
            )
            say(
                f"{tag}: F1 {metrics['f1']:.3f} AUROC {metrics['auroc']:.3f} model test acc. {model_acc:.3f} "
                f"({wall:.2f} s)"
            )
    df = pd.DataFrame(rows)
    df.attrs["skipped"] = skipped
    df.attrs["failed"] = failed
    return df


# -- report -----------------------------------------------------------------------------------------
def _fmt(mean: float, std: float, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if not np.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _over_seeds(df, by: list[str], col: str):
    """Mean and std over seeds of ``col``; each seed's figure is first averaged over the datasets."""
    per_seed = df.groupby([*by, "seed"], sort=False)[col].mean().reset_index()
    return per_seed.groupby(by, sort=False)[col].agg(["mean", "std"])


def machine_description() -> str:
    """One line describing where the benchmark ran (OS, CPU count, torch threads, versions)."""
    import torch

    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores visible, "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread(s), Python {platform.python_version()}"
    )


def summary_markdown(df, command: str | None = None) -> str:
    """The markdown summary: per noise setting a method table, then per-dataset F1 and AUROC tables.

    Figures are mean ± std over seeds, where each seed's figure is the mean over the datasets
    (per-dataset tables: mean ± std over seeds). The best mean per column is in bold.
    """
    lines = ["# Data valuation benchmark (OpenDataVal protocol)", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"Machine: {machine_description()}", ""]
    if df.empty:
        return "\n".join([*lines, "No run completed.", ""])
    datasets = list(dict.fromkeys(df["dataset"]))
    seeds = sorted(set(df["seed"]))
    lines += [
        f"Datasets: {', '.join(datasets)}. Seeds: {', '.join(map(str, seeds))}. "
        "Cells: mean ± std over seeds of the mean over datasets.",
        "",
    ]
    low_col = "remove_low_0.20" if "remove_low_0.20" in df.columns else None
    cols = [("f1", "2-means F1", True), ("auroc", "AUROC", True), ("discovery_area", "discovery area", True)]
    if low_col:
        cols.append((low_col, "test acc. w/o lowest 20%", True))
    cols.append(("model_acc", "model test acc.", True))
    cols.append(("wall_s", "time per valuation (s)", False))
    for (kind, rate), part in df.groupby(["noise_kind", "noise"], sort=True):
        lines += [f"## {kind} noise {rate:.0%}", ""]
        if low_col:
            lines += [f"Test accuracy with all training rows: {part['acc_full'].mean():.3f}.", ""]
        stats = {c: _over_seeds(part, ["method"], c) for c, _, _ in cols}
        methods = list(dict.fromkeys(part["method"]))
        best = {c: (stats[c]["mean"].max() if hi else stats[c]["mean"].min()) for c, _, hi in cols}
        lines += ["| method | " + " | ".join(t for _, t, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for m in methods:
            cells = []
            for c, _, _ in cols:
                mean, std = stats[c].loc[m, "mean"], stats[c].loc[m, "std"]
                cell = _fmt(mean, std, 2 if c == "wall_s" else 3)
                cells.append(f"**{cell}**" if np.isclose(mean, best[c]) and c != "wall_s" else cell)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
        for metric, title in (("f1", "2-means F1"), ("auroc", "AUROC")):
            lines += [f"{title} per dataset (mean ± std over seeds):", ""]
            per = part.groupby(["method", "dataset"], sort=False)[metric].agg(["mean", "std"])
            lines += ["| method | " + " | ".join(datasets) + " |", "|---" * (len(datasets) + 1) + "|"]
            for m in methods:
                cells = [
                    _fmt(per.loc[(m, d), "mean"], per.loc[(m, d), "std"]) if (m, d) in per.index else "n/a"
                    for d in datasets
                ]
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _method_colors(methods: Sequence[str]) -> dict[str, tuple]:
    import matplotlib

    # tab10 while it suffices; tab20 keeps up to 20 methods apart.
    n = 10 if len(methods) <= 10 else 20
    cmap = matplotlib.colormaps[f"tab{n}"]
    return {m: cmap(i % n) for i, m in enumerate(methods)}


def plot_results(df, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``f1_by_method.png``, ``discovery_curves.png`` and ``removal_curves.png`` into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    written: list[Path] = []
    if df.empty:
        return written
    methods = list(dict.fromkeys(df["method"]))
    colors = _method_colors(methods)
    kinds = sorted(set(df["noise_kind"]))
    settings = sorted(set(zip(df["noise_kind"], df["noise"])))

    def save(fig, name: str) -> None:
        path = out / name
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
        plt.close(fig)
        written.append(path)

    # F1 by method and noise rate: grouped bars, one panel per noise kind.
    fig, axes = plt.subplots(
        1, len(kinds), figsize=(max(6, 1.2 * len(methods) + 3) * len(kinds), 4), squeeze=False
    )
    for ax, kind in zip(axes[0], kinds):
        part = df[df["noise_kind"] == kind]
        rates = sorted(set(part["noise"]))
        stats = _over_seeds(part, ["noise", "method"], "f1")
        width = 0.8 / len(methods)
        for j, m in enumerate(methods):
            means = [stats["mean"].get((r, m), np.nan) for r in rates]
            stds = np.nan_to_num([stats["std"].get((r, m), np.nan) for r in rates])
            ax.bar(
                np.arange(len(rates)) + (j - (len(methods) - 1) / 2) * width,
                means,
                width,
                yerr=stds,
                label=m,
                color=colors[m],
                capsize=2,
            )
        ax.set_xticks(np.arange(len(rates)), [f"{r:.0%}" for r in rates])
        ax.set_xlabel(f"{kind} noise rate")
        ax.set_ylabel("2-means detection F1")
        ax.set_ylim(0, 1)
        ax.set_title(f"{kind} noise (mean ± std over seeds)")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save(fig, "f1_by_method.png")

    # Discovery and removal curves: one panel per noise setting, averaged over datasets and seeds.
    disc_cols = sorted(c for c in df.columns if c.startswith("discovery_") and c != "discovery_area")
    disc_x = [0.0] + [float(c.split("_")[1]) for c in disc_cols]
    fig, axes = plt.subplots(1, len(settings), figsize=(4.5 * len(settings), 4), squeeze=False)
    for ax, (kind, rate) in zip(axes[0], settings):
        part = df[(df["noise_kind"] == kind) & (df["noise"] == rate)]
        for m in methods:
            curve = part[part["method"] == m][disc_cols].mean().to_numpy()
            ax.plot(disc_x, [0.0, *curve], label=m, color=colors[m])
        p = float((part["n_noisy"] / part["n_train"]).mean())
        ax.plot(disc_x, np.minimum(np.asarray(disc_x) / max(p, 1e-9), 1.0), "k:", label="optimal")
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="random (expected)")
        ax.set_xlabel("fraction of rows inspected (lowest values first)")
        ax.set_ylabel("share of corrupted rows found")
        ax.set_title(f"{kind} noise {rate:.0%}")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    save(fig, "discovery_curves.png")

    low_cols = sorted(c for c in df.columns if c.startswith("remove_low_"))
    if low_cols:
        fracs = [0.0] + [float(c.rsplit("_", 1)[1]) for c in low_cols]
        fig, axes = plt.subplots(1, len(settings), figsize=(4.5 * len(settings), 4), squeeze=False)
        for ax, (kind, rate) in zip(axes[0], settings):
            part = df[(df["noise_kind"] == kind) & (df["noise"] == rate)]
            for m in methods:
                sub = part[part["method"] == m]
                full = float(sub["acc_full"].mean())
                low = sub[low_cols].mean().to_numpy()
                high = sub[[c.replace("low", "high") for c in low_cols]].mean().to_numpy()
                ax.plot(fracs, [full, *low], color=colors[m], label=f"{m}")
                ax.plot(fracs, [full, *high], color=colors[m], ls="--")
            ax.set_xlabel("fraction of training rows removed")
            ax.set_ylabel("test accuracy (logistic regression)")
            ax.set_title(f"{kind} noise {rate:.0%}")
        fig.suptitle("point removal: solid = lowest-valued rows removed, dashed = highest-valued removed")
        fig.tight_layout()
        axes[0][-1].legend(fontsize=8, loc="lower left")
        save(fig, "removal_curves.png")
    return written


def write_report(
    df, out_dir: str | os.PathLike, command: str | None = None, plots: bool = True
) -> dict[str, Path]:
    """Write ``runs.csv`` (one row per run), ``summary.md`` and the PNG plots into ``out_dir``.

    Skipped methods and failed runs recorded in ``df.attrs`` are listed at the end of the summary.

    Returns:
        The written paths by name (``runs``, ``summary`` and the PNG file stems).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"runs": atomic_write(out / "runs.csv", lambda tmp: df.to_csv(tmp, index=False))}
    text = summary_markdown(df, command)
    skipped, failed = df.attrs.get("skipped", {}), df.attrs.get("failed", [])
    if skipped:
        text += "\n## Skipped methods\n\n" + "".join(f"- {m}: {why}\n" for m, why in skipped.items())
    if failed:
        text += "\n## Failed runs\n\n" + "".join(f"- {f}\n" for f in failed)
    paths["summary"] = atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(text))
    if plots:
        for p in plot_results(df, out):
            paths[p.stem] = p
    return paths
