"""One callback for every whole-set method: value the training rows once, when ``fit`` starts.

A whole-set method is anything with ``fit(features, labels) -> DataValues``
(:class:`~lightning_dv.methods.base.WholeSetMethod`): the complexity gap, EcoVal and the next one.
The callback reads the training rows out of the running fit, runs the method, and shares with
:class:`~lightning_dv.callbacks.DataValuation` the ids, ``known_noisy``, the reporting path and
the export-path checks. :class:`ComplexityGapValuation` and :class:`EcoValValuation` are thin
specialisations that keep the arguments users know.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from lightning_dv.callbacks.collect import TrainingRows, collect_training_rows
from lightning_dv.callbacks.reporting import as_noisy_mask, publish
from lightning_dv.io import check_export_path, check_export_suffix, load_if_path
from lightning_dv.methods import registry
from lightning_dv.methods.base import ValuationObjective, WholeSetMethod
from lightning_dv.methods.complexity_gap import ComplexityGap
from lightning_dv.methods.ecoval import EcoVal
from lightning_dv.progress import ProgressFn
from lightning_dv.values import DataValues

if TYPE_CHECKING:
    import lightning.pytorch as pl


class WholeSetValuation(Callback):
    """Value the whole training set with ``method`` when ``fit`` starts; log and export the values.

    At ``on_fit_start`` the callback iterates the trainer's train dataloader once (batches
    ``(idx, x, y)`` from :class:`~lightning_dv.IndexedDataset`), maps the inputs through
    ``features`` under ``torch.no_grad()`` (default: flattened; or e.g. a frozen encoder), gathers
    the rows of every rank by row index and calls ``method.fit(features, labels)``; every rank
    computes the same deterministic values. The values carry the dataset's row indices and the
    user's ids (``IndexedDataset(ids=...)``), are logged once (histogram, summary scalars, and
    detection F1 / AUROC when ``known_noisy`` is given), kept in ``.values`` and written to
    ``export_path`` from rank zero. Rows the loader never yields (``drop_last``,
    ``limit_train_batches``) get no value. Each ``fit`` values the rows afresh.

    Args:
        method: A whole-set method, e.g. ``ComplexityGap()``; see :mod:`lightning_dv.methods.registry`.
        features: Maps a batch of inputs to ``(B, d)`` features. Default: the inputs flattened.
        export_path: Optional .csv / .parquet / .npz destination, checked here and at setup.
        known_noisy: Optional indices or boolean mask of rows known to be corrupted (benchmarks).
        prefix: Tag prefix; the data is logged under ``{prefix}/{method.name}``.
        feature_dtype: dtype of the features handed to the method.

    Example:
        >>> cb = WholeSetValuation(ComplexityGap(seed=0), export_path="cg.csv", known_noisy=[3, 7])
        >>> cb.prefix
        'data_values/complexity_gap'
    """

    def __init__(
        self,
        method: WholeSetMethod,
        features: Callable[[Tensor], Tensor] | None = None,
        export_path: str | os.PathLike | None = None,
        known_noisy: Any = None,
        prefix: str = "data_values",
        feature_dtype: torch.dtype = torch.float64,
    ) -> None:
        if not isinstance(method, WholeSetMethod):
            hint = (
                " (a training-time objective: use DataValuation)"
                if isinstance(method, ValuationObjective)
                else ""
            )
            raise TypeError(
                f"`method` must have `name` and `fit(features, labels) -> DataValues`; got "
                f"{type(method).__name__}{hint}. Registered whole-set methods: {registry.describe('whole_set')}."
            )
        if features is not None and not callable(features):
            raise TypeError(
                f"`features` must be a function of a batch of inputs or None; got {type(features).__name__}."
            )
        if export_path is not None:
            check_export_suffix(export_path)  # folder checks at setup, on rank zero
        self.method = method
        self.features = features
        self.export_path = export_path
        self.known_noisy = known_noisy
        self.prefix = f"{prefix}/{method.name}"
        self.feature_dtype = feature_dtype
        self.values: DataValues | None = None

    @property
    def state_key(self) -> str:
        return f"{type(self).__name__}[{self.method.name}]"

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.export_path is not None and trainer.is_global_zero:
            check_export_path(self.export_path)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        data = collect_training_rows(
            trainer, pl_module, self.features, dtype=self.feature_dtype, caller=type(self).__name__
        )
        result = self._fit(data)
        if len(result) != len(data.rows):
            raise ValueError(
                f"{type(self.method).__name__}.fit returned {len(result)} values for {len(data.rows)} rows; "
                "a whole-set method must return one value per given row, in order."
            )
        self.values = DataValues(
            values=result.values,
            method=result.method,
            index=data.rows,
            ids=data.ids,
            columns=self._dataset_columns(result.columns, data.rows),
            metadata={
                **result.metadata,
                "features": "flatten" if self.features is None else repr(self.features),
            },
        )
        noisy = as_noisy_mask(self.known_noisy, data.num_rows)
        publish(
            trainer,
            self.values,
            prefix=self.prefix,
            step=trainer.global_step,
            noisy=None if noisy is None else noisy[data.rows],
            export_path=self.export_path,
        )

    def _fit(self, data: TrainingRows) -> DataValues:
        """Run the method on the gathered rows (features where they were computed, labels on CPU)."""
        return self.method.fit(data.features, data.labels.cpu())

    def _dataset_columns(self, columns: dict[str, np.ndarray], rows: Tensor) -> dict[str, np.ndarray]:
        """The method's extra columns with positions among the valued rows mapped to dataset rows."""
        return dict(columns)


class ComplexityGapValuation(WholeSetValuation):
    """:class:`WholeSetValuation` of the complexity gap (:func:`~lightning_dv.complexity_gap`).

    Args:
        features: Maps a batch of inputs to ``(B, d)`` features, e.g. a frozen encoder. Default:
            the inputs flattened (in their own precision, then float64).
        export_path: Optional .csv / .parquet / .npz destination.
        known_noisy: Optional indices or boolean mask of rows known to be corrupted (benchmarks).
        mode, ratio, rep, seed, ridge, subsample, block_size, max_memory_bytes, progress: See
            :func:`~lightning_dv.complexity_gap`.
        device: Where to compute (default: where the features were computed).
        prefix: Tag prefix of the logged data.

    Example:
        >>> cb = ComplexityGapValuation(export_path="cg.csv", known_noisy=[3, 7])
        >>> # trainer = L.Trainer(callbacks=[cb]); trainer.fit(model, DataLoader(IndexedDataset(ds)))
        >>> cb.values is None   # cb.values.lowest(10) after fit: the most suspicious rows
        True
    """

    def __init__(
        self,
        features: Callable[[Tensor], Tensor] | None = None,
        export_path: str | os.PathLike | None = None,
        known_noisy: Any = None,
        mode: Literal["ovr", "binary"] = "ovr",
        ratio: float = 1.0,
        rep: int = 1,
        seed: int = 0,
        ridge: float = 0.0,
        subsample: int | None = None,
        block_size: int = 1024,
        max_memory_bytes: int | None = None,
        device: torch.device | str | None = None,
        prefix: str = "data_values/complexity_gap",
        progress: bool | ProgressFn | None = True,
    ) -> None:
        method = ComplexityGap(
            mode=mode,
            ratio=ratio,
            rep=rep,
            seed=seed,
            ridge=ridge,
            subsample=subsample,
            block_size=block_size,
            max_memory_bytes=max_memory_bytes,
            device=device,
            progress=progress,
        )
        super().__init__(method, features=features, export_path=export_path, known_noisy=known_noisy)
        self.prefix = prefix
        self.options = method.options
        self.device = device

    def _dataset_columns(self, columns: dict[str, np.ndarray], rows: Tensor) -> dict[str, np.ndarray]:
        out = dict(columns)
        dup = out["duplicate_of"]  # positions among the valued rows
        out["duplicate_of"] = np.where(dup >= 0, rows.numpy()[np.maximum(dup, 0)], -1)
        return out


class _WithValidation:
    """EcoVal as a whole-set method: ``fit(features, labels)`` with a fixed validation set."""

    name = "ecoval"

    def __init__(self, ecoval: EcoVal, validation: tuple[Any, Any]) -> None:
        self.ecoval = ecoval
        self.validation = validation

    def fit(self, features: Tensor, labels: Tensor) -> DataValues:
        return self.ecoval.fit(features.cpu(), labels.cpu().long(), *self.validation)


class EcoValValuation(WholeSetValuation):
    """:class:`WholeSetValuation` of :class:`~lightning_dv.EcoVal` with a validation set.

    The rows are read as flattened float32 inputs (EcoVal applies its own ``features``) and valued
    with the built-in batched model (a nested Lightning ``Trainer`` inside a running fit is not
    supported); the values are ready before the first training step.

    Args:
        ecoval: A configured :class:`~lightning_dv.EcoVal` with the built-in ``"logistic"`` utility model.
        validation: ``(x_valid, y_valid)`` on which the utility is measured, or a .pt / .npz / .csv
            file holding them (:func:`~lightning_dv.io.load_if_path`).
        export_path: Optional .csv / .parquet / .npz path.
        known_noisy: Optional known-noisy rows for detection F1 / AUROC in the logs.
        prefix: Tag prefix of the logged data.

    Example:
        >>> cb = EcoValValuation(EcoVal(n_subsets=50), validation=(np.zeros((4, 2)), np.array([0, 1, 0, 1])))
        >>> cb.values is None
        True
    """

    def __init__(
        self,
        ecoval: EcoVal,
        validation: tuple[Any, Any] | str,
        export_path: str | os.PathLike | None = None,
        known_noisy: Any = None,
        prefix: str = "data_values/ecoval",
    ) -> None:
        if not isinstance(ecoval, EcoVal):
            raise TypeError(f"`ecoval` must be an EcoVal instance; got {type(ecoval).__name__}.")
        if not isinstance(ecoval.utility_model, str):
            raise ValueError(
                "EcoValValuation runs inside a Trainer and supports the built-in 'logistic' utility "
                "model only; call EcoVal(...).fit(...) outside training to use a LightningModule factory."
            )
        validation = load_if_path(validation, "validation")  # a .pt / .npz / .csv path, e.g. from YAML
        if not (isinstance(validation, (tuple, list)) and len(validation) == 2):
            raise TypeError("`validation` must be a pair (x_valid, y_valid).")
        super().__init__(
            _WithValidation(ecoval, validation),
            export_path=export_path,
            known_noisy=known_noisy,
            feature_dtype=torch.float32,
        )
        self.prefix = prefix
        self.ecoval = ecoval
        self.validation = validation
