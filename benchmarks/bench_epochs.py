"""Training-length robustness: the values of ONE fit read at several epochs, for every training-time method.

For each dataset, noise level and seed, one fit per training-time method (AUM, NDDV, LossVal; the
benchmark's MLP(64), Adam 0.01, batch 32) runs ``--epochs`` epochs; the callback's per-epoch
trajectory holds the exported values after every epoch, and the script reads 2-means F1 and AUROC
at each epoch of ``--read`` (so "10 vs 30 vs 100 epochs" compares one fit, not three). With
``--raw DIR`` it also saves the per-epoch per-row signals (margin, state x costate value, weight)
so aggregation and calibration choices can be compared offline without refitting.

Usage::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_epochs --datasets digits breast_cancer gaussian \
        --noise 0.1 --seeds 100 101 --epochs 100 --read 10 30 100 --out epochs.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.fitting import indexed_loader, quiet_trainer
from benchmarks.registry import quiet_lightning
from lightning_dv import DataValuation
from lightning_dv.datasets import make_split
from lightning_dv.metrics import detection_auroc, kmeans_f1
from lightning_dv.modules import MLPClassifier, ValidatedMLPClassifier

METHODS = ("aum", "aum_val", "nddv", "lossval")


def make_objective(method: str, split, seed: int, window: int | None = 10):
    if method == "aum":
        from lightning_dv.methods.aum import AUM

        return AUM(window=window)
    if method == "aum_val":  # the window runs on while the validation loss falls (up to 30 epochs)
        from lightning_dv.methods.aum import AUM

        return AUM(window=window, monitor="val_loss")
    if method == "nddv":
        from lightning_dv.methods.nddv import NDDV

        return NDDV(seed=seed, window=window)
    if method == "lossval":
        from lightning_dv.methods.lossval import LossVal

        return LossVal(validation=(split.x_valid, split.y_valid))
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}.")


class SignalRecorder(Callback):
    """Per-epoch per-row raw signals of the objective's state (after the DataValuation callback's epoch end)."""

    def __init__(self, valuation: DataValuation) -> None:
        self.valuation = valuation
        self.signals: dict[str, list[np.ndarray]] = {}
        self._prev_total: torch.Tensor | None = None

    def _add(self, key: str, x: torch.Tensor) -> None:
        self.signals.setdefault(key, []).append(x.detach().float().cpu().numpy().copy())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        state = self.valuation._state(pl_module)
        if hasattr(state, "margin"):  # AUM: this epoch's mean margin = change of the running total
            total = state.margin.total.detach().clone()
            prev = torch.zeros_like(total) if self._prev_total is None else self._prev_total
            self._add("margin", total - prev)
            self._prev_total = total
        if hasattr(state, "stats"):  # NDDV: latest epoch's state x costate value, and the weights
            self._add("nddv_value", state.raw_value)
            self._add("nddv_weight", state.weight)  # softplus: the current weights (no per-epoch copy kept)
        if hasattr(state, "trajectory"):  # LossVal: this epoch's mean standardised descent, the weights
            total = state.trajectory.total.detach().clone()
            prev = torch.zeros_like(total) if self._prev_total is None else self._prev_total
            self._add("lossval_descent", total - prev)
            self._prev_total = total
            self._add("lossval_weight", state.weights.all())


def run_one(split, method: str, seed: int, epochs: int, window: int | None = 10):
    L.seed_everything(seed, verbose=False)
    validate = method == "aum_val"
    model = (ValidatedMLPClassifier if validate else MLPClassifier)(
        split.x_train.shape[1], split.num_classes, hidden=64
    )
    with quiet_lightning():
        valuation = DataValuation(make_objective(method, split, seed, window))
        recorder = SignalRecorder(valuation)
        trainer = quiet_trainer(epochs, callbacks=[valuation, recorder])
        start = time.perf_counter()
        val = indexed_loader(split.x_valid, split.y_valid, shuffle=False) if validate else None
        trainer.fit(model, indexed_loader(split.x_train, split.y_train, seed=seed), val)
        seconds = time.perf_counter() - start
    traj = np.asarray(valuation.values.trajectory)
    return traj, {k: np.stack(v) for k, v in recorder.signals.items()}, seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["digits", "breast_cancer", "gaussian"])
    p.add_argument("--noise", nargs="+", type=float, default=[0.1])
    p.add_argument("--seeds", nargs="+", type=int, default=[100, 101])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--read", nargs="+", type=int, default=[10, 30, 100])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="epochs.csv")
    p.add_argument(
        "--window", type=int, default=10, help="AUM/NDDV window in epochs (0: all epochs, for raw signals)"
    )
    p.add_argument("--raw", default=None, help="folder for the per-epoch raw signals (.npz per fit)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.datasets:
        for noise in args.noise:
            for seed in args.seeds:
                split = make_split(name, noise=noise, seed=seed)
                for method in args.methods:
                    traj, signals, seconds = run_one(split, method, seed, args.epochs, args.window or None)
                    if args.raw:
                        Path(args.raw).mkdir(parents=True, exist_ok=True)
                        np.savez_compressed(
                            Path(args.raw) / f"{name}_{noise:g}_{seed}_{method}.npz",
                            trajectory=traj,
                            noisy=split.noisy,
                            y=split.y_train,
                            **signals,
                        )
                    for e in args.read:
                        if e > traj.shape[0]:
                            continue
                        v = traj[e - 1]
                        rows.append(
                            {
                                "dataset": name,
                                "noise": noise,
                                "seed": seed,
                                "method": method,
                                "epoch": e,
                                "f1": kmeans_f1(v, split.noisy),
                                "auroc": detection_auroc(v, split.noisy),
                                "seconds": seconds,
                            }
                        )
                        print(
                            f"{name:14s} {noise:.1f} seed={seed} {method:8s} epoch {e:3d} "
                            f"F1={rows[-1]['f1']:.3f} AUROC={rows[-1]['auroc']:.3f} ({seconds:.0f}s fit)",
                            flush=True,
                        )
                    pd.DataFrame(rows).to_csv(args.out, index=False)
    df = pd.DataFrame(rows)
    print(df.pivot_table(index="method", columns="epoch", values=["f1", "auroc"]).round(3).to_string())


if __name__ == "__main__":
    main()
