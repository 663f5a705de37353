"""Grouped corruption: a whole cluster of similar rows mislabelled together (a bad data source).

The scenario EcoVal's cluster term is made for. For each dataset and seed, the training rows are
clustered by k-means on their features alone (``--groups`` clusters, the "sources"); whole
clusters, drawn at random, are corrupted until ``--noise`` of the rows are: every row of a
corrupted cluster moves its label to the SAME other class (a systematic labelling error of one
source). The validation set keeps its clean labels (a trusted reference). Each method values the
training rows; 2-means F1 and AUROC are measured against the corrupted rows. EcoVal is reported
three ways from one fit: the total value, its intrinsic term (neighbour agreement) alone and its
extrinsic (cluster, production-function) term alone.

Usage::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_grouped --datasets digits breast_cancer gaussian moons \
        --seeds 0 1 2 --out grouped.csv
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from benchmarks.registry import get_method, quiet_lightning
from lightning_dv.datasets import Split, make_split
from lightning_dv.metrics import detection_auroc, kmeans_f1

METHODS = ("loss_only", "knn_shapley", "data_oob_tree", "aum", "nddv", "ecoval")


def grouped_split(name: str, noise: float, seed: int, groups: int) -> Split:
    """The protocol's clean split with whole k-means clusters of training rows relabelled together."""
    s = make_split(name, noise=0.0, seed=seed)
    rng = np.random.default_rng(seed + 7919)
    cluster = KMeans(groups, n_init=3, random_state=seed).fit_predict(s.x_train)
    target, chosen = int(round(noise * len(s.y_train))), []
    for k in rng.permutation(groups):
        if sum(int((cluster == c).sum()) for c in chosen) >= target:
            break
        chosen.append(int(k))
    y = s.y_train.copy()
    for k in chosen:
        rows = np.flatnonzero(cluster == k)
        y[rows] = (y[rows] + int(rng.integers(1, s.num_classes))) % s.num_classes
    noisy = np.flatnonzero(y != s.y_train)
    return replace(s, y_train=y, noisy=noisy.astype(np.int64), name=f"{name}_grouped")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["digits", "breast_cancer", "gaussian", "moons"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--groups", type=int, default=20)
    p.add_argument(
        "--scenario",
        choices=("grouped", "uniform"),
        default="grouped",
        help="grouped: whole clusters relabelled; uniform: the protocol's label noise (rows drawn independently)",
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="grouped.csv")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.datasets:
        for seed in args.seeds:
            if args.scenario == "grouped":
                split = grouped_split(name, args.noise, seed, args.groups)
            else:
                split = make_split(name, noise=args.noise, seed=seed)
            for method in args.methods:
                start = time.perf_counter()
                with quiet_lightning():
                    dv = get_method(method).fn(split, seed)
                seconds = time.perf_counter() - start
                scores = {method: dv.values}
                if method == "ecoval":
                    scores["ecoval_intrinsic"] = np.asarray(dv.columns["intrinsic"])
                    scores["ecoval_extrinsic"] = np.asarray(dv.columns["extrinsic"])
                for m, v in scores.items():
                    v = np.asarray(v, dtype=np.float64)
                    rows.append(
                        {
                            "dataset": name,
                            "scenario": args.scenario,
                            "seed": seed,
                            "method": m,
                            "n_noisy": len(split.noisy),
                            "f1": kmeans_f1(v, split.noisy),
                            "auroc": detection_auroc(v, split.noisy),
                            "seconds": seconds,
                        }
                    )
                    print(
                        f"{name} seed {seed} {m}: F1 {rows[-1]['f1']:.3f} AUROC {rows[-1]['auroc']:.3f}",
                        flush=True,
                    )
            pd.DataFrame(rows).to_csv(args.out, index=False)
    df = pd.DataFrame(rows)
    print(df.pivot_table(index="method", columns="dataset", values="f1").round(3).to_string())
    print(df.groupby("method")[["f1", "auroc"]].mean().round(3).to_string())


if __name__ == "__main__":
    main()
