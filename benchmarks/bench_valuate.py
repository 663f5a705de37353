"""Choose `lightning_dv.valuate`'s default method: each method, called exactly as a user would.

Every method runs through ``valuate(x_train, noisy_string_labels, method=...)`` with no
validation set (valuate's own hold-out), on the bundled datasets with 10% flipped labels. The
choice is made on the SELECTION seeds; the REPORTED seeds are disjoint. Metrics: F1 of
``values.flagged`` (the rows the method itself flags) against the flipped rows, and AUROC.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_valuate --out benchmarks/results/valuate_runs.csv
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lightning_dv.datasets import make_split
from lightning_dv.metrics import detection_auroc
from lightning_dv.valuate import METHODS, valuate

DATASETS = ("digits", "breast_cancer", "wine", "iris", "gaussian")
SELECTION_SEEDS = (100, 101)
REPORTED_SEEDS = (0, 1, 2)


def flagged_f1(flagged: np.ndarray, noisy: np.ndarray) -> float:
    truth = np.zeros(len(flagged), dtype=bool)
    truth[noisy] = True
    return float(2 * (flagged & truth).sum() / max(flagged.sum() + truth.sum(), 1))


def run(
    seeds, datasets=DATASETS, methods=tuple(METHODS), noise: float = 0.1, method_kwargs: dict | None = None
) -> list[dict]:
    """One row per (dataset, seed, method); ``method_kwargs`` go to every ``valuate`` call (e.g. ``folds=5``)."""
    rows = []
    for name in datasets:
        for seed in seeds:
            split = make_split(name, noise=noise, seed=seed)
            labels = np.array([f"class_{c}" for c in split.y_train])
            for method in methods:
                start = time.perf_counter()
                values = valuate(split.x_train, labels, method=method, seed=seed, **(method_kwargs or {}))
                rows.append(
                    {
                        "dataset": name,
                        "seed": seed,
                        "method": method,
                        "flagged_f1": flagged_f1(values.flagged, split.noisy),
                        "auroc": detection_auroc(values.values, split.noisy),
                        "flagged": int(values.flagged.sum()),
                        "noisy": len(split.noisy),
                        "seconds": time.perf_counter() - start,
                    }
                )
                print(rows[-1], flush=True)
    return rows


def summary(df) -> str:
    g = df.groupby("method")[["flagged_f1", "auroc", "seconds"]].mean()
    lines = ["| method | flagged F1 | AUROC | seconds per call |", "|---|---|---|---|"]
    for m, r in g.sort_values("flagged_f1", ascending=False).iterrows():
        lines.append(f"| {m} | {r.flagged_f1:.3f} | {r.auroc:.3f} | {r.seconds:.2f} |")
    return "\n".join(lines)


def main() -> None:
    import pandas as pd

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_valuate", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", default="valuate_runs.csv", help="CSV of every run (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    df = pd.DataFrame(run(SELECTION_SEEDS) + run(REPORTED_SEEDS))
    df.to_csv(args.out, index=False)
    for label, seeds in (("selection", SELECTION_SEEDS), ("reported", REPORTED_SEEDS)):
        print(f"\n{label} seeds {seeds}:\n" + summary(df[df.seed.isin(seeds)]))


if __name__ == "__main__":
    main()
