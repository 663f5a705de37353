"""Does valuation harm the model? Test accuracy with the callback against the same plain fit.

Two parts, both on identical splits and seeds for every entry:

``issue``: the setting of issue 10: digits (as 1x8x8 images for a small CNN, flat for a 64-hidden
MLP), 10% flipped labels, 1000 training rows, Adam lr 1e-2, batch 32, 30 epochs; the plain fit
against each objective at its defaults and in each ``model_loss`` mode.

``protocol``: the OpenDataVal protocol sets at 10% and 20% label noise; per method the model's
test accuracy (MLP(64), the benchmark's model) and 2-means F1 / AUROC / time of the values, with
the plain fit and the faithful LossVal loop (benchmarks/lossval_reference.py) alongside.

Run: OMP_NUM_THREADS=1 python -m benchmarks.bench_model_safety protocol --seeds 0 1 --out DIR
     OMP_NUM_THREADS=1 python -m benchmarks.bench_model_safety issue --seeds 0 1 --out DIR
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch import nn

from benchmarks.fitting import indexed_loader, quiet_trainer
from benchmarks.lossval_reference import paper_mlp
from benchmarks.protocol import evaluate
from benchmarks.registry import get_method, quiet_lightning
from lightning_dv import NDDV, DataValuation, LossVal
from lightning_dv.datasets import Split, make_split
from lightning_dv.modules import MLPClassifier

#: (objective, model_loss) entries; ``None`` is the plain fit.
ENTRIES = {
    "plain fit": (None, None, 30),
    "lossval (plain)": ("lossval", "plain", 30),
    "lossval (plain, final weights)": ("lossval_weights", "plain", 30),
    "lossval (reweight)": ("lossval", "reweight", 30),
    "lossval (objective)": ("lossval", "objective", 30),
    "lossval (objective, user CE = before)": ("lossval_user", "objective", 30),
    "nddv (plain)": ("nddv", "plain", 10),
    "nddv (reweight)": ("nddv", "reweight", 10),
    "nddv (objective)": ("nddv", "objective", 10),
}


class SmallCNN(MLPClassifier):
    """Two 3x3 convolutions (16, 32 channels) and a linear head on 1x8x8 digits."""

    def __init__(self, num_classes: int, lr: float = 0.01) -> None:
        super().__init__(64, num_classes, hidden=0, lr=lr)
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 16, num_classes),
        )


class PaperMLP(MLPClassifier):
    """The LossVal paper's 5-layer, 100-hidden MLP (logits out; the reference loop adds the softmax)."""

    def __init__(self, in_features: int, num_classes: int, lr: float = 0.01) -> None:
        super().__init__(in_features, num_classes, hidden=0, lr=lr)
        self.net = paper_mlp(in_features, num_classes)[:-1]


class SoftmaxMLP(MLPClassifier):
    """MLP(64) writing the same cross-entropy as softmax + -log(p + 1e-8) (the LossVal paper's form)."""

    def per_sample_loss(self, outputs, targets):
        p = torch.softmax(outputs, dim=1).gather(1, targets.reshape(-1, 1)).squeeze(1)
        return -torch.log(p + 1e-8)


def loss_form_rows(split: Split, seed: int) -> list[dict]:
    """LossVal's values with the loss written two ways, before (formula on the user's loss) and after (defaults)."""
    rows = []
    for when, kw, mode in (
        ("before", {"task_loss": "user", "signal": "weights"}, "objective"),
        ("after", {}, None),
    ):
        for form, cls in (
            ("logits + F.cross_entropy", MLPClassifier),
            ("softmax + -log(p + 1e-8)", SoftmaxMLP),
        ):
            L.seed_everything(seed, verbose=False)
            model = cls(split.x_train.shape[1], split.num_classes, hidden=64)
            cb = DataValuation(LossVal(validation=(split.x_valid, split.y_valid), **kw), model_loss=mode)
            with quiet_lightning():
                quiet_trainer(30, callbacks=[cb]).fit(
                    model, indexed_loader(split.x_train, split.y_train, seed=seed)
                )
            ev = evaluate(cb.values.values, split, ())
            rows.append(
                {
                    "entry": f"{when}: {form}",
                    "f1": ev["f1"],
                    "auroc": ev["auroc"],
                    "test_acc": float("nan"),
                    "wall_s": 0.0,
                }
            )
    return rows


def _objective(kind: str, split: Split, seed: int):
    if kind == "lossval":
        return LossVal(validation=(split.x_valid, split.y_valid))
    if kind == "lossval_weights":  # the values before the trajectory signal: the final weights
        return LossVal(validation=(split.x_valid, split.y_valid), signal="weights")
    if kind == "lossval_user":  # yesterday's default: the formula on the user's loss, final weights
        return LossVal(validation=(split.x_valid, split.y_valid), task_loss="user", signal="weights")
    return NDDV(seed=seed)


def run_entry(split: Split, seed: int, entry: str, model_fn, epochs_override: int | None = None) -> dict:
    kind, mode, epochs = ENTRIES[entry]
    epochs = epochs_override or epochs
    L.seed_everything(seed, verbose=False)
    model = model_fn(split)
    callbacks = [] if kind is None else [DataValuation(_objective(kind, split, seed), model_loss=mode)]
    if kind is None:
        model.valuate = False
    t0 = time.perf_counter()
    with quiet_lightning():
        trainer = quiet_trainer(epochs, callbacks=callbacks)
        trainer.fit(model, indexed_loader(split.x_train, split.y_train, seed=seed))
    wall = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        pred = model(torch.as_tensor(split.x_test, dtype=torch.float32)).argmax(1).numpy()
    row = {"entry": entry, "epochs": epochs, "test_acc": float((pred == split.y_test).mean()), "wall_s": wall}
    if callbacks:
        row.update({k: evaluate(callbacks[0].values.values, split, ())[k] for k in ("f1", "auroc")})
        row["final_train_loss"] = float(trainer.callback_metrics.get("train_loss", float("nan")))
    return row


def run_reference(split: Split, seed: int) -> dict:
    t0 = time.perf_counter()
    dv = get_method("lossval_reference").fn(split, seed)
    wall = time.perf_counter() - t0
    return {
        "entry": "lossval_reference (paper loop, 5x100 MLP)",
        "epochs": 30,
        "test_acc": dv.metadata["test_accuracy"],
        "wall_s": wall,
        **{k: evaluate(dv.values, split, ())[k] for k in ("f1", "auroc")},
    }


def main(argv=None) -> int:
    import pandas as pd

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("part", choices=["issue", "protocol", "lossform"])
    p.add_argument("--datasets", nargs="+", default=["digits", "breast_cancer", "gaussian"])
    p.add_argument("--noise", nargs="+", type=float, default=[0.1, 0.2])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--entries", nargs="+", default=list(ENTRIES))
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--model", choices=["mlp64", "paper"], default="mlp64", help="protocol part: the model")
    p.add_argument("--out", default="bench_results/model_safety")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    if args.part == "issue":
        models = {
            "MLP(64)": lambda s: MLPClassifier(64, s.num_classes, hidden=64),
            "CNN": lambda s: SmallCNN(s.num_classes),
        }
        settings = [("digits", 0.1, seed, m) for seed in args.seeds for m in models]
        split_kw = {"n_train": 1000, "n_valid": 100, "n_test": 600}
    else:
        models = {
            "MLP(64)": lambda s: MLPClassifier(s.x_train.shape[1], s.num_classes, hidden=64),
            "5x100 MLP": lambda s: PaperMLP(s.x_train.shape[1], s.num_classes),
        }
        name = "MLP(64)" if args.model == "mlp64" else "5x100 MLP"
        settings = [(d, r, seed, name) for d in args.datasets for r in args.noise for seed in args.seeds]
        split_kw = {}
    if args.part == "lossform":
        models, split_kw = {}, {}
        for dataset in args.datasets:
            for seed in args.seeds:
                split = make_split(dataset, noise=args.noise[0], seed=seed)
                for row in loss_form_rows(split, seed):
                    rows.append(
                        {"dataset": dataset, "noise": args.noise[0], "seed": seed, "model": "MLP(64)", **row}
                    )
                    print(rows[-1], flush=True)
        settings = []
    for dataset, rate, seed, model_name in settings:
        split = make_split(dataset, noise=rate, seed=seed, **split_kw)
        todo = [e for e in args.entries if e in ENTRIES]
        for entry in todo:
            epochs = 30 if args.part == "issue" else None
            row = run_entry(split, seed, entry, models[model_name], epochs)
            rows.append({"dataset": dataset, "noise": rate, "seed": seed, "model": model_name, **row})
            print(rows[-1], flush=True)
        if not args.no_reference and args.part == "protocol":
            rows.append(
                {
                    "dataset": dataset,
                    "noise": rate,
                    "seed": seed,
                    "model": "5x100 MLP",
                    **run_reference(split, seed),
                }
            )
            print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / f"{args.part}_runs.csv", index=False)
    summary = df.groupby(["model", "noise", "entry"], sort=False)[
        [c for c in ("test_acc", "f1", "auroc", "wall_s") if c in df]
    ].mean()
    text = (
        f"Command: `python -m benchmarks.bench_model_safety {' '.join(sys.argv[1:])}`\n\n"
        + summary.round(3).to_string()
    )
    (out / f"{args.part}_summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
