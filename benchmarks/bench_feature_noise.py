"""Why label-based valuation misses feature noise: how much do the corrupted rows look (and act) wrong?

For each dataset and seed, the protocol's feature-noise split (x += N(0, 1) on 10% of the training
rows, features standardised first) is compared with its clean twin (same rows, no noise):

- ``still_correct``: share of corrupted rows that a logistic regression trained on the CLEAN rows
  still classifies as their (unchanged) label: such a row is a plausible, correctly labelled
  example, so any signal read through the label (loss, margin, NDDV, LossVal) has nothing to see;
- ``moved``: mean distance the noise moved a corrupted row, in units of the mean distance of a
  clean row to its nearest neighbour (what geometry-based methods, trees and KNN, can see);
- ``acc_all`` / ``acc_drop_noisy`` / ``acc_drop_random``: test accuracy of a logistic regression
  trained on all rows, without the corrupted rows, and without as many random rows: how much
  value removing them recovers (the removal-curve view of the same question).

Usage::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_feature_noise --seeds 0 1 2 --out feature_noise.csv
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

from lightning_dv.datasets import make_split

DATASETS = ("digits", "breast_cancer", "wine", "iris", "gaussian", "classification", "overlap", "moons")


def _acc(x, y, xt, yt) -> float:
    return float(LogisticRegression(max_iter=1000).fit(x, y).score(xt, yt))


def one(name: str, seed: int, noise: float) -> dict:
    s = make_split(name, noise=noise, noise_kind="feature", seed=seed)
    c = make_split(name, noise=0.0, seed=seed)  # same rows, features before noise
    noisy = s.noisy
    clean = np.setdiff1d(np.arange(len(s.y_train)), noisy)
    lr = LogisticRegression(max_iter=1000).fit(c.x_train[clean], c.y_train[clean])
    still = float((lr.predict(s.x_train[noisy]) == s.y_train[noisy]).mean())
    nn = NearestNeighbors(n_neighbors=2).fit(c.x_train[clean])
    spacing = float(nn.kneighbors(c.x_train[clean])[0][:, 1].mean())
    moved = float(np.linalg.norm(s.x_train[noisy] - c.x_train[noisy], axis=1).mean() / spacing)
    rng = np.random.default_rng(seed)
    rand = np.setdiff1d(np.arange(len(s.y_train)), rng.choice(len(s.y_train), len(noisy), replace=False))
    return {
        "dataset": name,
        "seed": seed,
        "still_correct": still,
        "moved": moved,
        "acc_all": _acc(s.x_train, s.y_train, s.x_test, s.y_test),
        "acc_drop_noisy": _acc(s.x_train[clean], s.y_train[clean], s.x_test, s.y_test),
        "acc_drop_random": _acc(s.x_train[rand], s.y_train[rand], s.x_test, s.y_test),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--out", default="feature_noise.csv")
    args = p.parse_args(argv)
    df = pd.DataFrame([one(d, s, args.noise) for d in args.datasets for s in args.seeds])
    df.to_csv(args.out, index=False)
    table = df.groupby("dataset", sort=False).mean(numeric_only=True).drop(columns="seed")
    table.loc["mean"] = table.mean()
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
