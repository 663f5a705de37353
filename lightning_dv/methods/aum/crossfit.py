"""Out-of-fold margins: AUM's in-training margin combined with the margin of models that never saw the row.

The rows are split into ``K`` stratified folds; for each fold ``f`` a fresh copy of the model
is trained on the other ``K - 1`` folds (a real ``Trainer.fit``) with early stopping on the
held-out fold's loss (``patience`` epochs, at most ``max_epochs``), and every held-out row gets
the eval-mode margin of that model at its best epoch::

    o_i = z_{y_i}(x_i) - max_{k != y_i} z_k(x_i)    (logits of the fold model that held i out, best epoch)
    c_i = a_i / s_a + w * o_i / s_o                 (a: AUM's mean in-training margin, s: 1.4826 MAD)
    value_i = calibrate(c)(i), flagged below the gate as AUM (c_i < -0.1 s_c)

Each part is divided by its robust spread but not centred, so 0 keeps its meaning ("the assigned
label loses") and AUM's gate applies to the sum. Why: a held-out row cannot be memorised, which is
the signal of confident learning (Northcutt, Jiang, Chuang, JAIR 2021: out-of-fold probabilities)
with the user's model class instead of a logistic one. Measured on the selection seeds
(benchmarks/README.md, section 2e): the out-of-fold margin alone ranks WORSE than the in-training
AUM (a model trained on 80% of the rows learns the boundary less well than AUM's window sees it);
the sum with ``w = 0.5`` is ahead of AUM alone in every column by a small margin, for ``K`` extra fits.
The cross-fit needs to train the model ``K`` more times, so it is offered where the library trains
the model (``valuate(..., folds=5)``, the benchmark); the ``DataValuation`` callback rides on the
user's single fit and cannot cross-fit it.

Example:
    >>> import torch
    >>> a = torch.tensor([-2.0, 1.0, 2.0, 3.0, 2.5, 1.5, 2.0, -0.5])
    >>> o = torch.tensor([-1.0, 0.5, 1.0, 2.0, 1.5, 1.0, 1.2, 0.8])
    >>> from lightning_dv.metrics import two_means_split
    >>> two_means_split(combine_margins(a, o)).tolist()  # row 7: AUM < 0 but the held-out model agrees
    [True, False, False, False, False, False, False, False]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from lightning.pytorch import Callback
from torch import Tensor
from typing_extensions import override

from lightning_dv.methods.aum.combine import aum_margins_in_row_order, combine_margins, with_second_opinion
from lightning_dv.methods.aum.objective import assigned_margin
from lightning_dv.methods.calibration import GATE_TOLERANCE
from lightning_dv.values import DataValues

__all__ = ["OOF_WEIGHT", "OutOfFold", "combine_margins", "out_of_fold_margins", "with_out_of_fold"]

#: Weight of the out-of-fold margin in the sum (chosen on the selection seeds among 0.25-2).
OOF_WEIGHT = 0.5


@dataclass
class OutOfFold:
    """Result of :func:`out_of_fold_margins`.

    Attributes:
        margins: ``(N,)`` held-out margin of every row at its fold model's best epoch.
        fold: ``(N,)`` fold that held each row out (its score comes from the model of that fold).
        best_epochs: Best epoch (1-based) of each fold model.
        epochs_run: Epochs each fold model trained before early stopping.
        trained_rows: Rows each fold model trained on (``[f]`` never meets ``fold == f``).
    """

    margins: np.ndarray
    fold: np.ndarray
    best_epochs: list[int] = field(default_factory=list)
    epochs_run: list[int] = field(default_factory=list)
    trained_rows: list[np.ndarray] = field(default_factory=list)


def make_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold of every row: stratified where every class has ``folds`` rows, else shuffled evenly.

    Example:
        >>> np.bincount(make_folds(np.array([0, 1] * 10), folds=5, seed=0)).tolist()
        [4, 4, 4, 4, 4]
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    out = np.empty(len(labels), dtype=np.int64)
    if np.unique(labels, return_counts=True)[1].min() >= folds:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
        for f, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
            out[held] = f
    else:
        out[:] = np.random.default_rng(seed).permutation(np.arange(len(labels)) % folds)
    return out


def check_folds(folds: object, num_rows: int) -> int:
    """``folds`` as an int in ``[2, num_rows // 2]``, or an error naming the argument."""
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(
            f"`folds` must be an integer >= 2 (5 is usual) or None (no cross-fit); got {folds!r}."
        )
    if folds > num_rows // 2:
        raise ValueError(
            f"`folds={folds}` leaves fewer than 2 rows per fold with {num_rows} rows; use fewer folds."
        )
    return int(folds)


def out_of_fold_margins(
    make_model: Callable[[], object],
    features: np.ndarray,
    labels: np.ndarray,
    folds: int = 5,
    max_epochs: int = 60,
    patience: int = 10,
    batch_size: int = 32,
    seed: int = 0,
    trainer_kwargs: dict | None = None,
    progress: bool = False,
) -> OutOfFold:
    """Held-out margins from ``folds`` fits of ``make_model()``, each on the other folds.

    ``make_model()`` returns a fresh LightningModule that trains on ``(row, x, y)`` batches and
    logs ``val_loss`` in ``validation_step`` (e.g.
    :class:`~lightning_dv.modules.ValidatedMLPClassifier` with ``valuate=False``). Each fit has the
    held-out fold as its validation loader and ``EarlyStopping(monitor="val_loss",
    patience=patience)``; the margins kept are those at the lowest held-out loss.

    Example:
        >>> from lightning_dv.modules import ValidatedMLPClassifier
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(60, 2)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int64)
        >>> oof = out_of_fold_margins(lambda: ValidatedMLPClassifier(2, 2, valuate=False), x, y, folds=3, max_epochs=5)
        >>> oof.margins.shape, sorted(set(oof.fold.tolist()))
        ((60,), [0, 1, 2])
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_dv.data import IndexedDataset
    from lightning_dv.progress import quiet_lightning, quiet_trainer_settings

    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    folds = check_folds(folds, len(y))
    for name, v in (("max_epochs", max_epochs), ("patience", patience)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"`{name}` must be an integer >= 1; got {v!r}.")
    fold = make_folds(y.numpy(), folds, seed)
    out = OutOfFold(np.zeros(len(y), dtype=np.float32), fold)
    for f in range(folds):
        train_rows, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        L.seed_everything(seed * 1000 + f, verbose=False)
        model = make_model()
        keep = _BestHeldOut(x[held], y[held])
        stop = EarlyStopping(monitor="val_loss", patience=patience, mode="min")
        settings = {
            **quiet_trainer_settings(max_epochs=max_epochs, enable_progress_bar=progress),
            **(trainer_kwargs or {}),
        }
        train = torch.utils.data.Subset(IndexedDataset(TensorDataset(x, y)), train_rows.tolist())
        loader = DataLoader(
            train,
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed * 1000 + f),
        )
        with quiet_lightning(".*LeafSpec.*"):
            trainer = L.Trainer(callbacks=[keep, stop], **settings)
            trainer.fit(
                model, loader, DataLoader(TensorDataset(x[held], y[held]), batch_size=max(batch_size, 256))
            )
        out.margins[held] = keep.margins
        out.best_epochs.append(keep.best_epoch)
        out.epochs_run.append(int(trainer.current_epoch))
        out.trained_rows.append(train_rows)
        if progress:
            print(
                f"out-of-fold {f + 1}/{folds}: best held-out loss at epoch {keep.best_epoch} of {trainer.current_epoch}"
            )
    return out


def with_out_of_fold(
    values: DataValues,
    make_model: Callable[[], object],
    features: np.ndarray,
    labels: np.ndarray,
    folds: int = 5,
    weight: float = OOF_WEIGHT,
    gate: float | None = 0.0,
    gate_tolerance: float = GATE_TOLERANCE,
    **fit_kwargs,
) -> DataValues:
    """AUM's ``values`` (with their ``aum_margin`` column) combined with out-of-fold margins.

    Runs :func:`out_of_fold_margins` (``fit_kwargs``: ``max_epochs``, ``patience``, ``batch_size``,
    ``seed``, ``trainer_kwargs``, ``progress``) and returns the values of :func:`combine_margins`,
    one per row in row order, with the columns ``aum_margin``, ``aum_value`` (AUM alone),
    ``oof_margin`` and ``oof_fold`` (the fold whose model, trained without the row, scored it).
    """
    order, margin = aum_margins_in_row_order(values, len(labels))
    oof = out_of_fold_margins(make_model, features, labels, folds=folds, **fit_kwargs)
    return with_second_opinion(
        values,
        order,
        margin,
        oof.margins,
        weight,
        gate,
        gate_tolerance,
        columns={"oof_margin": oof.margins, "oof_fold": oof.fold},
        metadata={
            "folds": int(folds),
            "oof_weight": float(weight),
            "oof_best_epochs": oof.best_epochs,
            "oof_epochs_run": oof.epochs_run,
        },
    )


class _BestHeldOut(Callback):
    """Keeps the held-out rows' eval-mode margins at the epoch of the lowest logged ``val_loss``."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y, self.best, self.best_epoch = x, y, float("inf"), 0
        self.margins = np.zeros(len(y), dtype=np.float32)

    @override
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        loss = float(trainer.callback_metrics["val_loss"])
        if loss < self.best:
            self.best, self.best_epoch = loss, trainer.current_epoch + 1
            training = pl_module.training
            pl_module.eval()
            with torch.no_grad():
                out = pl_module(self.x.to(pl_module.device))
            pl_module.train(training)
            self.margins = assigned_margin(out, self.y.to(out.device)).cpu().numpy()
