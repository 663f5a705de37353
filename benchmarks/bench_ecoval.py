"""Benchmark EcoVal on the OpenDataVal protocol: detection F1 / AUROC, point-removal curves, cost.

For each dataset and seed: a split with label noise on train and valid (``make_split``), EcoVal's
values, the 2-means detection F1 and AUROC of the total value and of its two parts, the test
accuracy of a logistic regression retrained after removing the lowest or highest valued 5%, 10%,
..., 50% (and a random order as reference), the wall time and the number of trainings.

Writes ``ecoval_runs.csv`` (one row per dataset and seed), ``ecoval_removal.csv`` (long format)
and ``ecoval_removal.png`` under the output folder, and prints a summary (medians over seeds).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_ecoval.py results/ecoval --seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/bench_ecoval.py results/ecoval_clustered --noise-kind clustered
    OMP_NUM_THREADS=1 python benchmarks/bench_ecoval.py results/ecoval_speed --speed

The project's harness calls the same thing through :func:`ecoval_values` ``(Split, seed)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.protocol import REMOVAL_FRACTIONS, removal_accuracy
from lightning_dv.datasets import Split, make_split
from lightning_dv.methods.ecoval import EcoVal
from lightning_dv.metrics import detection_auroc, kmeans_f1
from lightning_dv.values import DataValues


def ecoval_values(split: Split, seed: int, **kwargs) -> DataValues:
    """EcoVal with default settings on one split (the harness's ``(Split, seed) -> DataValues``)."""
    return EcoVal(seed=seed, **kwargs).fit(split.x_train, split.y_train, split.x_valid, split.y_valid)


def clustered_label_noise(split: Split, fraction: float, group_size: int, seed: int) -> Split:
    """Replace the split's training label noise by COHERENT groups of wrong labels.

    Groups of ``group_size`` same-class neighbours (around random anchors) all move to one other
    class, until ``fraction`` of the rows are corrupted. Such a group agrees with itself, so a
    neighbourhood vote cannot see it; this is the case the cluster-level (extrinsic) term is for.
    The validation labels keep ``make_split``'s uniform noise.
    """
    rng = np.random.default_rng(seed + 10_000)
    y = split.y_train_clean.copy()
    free = np.ones(len(y), dtype=bool)
    target = int(round(fraction * len(y)))
    while (~free).sum() < target:
        anchor = rng.choice(np.flatnonzero(free))
        same = np.flatnonzero(free & (y == y[anchor]))
        d = ((split.x_train[same] - split.x_train[anchor]) ** 2).sum(1)
        size = min(group_size, target - int((~free).sum()))
        group = same[np.argsort(d)[:size]]
        y[group] = (y[anchor] + rng.integers(1, split.num_classes)) % split.num_classes
        free[group] = False
    return dataclasses.replace(split, y_train=y, noisy=np.flatnonzero(~free))


def run(
    datasets: list[str],
    seeds: list[int],
    noise: float,
    kwargs: dict,
    noise_kind: str = "label",
    group_size: int = 20,
) -> tuple[list[dict], list[dict]]:
    runs, curves = [], []
    for name in datasets:
        for seed in seeds:
            split = make_split(name, noise=noise, noise_kind="label", seed=seed)
            if noise_kind == "clustered":
                split = clustered_label_noise(split, noise, group_size, seed)
            t0 = time.perf_counter()
            dv = ecoval_values(split, seed, **kwargs)
            wall = time.perf_counter() - t0
            intrinsic = dv.columns["intrinsic"]
            extrinsic = dv.columns["extrinsic"]
            row = {
                "dataset": name,
                "seed": seed,
                "noise_kind": noise_kind,
                "n_train": len(split.y_train),
                "f1": kmeans_f1(dv.values, split.noisy),
                "auroc": detection_auroc(dv.values, split.noisy),
                "auroc_intrinsic": detection_auroc(intrinsic, split.noisy),
                "auroc_extrinsic": detection_auroc(extrinsic, split.noisy),
                "f1_intrinsic": kmeans_f1(intrinsic, split.noisy),
                "wall_s": wall,
                "training_s": dv.metadata["training_time_s"],
                "n_trainings": dv.metadata["n_trainings"],
                "n_clusters": dv.metadata["n_clusters"],
                "r2": dv.metadata["r2"],
                "utility_full": dv.metadata["utility_full"],
                "negative_elasticities": int(np.sum(np.asarray(dv.metadata["elasticities"]) < 0)),
            }
            rand = np.random.default_rng(seed).random(len(split.y_train))
            for order, values, lowest in (
                ("lowest", dv.values, True),
                ("highest", dv.values, False),
                ("random", rand, True),
            ):
                accs = removal_accuracy(split, values, REMOVAL_FRACTIONS, lowest=lowest, seed=seed)
                for f, acc in zip(REMOVAL_FRACTIONS, accs):
                    curves.append(
                        {"dataset": name, "seed": seed, "removed": order, "fraction": f, "accuracy": acc}
                    )
            base = removal_accuracy(split, np.zeros(len(split.y_train)), [0.0], lowest=True, seed=seed)[0]
            row["accuracy_all"] = base
            runs.append(row)
            print(
                f"{name} seed {seed}: F1 {row['f1']:.3f} AUROC {row['auroc']:.3f} "
                f"(intrinsic {row['auroc_intrinsic']:.3f}, extrinsic {row['auroc_extrinsic']:.3f}) "
                f"{row['n_trainings']} trainings, {wall:.1f} s",
                flush=True,
            )
    return runs, curves


def speed(name: str = "digits", n_subsets: int = 64, repeats: int = 3, steps: int = 200) -> list[dict]:
    """Median wall time of training ``n_subsets`` subset models: batched, a loop, scikit-learn."""
    from sklearn.linear_model import LogisticRegression

    from lightning_dv.methods.ecoval import sample_subsets, train_softmax_batched

    split = make_split(name, noise=0.1, seed=0)
    x, y = torch.tensor(split.x_train), torch.tensor(split.y_train)
    cluster = np.arange(len(y)) % 50
    masks = torch.from_numpy(sample_subsets(cluster, n_subsets, (0.2, 1.0), seed=0)[0])
    l2 = 1e-3

    def batched():
        train_softmax_batched(x, y, masks, split.num_classes, steps=steps, l2=l2)

    def loop():
        for m in masks:
            train_softmax_batched(x, y, m[None], split.num_classes, steps=steps, l2=l2)

    def sklearn_loop():
        for m in masks.numpy():
            LogisticRegression(C=1 / (l2 * m.sum()), max_iter=steps).fit(split.x_train[m], split.y_train[m])

    out = []
    for label, fn in (
        ("batched", batched),
        ("per-subset loop", loop),
        ("sklearn loop (lbfgs)", sklearn_loop),
    ):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out.append(
            {"dataset": name, "trainer": label, "n_subsets": n_subsets, "median_s": float(np.median(times))}
        )
    base = out[0]["median_s"]
    for row in out:
        row["ratio_to_batched"] = row["median_s"] / base
    return out


def plot(curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(curves).groupby(["dataset", "removed", "fraction"])["accuracy"].mean().reset_index()
    names = list(dict.fromkeys(df["dataset"]))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    styles = {"lowest": ("tab:blue", "-"), "highest": ("tab:red", "--"), "random": ("gray", ":")}
    for ax, name in zip(axes[0], names):
        for order, (color, ls) in styles.items():
            d = df[(df["dataset"] == name) & (df["removed"] == order)]
            ax.plot(
                d["fraction"], d["accuracy"], color=color, ls=ls, marker="o", ms=3, label=f"{order} removed"
            )
        ax.set_title(f"EcoVal point removal: {name}")
        ax.set_xlabel("fraction of training rows removed")
        ax.set_ylabel("test accuracy (logistic regression)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="output folder for the CSVs and the PNG")
    p.add_argument("--datasets", nargs="+", default=["digits", "gaussian"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument(
        "--noise-kind",
        default="label",
        choices=["label", "clustered"],
        help="label: uniform label noise (OpenDataVal); clustered: coherent groups of wrong labels",
    )
    p.add_argument("--group-size", type=int, default=20, help="rows per wrong-label group (clustered noise)")
    p.add_argument("--utility", default="accuracy", choices=["accuracy", "log_likelihood"])
    p.add_argument("--extrinsic-weight", type=float, default=0.1)
    p.add_argument("--harm-weight", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--speed", action="store_true", help="only time batched vs looped trainings (digits)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import pandas as pd

    if args.speed:
        args.out.mkdir(parents=True, exist_ok=True)
        speed_df = pd.DataFrame(speed())
        speed_df.to_csv(args.out / "ecoval_speed.csv", index=False)
        print(speed_df.to_string(float_format="%.2f"))
        return
    kwargs = {
        "utility": args.utility,
        "extrinsic_weight": args.extrinsic_weight,
        "harm_weight": args.harm_weight,
    }
    runs, curves = run(args.datasets, args.seeds, args.noise, kwargs, args.noise_kind, args.group_size)
    args.out.mkdir(parents=True, exist_ok=True)
    runs_df = pd.DataFrame(runs)
    runs_df.to_csv(args.out / "ecoval_runs.csv", index=False)
    curves_df = pd.DataFrame(curves)
    curves_df.to_csv(args.out / "ecoval_removal.csv", index=False)
    plot(curves, args.out / "ecoval_removal.png")
    cols = ["f1", "auroc", "auroc_intrinsic", "auroc_extrinsic", "wall_s", "n_trainings", "accuracy_all"]
    print("\nmedian over seeds:\n" + runs_df.groupby("dataset")[cols].median().to_string(float_format="%.3f"))
    table = curves_df.groupby(["dataset", "removed", "fraction"])["accuracy"].mean().unstack("fraction")
    print("\nmean test accuracy after removal:\n" + table.to_string(float_format="%.3f"))
    print(f"\nwritten to {args.out} ({' '.join(sys.argv)})")


if __name__ == "__main__":
    main()
