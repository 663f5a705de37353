"""Registry of benchmark methods: ``name -> callable(split, seed) -> DataValues``.

Baselines are always available. The project's own methods are imported lazily, so the harness
runs (and says what it skipped and why) while a method's module is missing or its optional
dependency is not installed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks import baselines
from benchmarks.baselines import MethodUnavailable
from lightning_dv.datasets import Split
from lightning_dv.progress import quiet_lightning as _quiet_lightning
from lightning_dv.values import DataValues

MethodFn = Callable[[Split, int], DataValues]


@dataclass(frozen=True)
class Method:
    """A registered valuation method.

    Attributes:
        name: Registry key, used on the command line and in the result tables.
        fn: ``fn(split, seed) -> DataValues`` with one value per training row of ``split``.
        kind: ``"baseline"`` or ``"project"``.
        description: One line for ``--list``.
    """

    name: str
    fn: MethodFn
    kind: str
    description: str


METHODS: dict[str, Method] = {}


def register(name: str, kind: str = "baseline", description: str = "") -> Callable[[MethodFn], MethodFn]:
    """Decorator adding ``fn(split, seed) -> DataValues`` to :data:`METHODS` under ``name``.

    Example:
        >>> import numpy as np
        >>> @register("constant_demo", description="every row worth 1")
        ... def constant(split, seed):
        ...     return DataValues(np.ones(len(split.y_train)), method="constant_demo")
        >>> "constant_demo" in METHODS
        True
        >>> _ = METHODS.pop("constant_demo")
    """
    if kind not in ("baseline", "project"):
        raise ValueError(f"`kind` must be 'baseline' or 'project'; got {kind!r}.")

    def deco(fn: MethodFn) -> MethodFn:
        if name in METHODS:
            raise ValueError(f"a method named {name!r} is already registered.")
        METHODS[name] = Method(name, fn, kind, description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def get_method(name: str) -> Method:
    """Look a method up by name, with the list of known names in the error."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(sorted(METHODS))}.")
    return METHODS[name]


def project_class(name: str) -> type:
    """The class of the project method ``name`` from :mod:`lightning_dv.methods.registry`.

    A method not registered, or whose module is missing from this checkout, is unavailable; any
    other failing import is a real error and surfaces.
    """
    try:
        from lightning_dv.methods import registry
    except ModuleNotFoundError as err:  # an older checkout without the registry
        raise MethodUnavailable(f"{name} is not in this checkout yet ({err.name} is missing).") from err
    if name not in registry.METHODS:
        raise MethodUnavailable(f"{name} is not registered in lightning_dv.methods.registry.")
    try:
        return registry.get(name).load()
    except ModuleNotFoundError as err:
        if err.name is None or not err.name.startswith("lightning_dv"):
            raise
        raise MethodUnavailable(f"{name} is not in this checkout yet ({err.name} is missing).") from err


def quiet_lightning():
    """Silence Lightning's per-fit banners and data-loader hints while a benchmark fit runs."""
    # the tiny proportional splits make LossVal's OT term noisy; torch/lightning version chatter
    return _quiet_lightning(".*OT term is noisy.*", ".*LeafSpec.*", level=logging.ERROR)


def fit_with_objective(
    split: Split,
    seed: int,
    make_objective: Callable[[], object],
    epochs: int,
    hidden: int = 64,
    model_loss: str | None = None,
    validate: bool = False,
) -> DataValues:
    """Value ``split``'s training rows with a training-time objective through a real Lightning fit.

    The model is :class:`~lightning_dv.modules.MLPClassifier` (Adam, lr 0.01, batch 32),
    exactly the user journey: the mixin's ``valuation_loss`` in ``training_step`` and a
    ``DataValuation(model_loss=...)`` callback on the trainer. ``make_objective()`` builds the
    objective (inside the quiet context, so its warnings about the tiny proportional splits stay
    out of the logs). The trained model's test accuracy goes to ``metadata["test_accuracy"]``.
    ``validate``: the split's (noisy) validation rows are ``fit``'s validation loader, so the
    model logs ``val_loss`` every epoch (what ``AUM(monitor="val_loss")`` reads).
    """
    import lightning as L
    import torch

    from benchmarks.fitting import indexed_loader, quiet_trainer
    from lightning_dv.callbacks import DataValuation as callback
    from lightning_dv.modules import MLPClassifier, ValidatedMLPClassifier

    L.seed_everything(seed, verbose=False)
    model = (ValidatedMLPClassifier if validate else MLPClassifier)(
        split.x_train.shape[1], split.num_classes, hidden=hidden
    )
    with quiet_lightning():
        valuation = callback(make_objective(), model_loss=model_loss)
        trainer = quiet_trainer(epochs, callbacks=[valuation])
        val = indexed_loader(split.x_valid, split.y_valid, shuffle=False) if validate else None
        trainer.fit(model, indexed_loader(split.x_train, split.y_train, seed=seed), val)
    values = valuation.values
    model.eval()
    with torch.no_grad():
        pred = model(torch.as_tensor(split.x_test, dtype=torch.float32)).argmax(1).numpy()
    values.metadata["test_accuracy"] = float((pred == split.y_test).mean())
    values.metadata["model"] = f"MLP({hidden}) trained with the callback (model_loss={valuation.model_loss})"
    return values


# -- baselines ------------------------------------------------------------------------------------
@register("random", description="uniform random values (the floor)")
def _random(split: Split, seed: int) -> DataValues:
    return baselines.random_values(len(split.y_train), seed=seed)


@register("loss_only", description="out-of-fold log-likelihood of the label under logistic regression")
def _loss_only(split: Split, seed: int) -> DataValues:
    return baselines.loss_only(split.x_train, split.y_train, split.num_classes, seed=seed)


@register("knn_shapley", description="exact KNN-Shapley (K=10) against the validation set")
def _knn_shapley(split: Split, seed: int) -> DataValues:
    return baselines.knn_shapley(split.x_train, split.y_train, split.x_valid, split.y_valid, k=10)


@register("data_oob", description="Data-OOB, 200 bagged logistic regressions")
def _data_oob(split: Split, seed: int) -> DataValues:
    return baselines.data_oob(split.x_train, split.y_train, split.num_classes, model="logistic", seed=seed)


@register("data_oob_tree", description="Data-OOB, 200 bagged decision trees (depth 8)")
def _data_oob_tree(split: Split, seed: int) -> DataValues:
    return baselines.data_oob(split.x_train, split.y_train, split.num_classes, model="tree", seed=seed)


@register(
    "forest_oob",
    description="extra-trees out-of-bag label margin, 300 trees (the forest `aum_forest` adds, alone)",
)
def _forest_oob(split: Split, seed: int) -> DataValues:
    return baselines.forest_oob(split.x_train, split.y_train, "extra_trees", seed=seed)


@register("random_forest_oob", description="random-forest out-of-bag label margin, 300 trees")
def _random_forest_oob(split: Split, seed: int) -> DataValues:
    return baselines.forest_oob(split.x_train, split.y_train, "random_forest", seed=seed)


@register(
    "mixture_oof",
    description="mixture discriminant analysis' cross-fitted label margin (the mixture `aum_auto` may add, alone)",
)
def _mixture_oof(split: Split, seed: int) -> DataValues:
    return baselines.mixture_oof(split.x_train, split.y_train, seed=seed)


@register("cleanlab", description="cleanlab label-quality score (optional: pip install cleanlab)")
def _cleanlab(split: Split, seed: int) -> DataValues:
    return baselines.cleanlab_label_quality(split.x_train, split.y_train, split.num_classes, seed=seed)


# -- project methods ------------------------------------------------------------------------------
@register("lossval_reference", description="the LossVal paper's formula as a plain PyTorch loop (5x100 MLP)")
def _lossval_reference(split: Split, seed: int) -> DataValues:
    from benchmarks.lossval_reference import lossval_reference

    return lossval_reference(
        split.x_train,
        split.y_train,
        split.x_valid,
        split.num_classes,
        seed=seed,
        x_test=split.x_test,
        y_test=split.y_test,
    )


@register(
    "lossval",
    kind="project",
    description="LossVal, 30 epochs, MLP(64), Lightning fit (defaults: model on the plain loss, trajectory values at fixed weights)",
)
def _lossval(split: Split, seed: int, model_loss: str | None = None, **options) -> DataValues:
    loss_val = project_class("lossval")
    return fit_with_objective(
        split,
        seed,
        lambda: loss_val(validation=(split.x_valid, split.y_valid), **options),
        epochs=30,
        model_loss=model_loss,
    )


#: LossVal variants of the benchmark: name -> (description, options of the ``lossval`` entry).
LOSSVAL_VARIANTS: dict[str, tuple[str, dict]] = {
    "lossval_exact": (
        "LossVal at defaults with geomloss's SamplesLoss as the OT solver (ot='exact'): the reference of the fast solver",
        {"ot": "exact"},
    ),
    "lossval_ot05": (
        "LossVal with ot_scaling=0.5: geomloss's schedule (the exact solver's values), the default before session 5",
        {"ot_scaling": 0.5},
    ),
    "lossval_ot03": (
        "LossVal at defaults, the fast solver annealing at ot_scaling=0.3 (fewer epsilon steps)",
        {"ot_scaling": 0.3},
    ),
    "lossval_ot02": (
        "LossVal with ot_scaling=0.2 given explicitly (the default since session 5)",
        {"ot_scaling": 0.2},
    ),
    "lossval_ot01": (
        "LossVal at defaults, the fast solver annealing at ot_scaling=0.1 (fewer epsilon steps)",
        {"ot_scaling": 0.1},
    ),
    "lossval_learned": (
        "LossVal with learned weights (learn_weights=True): the weights step with Adam every step, "
        "the trajectory reads the gradient at the current weights",
        {"learn_weights": True},
    ),
    "lossval_fixed": (
        "LossVal with fixed weights (learn_weights=False): the trajectory reads the gradient at w = 1, "
        "no weight state and no weight step",
        {"learn_weights": False},
    ),
    "lossval_reweight": (
        "LossVal, 30 epochs, the model trained on the learned weights (model_loss='reweight')",
        {"model_loss": "reweight"},
    ),
    "lossval_objective": (
        "LossVal, 30 epochs, the paper's formula drives the model",
        {"model_loss": "objective"},
    ),
}
for _name, (_description, _options) in LOSSVAL_VARIANTS.items():
    register(_name, kind="project", description=_description)(functools.partial(_lossval, **_options))


#: NDDV epochs in the benchmark: its values average each row's first ``window=10`` epochs and
#: freeze there (later epochs memorise flipped labels), so a longer fit gives the same values.
NDDV_EPOCHS = 10


@register(
    "nddv",
    kind="project",
    description=f"NDDV objective (softplus weighting, fixed at 1 with the model on the plain loss), {NDDV_EPOCHS} epochs, MLP(64)",
)
def _nddv(split: Split, seed: int, **options) -> DataValues:
    nddv = project_class("nddv")
    return fit_with_objective(split, seed, lambda: nddv(seed=seed, **options), epochs=NDDV_EPOCHS)


#: NDDV variants of the benchmark: name -> (description, options of the ``nddv`` entry).
NDDV_VARIANTS: dict[str, tuple[str, dict]] = {
    "nddv_learned": (
        "NDDV with learned softplus weights (learn_weights=True): the weights step with Adam every step "
        "and scale the value and the mean field (the default before session 6)",
        {"learn_weights": True},
    ),
    "nddv_fixed": (
        "NDDV with fixed weights (learn_weights=False): every row weighs 1, no weight state and no weight step",
        {"learn_weights": False},
    ),
}
for _name, (_description, _options) in NDDV_VARIANTS.items():
    register(_name, kind="project", description=_description)(functools.partial(_nddv, **_options))


@register(
    "nddv_reweight", kind="project", description=f"NDDV, {NDDV_EPOCHS} epochs, model trained on its weights"
)
def _nddv_reweight(split: Split, seed: int) -> DataValues:
    nddv = project_class("nddv")
    return fit_with_objective(split, seed, lambda: nddv(seed=seed), epochs=NDDV_EPOCHS, model_loss="reweight")


@register(
    "nddv_30ep", kind="project", description="NDDV objective, 30 epochs (LossVal's budget), for comparison"
)
def _nddv_30(split: Split, seed: int) -> DataValues:
    nddv = project_class("nddv")
    return fit_with_objective(split, seed, lambda: nddv(seed=seed), epochs=30)


@register(
    "nddv_meta",
    kind="project",
    description="NDDV, meta weight network on the CLEAN validation labels (an advantage no other method has)",
)
def _nddv_meta(split: Split, seed: int) -> DataValues:
    nddv = project_class("nddv")
    if split.y_valid_clean is None:
        raise MethodUnavailable("nddv_meta needs the clean validation labels (Split.y_valid_clean).")
    meta = (split.x_valid, split.y_valid_clean)
    return fit_with_objective(
        split, seed, lambda: nddv(weighting="meta", meta=meta, seed=seed), epochs=NDDV_EPOCHS
    )


@register(
    "aum",
    kind="project",
    description="AUM, calibrated, first 10 epochs, flagged only below margin 0 (values freeze after 10 epochs)",
)
def _aum(split: Split, seed: int) -> DataValues:
    aum = project_class("aum")
    return fit_with_objective(split, seed, aum, epochs=10)


@register(
    "aum_2means",
    kind="project",
    description="AUM as `aum`, flagged by 2-means alone (gate=None): the previous default",
)
def _aum_2means(split: Split, seed: int) -> DataValues:
    aum = project_class("aum")
    return fit_with_objective(split, seed, lambda: aum(gate=None), epochs=10)


@register(
    "aum_val",
    kind="project",
    description="AUM as `aum`, window run on from 10 up to 30 epochs while the (noisy) validation loss falls "
    "(`AUM(monitor='val_loss')`); 30-epoch fit with the validation loader",
)
def _aum_val(split: Split, seed: int) -> DataValues:
    aum = project_class("aum")
    return fit_with_objective(split, seed, lambda: aum(monitor="val_loss"), epochs=30, validate=True)


def _with_out_of_fold(split: Split, seed: int, values: DataValues) -> DataValues:
    """``values`` of an AUM fit combined with the out-of-fold margins of 5 more fits of the same MLP."""
    from lightning_dv.methods.aum.crossfit import with_out_of_fold
    from lightning_dv.modules import ValidatedMLPClassifier

    d, c = split.x_train.shape[1], split.num_classes
    with quiet_lightning():
        return with_out_of_fold(
            values,
            lambda: ValidatedMLPClassifier(d, c, hidden=64, valuate=False),
            split.x_train,
            split.y_train,
            seed=seed,
        )


def _with_forest(split: Split, seed: int, values: DataValues, opinion: str = "forest") -> DataValues:
    """``values`` of an AUM fit combined with the out-of-bag margins of an extra-trees forest
    (``opinion="auto"``: or of a mixture, whichever misclassifies fewer labels out of sample)."""
    from lightning_dv.methods.aum.forest import with_forest

    return with_forest(values, split.x_train, split.y_train, seed=seed, opinion=opinion)


def _with_second_opinion(split: Split, seed: int, base: MethodFn, opinion: Callable) -> DataValues:
    """The AUM entry ``base`` on the split, its values combined with ``opinion``'s margins."""
    return opinion(split, seed, base(split, seed))


#: AUM's second opinions in the benchmark: name -> (description, AUM entry, opinion).
SECOND_OPINIONS: dict[str, tuple[str, MethodFn, Callable]] = {
    "aum_oof": (
        "`aum` combined with out-of-fold margins: + 5 fits of the same MLP on 4 folds, each stopped "
        "at its best held-out loss (patience 10, <= 60 epochs); value = calibrated a/s_a + 0.5 o/s_o",
        _aum,
        _with_out_of_fold,
    ),
    "aum_val_oof": ("`aum_val` combined with out-of-fold margins as `aum_oof`", _aum_val, _with_out_of_fold),
    "aum_forest": (
        "`aum` combined with an extra-trees forest's out-of-bag margin (300 trees on the features); "
        "value = calibrated a/s_a + 0.5 f/s_f",
        _aum,
        _with_forest,
    ),
    "aum_val_forest": (
        "`aum_val` combined with the forest's out-of-bag margin as `aum_forest`",
        _aum_val,
        _with_forest,
    ),
    "aum_auto": (
        "`aum` combined as `aum_forest` with the forest's margin or a cross-fitted mixture "
        "discriminant analysis', whichever misclassifies fewer labels out of sample (`opinion='auto'`)",
        _aum,
        functools.partial(_with_forest, opinion="auto"),
    ),
    "aum_val_auto": (
        "`aum_val` combined with the forest's or the mixture's margin as `aum_auto`",
        _aum_val,
        functools.partial(_with_forest, opinion="auto"),
    ),
}
for _name, (_description, _base, _opinion) in SECOND_OPINIONS.items():
    register(_name, kind="project", description=_description)(
        functools.partial(_with_second_opinion, base=_base, opinion=_opinion)
    )


@register("aum_paper", description="the paper's AUM: raw mean margin over all 30 epochs, MLP(64)")
def _aum_paper(split: Split, seed: int) -> DataValues:
    aum = project_class("aum")
    return fit_with_objective(split, seed, lambda: aum(window=None, calibration="none"), epochs=30)


@register("complexity_gap", kind="project", description="complexity-gap score (training-free, negated CG)")
def _complexity_gap(split: Split, seed: int) -> DataValues:
    method = project_class("complexity_gap")
    # identical rows with conflicting labels are scored as the most suspicious; no ridge needed
    return method(seed=seed, progress=False).fit(split.x_train, split.y_train)


@register("ecoval", kind="project", description="EcoVal cluster-level valuation")
def _ecoval(split: Split, seed: int) -> DataValues:
    eco_val = project_class("ecoval")
    return eco_val(seed=seed, progress=False).fit(split.x_train, split.y_train, split.x_valid, split.y_valid)
