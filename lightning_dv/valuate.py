"""`valuate`: value the rows of a labelled table in one call, no LightningModule to write."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lightning_dv.methods.aum.combine import check_second_opinion
from lightning_dv.progress import quiet_lightning, quiet_trainer_settings
from lightning_dv.values import DataValues

#: Methods ``valuate`` runs, with their default number of epochs (None: training-free).
METHODS: dict[str, int | None] = {
    "nddv": 10,
    "lossval": 30,
    "aum": 10,
    "complexity_gap": None,
    "ecoval": None,
}
#: The default method, chosen by the measurement in docs/valuate.md.
DEFAULT_METHOD = "aum"
#: Fewest rows ``valuate`` accepts (2-means flags and a held-out part need a few rows per class).
MIN_ROWS = 10


class InputError(ValueError):
    """The features or labels given to :func:`valuate` cannot be valued; the message says why."""


def valuate(
    features: Any,
    labels: Any,
    method: str = DEFAULT_METHOD,
    validation: tuple[Any, Any] | None = None,
    epochs: int | None = None,
    seed: int = 0,
    *,
    ids: Sequence[Any] | None = None,
    validation_fraction: float = 0.1,
    standardize: bool = True,
    batch_size: int = 32,
    hidden: int = 64,
    lr: float = 0.01,
    progress: bool = False,
    trainer_kwargs: dict[str, Any] | None = None,
    folds: int | None = None,
    forest: bool | str = False,
    **method_kwargs: Any,
) -> DataValues:
    """Value every row of ``(features, labels)``: HIGHER = MORE VALUABLE, low rows are flagged.

    Training-time methods (``"nddv"``, ``"lossval"``, ``"aum"``) train the built-in
    :class:`~lightning_dv.modules.MLPClassifier` (one hidden layer, Adam, batch 32) with the
    :class:`~lightning_dv.DataValuation` callback in a real ``Trainer.fit``; ``"complexity_gap"``
    needs no training; ``"ecoval"`` trains its own small models on cluster subsets.

    The default is AUM (area under the margin over each row's first 10 epochs, calibrated by the
    clipped robust score, rows flagged only if their mean margin is below 0): on the bundled
    datasets with 10% flipped labels it flagged the flipped rows best of the five on the selection
    seeds (flagged-F1 0.828 against NDDV's 0.753) and on the reported seeds (0.781, AUROC 0.968;
    NDDV 0.707 / 0.966) in about 0.6-0.9 s per call at up to
    1000 rows on CPU, with no validation set and no extra parameters (figures and command:
    docs/valuate.md).

    Validation (LossVal, EcoVal): with ``validation=None``, LossVal's optimal-transport term,
    which compares FEATURES only, uses a stratified ``validation_fraction`` sample of the training
    rows' features (the rows stay in training and are valued); EcoVal holds out a stratified
    ``validation_fraction`` of the rows to measure its utility, trains on the rest, and values
    the held-out rows out of sample (:meth:`~lightning_dv.EcoVal.value`). ``metadata["validation"]``
    says which was done.

    Args:
        features: ``(N, d)`` numbers: numpy array, tensor or pandas DataFrame (every column
            numeric; the message names the others).
        labels: ``(N,)`` class labels of any type (strings, integers, a pandas Series).
        method: ``"aum"`` (area under the margin; default), ``"nddv"``, ``"lossval"``,
            ``"complexity_gap"`` or ``"ecoval"``.
        validation: Optional clean ``(x_val, y_val)``, labels in the same classes.
        epochs: Training epochs (default: 10 for AUM and NDDV, 30 for LossVal as in the paper and
            for AUM with ``monitor="val_loss"``, its longest window).
        seed: Seed of the model, the loader order and the held-out split (training-time methods
            call ``lightning.seed_everything(seed)``, which seeds the global generators).
        ids: Optional id per row, kept in the result.
        validation_fraction: Share of rows used as validation when ``validation`` is None.
        standardize: Scale every feature to zero mean and unit variance first (statistics of the
            training rows; constant columns are left at 0).
        batch_size, hidden, lr: The built-in model's batch size, hidden width and learning rate.
        progress: Show Lightning's progress bar (or the method's own).
        trainer_kwargs: Extra ``lightning.Trainer`` arguments (default: CPU, no logger).
        folds: ``"aum"`` only: also train the built-in model ``folds`` more times (e.g. 5), each on
            all folds but one and stopped at its best loss on the held-out fold, and combine every
            row's AUM with its held-out margin, from the one model that never trained on it
            (:mod:`lightning_dv.methods.aum.crossfit`; columns ``oof_margin``, ``oof_fold``,
            ``aum_value``). About ``folds + 1`` times the cost; measured gain: benchmarks/README.md 2e.
        forest: ``"aum"`` only: combine every row's AUM with its out-of-bag margin under an
            extremely randomised forest grown on the features (300 trees;
            :mod:`lightning_dv.methods.aum.forest`; columns ``forest_margin``, ``aum_value``).
            About 1 s more at 1000 rows; measured gain: benchmarks/README.md 2f. Not with ``folds``.
            ``"auto"``: also fit a cross-fitted Gaussian-mixture classifier and use whichever of the
            two predicts the labels better (lower out-of-sample error; :mod:`lightning_dv.methods.aum.mixture`,
            ``metadata["opinion"]``); measured gain: benchmarks/README.md 2g.
        **method_kwargs: Passed to the method (``NDDV(...)``, ``LossVal(...)``, ``AUM(...)``,
            ``complexity_gap(...)`` or ``EcoVal(...)``). ``monitor="val_loss"`` with ``"aum"``
            and ``validation`` runs AUM's window on from 10 up to 30 epochs while the loss on
            the validation rows falls (:class:`~lightning_dv.AUM`).

    Returns:
        :class:`DataValues` with ``labels``, a boolean ``flagged`` (the low 2-means cluster of
        the values), the column ``predicted_label`` (the trained model's prediction on each row,
        training-time methods) and metadata: method settings, classes, validation, seconds.

    Example:
        >>> from sklearn.datasets import load_iris
        >>> x, y = load_iris(return_X_y=True)
        >>> names = np.array(["setosa", "versicolor", "virginica"])[y]
        >>> names[:5] = "virginica"  # five wrong labels
        >>> values = valuate(x, names, method="complexity_gap")
        >>> bool(values.flagged[:5].all()), str(values.labels[0])
        (True, 'virginica')
    """
    if method not in METHODS:
        raise ValueError(f"`method={method!r}` is not supported; use one of {', '.join(METHODS)}.")
    if epochs is not None and (METHODS[method] is None or epochs < 1):
        raise ValueError(
            f"`epochs={epochs}`: "
            + (
                f"{method} trains no model; leave `epochs` unset."
                if METHODS[method] is None
                else "must be >= 1."
            )
        )
    check_second_opinion(method, folds, forest, method_kwargs.get("calibration", "robust"))
    if method == "aum" and method_kwargs.get("monitor") is not None:
        _check_aum_monitor(method_kwargs, validation)
        epochs = epochs or method_kwargs.get("max_window", 30)
    if not 0.0 < validation_fraction < 0.5:
        raise ValueError(f"`validation_fraction` must lie in (0, 0.5); got {validation_fraction}.")
    x = as_feature_matrix(features)
    y_raw = as_label_vector(labels, len(x))
    classes, codes = np.unique(y_raw, return_inverse=True)
    check_rows(x, classes, codes)
    if folds is not None:
        from lightning_dv.methods.aum.crossfit import check_folds

        check_folds(folds, len(x))
    if ids is not None and len(ids) != len(x):
        raise ValueError(f"`ids` has {len(ids)} entries but there are {len(x)} rows; give one id per row.")
    x_val = y_val = None
    if validation is not None:
        if not isinstance(validation, (tuple, list)) or len(validation) != 2:
            raise ValueError("`validation` must be a pair (x_val, y_val) or None.")
        x_val = as_feature_matrix(validation[0], name="validation features")
        y_val = _encode(as_label_vector(validation[1], len(x_val), name="validation labels"), classes)
        if x_val.shape[1] != x.shape[1]:
            raise ValueError(
                f"the validation features have {x_val.shape[1]} columns but the training features {x.shape[1]}."
            )
    if standardize:
        mu, sd = x.mean(0), x.std(0)
        sd = np.where(sd < 1e-8, 1.0, sd)
        x = ((x - mu) / sd).astype(np.float32)
        x_val = None if x_val is None else ((x_val - mu) / sd).astype(np.float32)
    start = time.perf_counter()
    meta: dict[str, Any] = {"classes": classes.tolist(), "seed": seed, "standardized": standardize}
    with quiet_lightning(".*LeafSpec.*"):
        if METHODS[method] is not None:
            epochs = epochs or METHODS[method]
            meta.update(epochs=epochs, model=f"MLPClassifier(hidden={hidden}, lr={lr}), batch {batch_size}")
            dv, predicted = _train(
                method,
                x,
                codes,
                num_classes=len(classes),
                x_val=x_val,
                y_val=y_val,
                epochs=epochs,
                seed=seed,
                batch_size=batch_size,
                hidden=hidden,
                lr=lr,
                progress=progress,
                trainer_kwargs=trainer_kwargs or {},
                fraction=validation_fraction,
                meta=meta,
                kwargs=method_kwargs,
            )
            columns = {"predicted_label": classes[predicted]}
            meta["train_accuracy"] = float((predicted == codes).mean())
            if folds is not None:
                dv = _cross_fit(
                    dv,
                    x,
                    codes,
                    len(classes),
                    folds,
                    seed,
                    batch_size,
                    hidden,
                    lr,
                    progress,
                    trainer_kwargs,
                    method_kwargs,
                )
            if forest is not False:
                opinion = "auto" if forest == "auto" else "forest"
                dv = _with_forest(dv, x, codes, seed, progress, opinion, method_kwargs)
        elif method == "complexity_gap":
            dv = _complexity_gap(x, codes, seed, progress, meta, method_kwargs)
            columns = {}
        else:
            kwargs = {"progress": progress, **method_kwargs}
            dv = _ecoval(x, codes, x_val, y_val, seed, validation_fraction, meta, kwargs)
            columns = {}
    meta["seconds"] = time.perf_counter() - start
    dv = dv.sorted_by_row()
    columns.update({k: v for k, v in dv.columns.items() if v.ndim == 1})
    meta.update({k: v for k, v in dv.metadata.items() if k not in meta and k != "flagged_by"})
    return DataValues(
        values=dv.values,
        method=method,
        index=dv.index,
        ids=None if ids is None else np.asarray(ids),
        labels=y_raw,
        columns=columns,
        trajectory=dv.trajectory,
        metadata=meta,
    )


# -- inputs ------------------------------------------------------------------------------------
def as_feature_matrix(features: Any, name: str = "features") -> np.ndarray:
    """A float32 ``(N, d)`` matrix from an array, tensor or DataFrame, or an error saying what is wrong.

    Example:
        >>> as_feature_matrix([[1, 2], [3, 4]]).dtype
        dtype('float32')
    """
    if hasattr(features, "select_dtypes") and hasattr(features, "columns"):  # pandas DataFrame
        bad = [str(c) for c in features.columns if not _numeric_dtype(features[c].dtype)]
        if bad:
            raise InputError(
                f"{len(bad)} column(s) of the {name} are not numeric: {', '.join(bad)}. Encode them as numbers "
                "(e.g. one-hot with pandas.get_dummies), or drop them."
            )
        features = features.to_numpy(dtype=np.float64)
    elif isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    try:
        x = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"the {name} must be numbers; {err}.") from err
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    if x.ndim != 2:
        x = x.reshape(x.shape[0], -1)
    bad_rows = np.flatnonzero(~np.isfinite(x).all(1))
    if bad_rows.size:
        shown = ", ".join(map(str, bad_rows[:10])) + (" ..." if bad_rows.size > 10 else "")
        raise InputError(
            f"the {name} hold NaN or infinite values in {bad_rows.size} row(s): {shown}. Impute or drop them."
        )
    return x.astype(np.float32)


def _numeric_dtype(dtype: Any) -> bool:
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    return is_numeric_dtype(dtype) or is_bool_dtype(dtype)


def as_label_vector(labels: Any, n: int, name: str = "labels") -> np.ndarray:
    """Labels as a 1-D numpy array of ``n`` entries (strings, integers, ...)."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels.to_numpy() if hasattr(labels, "to_numpy") else labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise InputError(f"the {name} have shape {y.shape}; expected ({n},), one label per row.")
    if y.dtype.kind == "f":
        if np.isnan(y).any():
            raise InputError(
                f"the {name} hold {int(np.isnan(y).sum())} missing value(s) (NaN); label every row."
            )
        if not np.array_equal(y, np.round(y)):
            raise InputError(
                f"the {name} are real numbers, not classes: valuate values classification data only."
            )
        y = y.astype(np.int64)
    if y.dtype.kind == "O":
        missing = [i for i, v in enumerate(y) if v is None or (isinstance(v, float) and np.isnan(v))]
        if missing:
            raise InputError(
                f"the {name} are missing in {len(missing)} row(s), first row {missing[0]}; label every row."
            )
        y = y.astype(str)
    return y


def check_rows(x: np.ndarray, classes: np.ndarray, codes: np.ndarray) -> None:
    """Refuse data too small to value: fewer than ``MIN_ROWS`` rows, or one class only."""
    if len(x) < MIN_ROWS:
        raise InputError(f"only {len(x)} rows; valuing needs at least {MIN_ROWS}.")
    if len(classes) < 2:
        raise InputError(
            f"every row has the same label ({classes[0].item()!r}): with a single class there is nothing to learn "
            "and no label can be wrong. Check the label column."
        )


def _check_aum_monitor(kwargs: dict[str, Any], validation: Any) -> None:
    """``AUM(monitor=...)`` in ``valuate``: the built-in model logs ``val_loss``, from ``validation``."""
    if kwargs["monitor"] != "val_loss" or kwargs.get("mode", "min") != "min":
        raise ValueError(
            f"`monitor={kwargs['monitor']!r}, mode={kwargs.get('mode', 'min')!r}`: valuate's built-in model "
            "logs one validation metric, 'val_loss' (to minimise); pass monitor='val_loss', or fit your own "
            "LightningModule with DataValuation(AUM(monitor=...)) to follow another metric."
        )
    if validation is None:
        raise ValueError(
            "AUM(monitor='val_loss') follows the loss on held-out labelled rows every epoch: pass "
            "`validation=(x_val, y_val)` (rows not in the training set), or leave `monitor` unset for the "
            "fixed 10-epoch window."
        )


def _encode(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(classes, y)
    pos = np.clip(pos, 0, len(classes) - 1)
    unknown = classes[pos] != y
    if unknown.any():
        raise InputError(
            f"the validation labels hold {y[unknown][0].item()!r}, a class the training labels do not have."
        )
    return pos.astype(np.int64)


def _stratified_part(codes: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, part): a stratified random ``fraction`` of the rows, at least one row per class."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(codes))
    k = max(int(round(fraction * len(codes))), len(np.unique(codes)))
    counts = np.bincount(codes)
    stratify = codes if counts.min() >= 2 else None
    rest, part = train_test_split(rows, test_size=k, random_state=seed, stratify=stratify)
    return np.sort(rest), np.sort(part)


# -- methods -----------------------------------------------------------------------------------
def _train(
    method,
    x,
    codes,
    *,
    num_classes,
    x_val,
    y_val,
    epochs,
    seed,
    batch_size,
    hidden,
    lr,
    progress,
    trainer_kwargs,
    fraction,
    meta,
    kwargs,
):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_dv.callbacks import DataValuation
    from lightning_dv.data import IndexedDataset
    from lightning_dv.methods.aum import AUM
    from lightning_dv.methods.lossval import LossVal
    from lightning_dv.methods.nddv import NDDV
    from lightning_dv.modules import MLPClassifier, ValidatedMLPClassifier

    L.seed_everything(seed, verbose=False)
    val_loader = None
    if method == "lossval":
        if x_val is None:
            _, part = _stratified_part(codes, fraction, seed)
            x_val = x[part]
            meta["validation"] = (
                f"a stratified {fraction:.0%} sample of the training features ({len(part)} rows, which stay "
                "in training): LossVal's OT term compares features only"
            )
        else:
            meta["validation"] = f"given ({len(x_val)} rows)"
        objective = LossVal(validation=torch.from_numpy(x_val), **kwargs)
    elif method == "aum":
        objective = AUM(**kwargs)
        meta["validation"] = "none needed"
        if objective.monitor is not None:
            meta["validation"] = f"given ({len(x_val)} rows): the window runs on while its loss falls"
            val_set = TensorDataset(torch.from_numpy(x_val), torch.from_numpy(y_val))
            val_loader = DataLoader(val_set, batch_size=max(batch_size, 256))
    else:
        if kwargs.get("weighting") == "meta" and "meta" not in kwargs:
            if x_val is None:
                raise ValueError(
                    "NDDV with weighting='meta' needs a clean meta set: pass `validation=(x, y)`."
                )
            kwargs = {**kwargs, "meta": (torch.from_numpy(x_val), torch.from_numpy(y_val))}
        kwargs.setdefault("seed", seed)
        objective = NDDV(**kwargs)
        meta["validation"] = (
            "none needed" if kwargs.get("weighting", "softplus") != "meta" else "given (meta set)"
        )
    valuation = DataValuation(objective)
    settings = {**quiet_trainer_settings(max_epochs=epochs, enable_progress_bar=progress), **trainer_kwargs}
    trainer = L.Trainer(callbacks=[valuation], **settings)
    model = (MLPClassifier if val_loader is None else ValidatedMLPClassifier)(
        x.shape[1], num_classes, hidden=hidden, lr=lr
    )
    xt, yt = torch.from_numpy(x), torch.from_numpy(codes.astype(np.int64))
    loader = DataLoader(
        IndexedDataset(TensorDataset(xt, yt)),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    trainer.fit(model, loader, val_loader)
    model.eval()
    with torch.no_grad():
        predicted = model(xt.to(model.device)).argmax(1).cpu().numpy()
    return valuation.values, predicted


def _cross_fit(
    dv, x, codes, num_classes, folds, seed, batch_size, hidden, lr, progress, trainer_kwargs, kwargs
):
    """AUM's values combined with the held-out margins of ``folds`` fits of the same built-in model."""
    from lightning_dv.methods.aum.crossfit import with_out_of_fold
    from lightning_dv.methods.calibration import GATE_TOLERANCE
    from lightning_dv.modules import ValidatedMLPClassifier

    return with_out_of_fold(
        dv,
        lambda: ValidatedMLPClassifier(x.shape[1], num_classes, hidden=hidden, lr=lr, valuate=False),
        x,
        codes,
        folds=folds,
        gate=kwargs.get("gate", 0.0),
        gate_tolerance=kwargs.get("gate_tolerance", GATE_TOLERANCE),
        batch_size=batch_size,
        seed=seed,
        trainer_kwargs=trainer_kwargs,
        progress=progress,
    )


def _with_forest(dv, x, codes, seed, progress, opinion, kwargs) -> DataValues:
    """AUM's values combined with the out-of-bag margins of an extremely randomised forest (or a mixture's)."""
    from lightning_dv.methods.aum.forest import with_forest
    from lightning_dv.methods.calibration import GATE_TOLERANCE

    return with_forest(
        dv,
        x,
        codes,
        seed=seed,
        gate=kwargs.get("gate", 0.0),
        gate_tolerance=kwargs.get("gate_tolerance", GATE_TOLERANCE),
        progress=progress,
        opinion=opinion,
    )


def _complexity_gap(x, codes, seed, progress, meta, kwargs) -> DataValues:
    from lightning_dv.methods.complexity_gap import complexity_gap

    kwargs = {"progress": progress, **kwargs}
    try:
        return complexity_gap(x, codes, seed=seed, **kwargs)
    except ValueError as err:
        # Identical rows with different labels have an infinite gap at ridge 0; the function's own
        # message recommends a small ridge, which is what a one-call user wants.
        if "identical" not in str(err) or "ridge" in kwargs:
            raise
        meta["ridge"] = 1e-3
        meta["ridge_reason"] = "identical rows with different labels"
        return complexity_gap(x, codes, seed=seed, ridge=1e-3, **kwargs)


def _ecoval(x, codes, x_val, y_val, seed, fraction, meta, kwargs) -> DataValues:
    from lightning_dv.methods.ecoval import EcoVal

    eco = EcoVal(seed=seed, **kwargs)
    if x_val is not None:
        meta["validation"] = f"given ({len(x_val)} rows)"
        return eco.fit(x, codes, x_val, y_val)
    rest, part = _stratified_part(codes, fraction, seed)
    meta["validation"] = (
        f"held out a stratified {fraction:.0%} ({len(part)} rows) to measure the utility; they are valued "
        "out of sample (EcoVal.value)"
    )
    fitted = eco.fit(x[rest], codes[rest], x[part], codes[part])
    held = eco.value(x[part], codes[part])
    values = np.empty(len(x))
    values[rest], values[part] = fitted.values[np.argsort(fitted.index)], held.values
    cols = {}
    for k in fitted.columns:
        if k in held.columns and fitted.columns[k].ndim == 1:
            col = np.empty(len(x), dtype=np.result_type(fitted.columns[k], held.columns[k]))
            col[rest], col[part] = fitted.columns[k][np.argsort(fitted.index)], held.columns[k]
            cols[k] = col
    held_out = np.zeros(len(x), dtype=bool)
    held_out[part] = True
    cols["held_out"] = held_out
    return DataValues(values, method="ecoval", columns=cols, metadata=fitted.metadata)
