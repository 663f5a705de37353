"""`lightning-dv demo`: LossVal on scikit-learn's digits with injected label noise, end to end."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_dv.callbacks import DataValuation
from lightning_dv.data import IndexedDataset
from lightning_dv.datasets import make_split
from lightning_dv.methods.lossval import LossVal
from lightning_dv.metrics import detection_auroc, kmeans_f1, two_means_split
from lightning_dv.modules import MLPClassifier
from lightning_dv.values import DataValues


def plot_values_2d(
    x: np.ndarray, values: DataValues, path: str | Path, noisy: np.ndarray | None = None
) -> Path:
    """Save a 2-D picture of the data (PCA) with every point coloured by its value.

    Injected noisy rows, when known, are circled in red.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    xy = PCA(n_components=2, random_state=0).fit_transform(np.asarray(x, dtype=np.float64))
    v = values.sorted_by_row().values
    fig, ax = plt.subplots(figsize=(7, 6))
    lo, hi = np.percentile(v, [2, 98])
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=v, cmap="viridis", s=14, vmin=lo, vmax=hi)
    if noisy is not None and len(noisy):
        ax.scatter(
            xy[noisy, 0],
            xy[noisy, 1],
            facecolors="none",
            edgecolors="red",
            s=60,
            linewidths=1.0,
            label="injected label error",
        )
        ax.legend(loc="best")
    fig.colorbar(sc, ax=ax, label="data value (higher = more valuable)")
    ax.set_title(f"{values.method}: training rows coloured by value (PCA projection)")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(
    out_dir: str | Path = "demo_output",
    noise: float = 0.1,
    epochs: int = 30,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Train an MLP on digits with ``noise`` label noise while LossVal values every row.

    Writes TensorBoard logs, the values file and a PNG under ``out_dir``; prints a report.

    Returns:
        The detection figures (``f1``, ``auroc``, ``found``, ``injected``, ``seconds``) and the
        trained model's ``test_accuracy``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = make_split("digits", noise=noise, seed=seed, n_train=1000, n_valid=100, n_test=697)
    L.seed_everything(seed, verbose=False)
    n_train = len(split.x_train)
    print(
        f"digits: {n_train} training rows, {len(split.noisy)} labels flipped on purpose ({noise:.0%}), "
        f"{len(split.x_valid)} validation rows"
    )
    try:
        import pyarrow  # noqa: F401

        values_path = out / "values.parquet"
    except ImportError:
        values_path = out / "values.csv"
    valuation = DataValuation(
        LossVal(validation=(split.x_valid, split.y_valid)), export_path=values_path, known_noisy=split.noisy
    )
    logger = TensorBoardLogger(str(out / "runs"), name="demo")
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=[valuation],
        logger=logger,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        log_every_n_steps=10,
    )
    model = MLPClassifier(split.x_train.shape[1], split.num_classes)
    ds = IndexedDataset(TensorDataset(torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)))
    loader = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    trainer.fit(model, loader)
    seconds = time.perf_counter() - start
    values = valuation.values
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(split.x_test)).argmax(1).numpy()
    test_acc = float((pred == split.y_test).mean())
    flagged = two_means_split(values.values).numpy()
    found = int(np.isin(np.flatnonzero(flagged), split.noisy).sum())
    f1, auroc = kmeans_f1(values.values, split.noisy), detection_auroc(values.values, split.noisy)
    png = plot_values_2d(split.x_train, values, out / "values_2d.png", noisy=split.noisy)
    print(f"\nLossVal valued {n_train} rows in {seconds:.1f} s ({epochs} epochs).")
    print(
        f"Flagged {int(flagged.sum())} rows as low-value; {found} of the {len(split.noisy)} injected label errors "
        f"are among them.  detection F1 {f1:.3f}   AUROC {auroc:.3f}"
    )
    print(
        f"Model test accuracy {test_acc:.3f} on {len(split.y_test)} clean test rows "
        f"(the MLP trained with the callback, model_loss={valuation.model_loss!r})."
    )
    print("\nThe 10 most suspicious rows:")
    print(f"{'row':>6} {'label':>6} {'value':>9}  injected error?")
    noisy_set = set(split.noisy.tolist())
    for row, val in zip(values.lowest(10).index, values.lowest(10).values):
        print(f"{row:>6} {int(split.y_train[row]):>6} {val:>9.4f}  {'yes' if row in noisy_set else 'no'}")
    print(f"\nvalues:      {values_path}")
    print(f"picture:     {png}")
    print(f"TensorBoard: tensorboard --logdir {out / 'runs'}")
    return {
        "f1": f1,
        "auroc": auroc,
        "found": found,
        "injected": len(split.noisy),
        "seconds": seconds,
        "test_accuracy": test_acc,
    }
