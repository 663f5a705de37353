"""LossVal (Wibiral et al., "LossVal: Efficient Data Valuation for Neural Networks", 2024/25).

For a minibatch B with rows i and per-row weights w_i:

    L_w  = sum_i w_i * l_i                      (or the weighted mean, ``reduction="mean"``)
    D    = debiased Sinkhorn divergence between {(w_i, f(x_i))} and {(1, f(v_j))}
    loss = L_w * D ** exponent                  (exponent 2 in the paper)

with ``f`` the ``features=`` hook (default: flattened inputs) applied to the batch inputs and to
the validation inputs alike.

The weights (``learn_weights=``): the paper learns them with Adam alongside the model. Where
nothing reads them (the default: ``signal="trajectory"`` with the model on the user's plain
loss) they stay FIXED at ``init`` (1): the state is the trajectory alone (10 bytes per row
instead of 26), no weight step or DDP exchange runs, and ``g_i`` is read in the step itself.
Why: at raw masses the weights reach ``g_i`` only through the common scalars ``L_w``, ``D`` and
the OT term's small per-row part, so learning them adds nothing the values need; on the protocol
the fixed weights detect as well on 7 of 8 datasets and better on breast_cancer (F1 0.736 ->
0.744 at 10%, 0.767 -> 0.781 at 20%, reported seeds; docs/lossval_speed.md, session 6). They are
learned where they are read: ``signal="weights"``, ``DataValuation(model_loss="reweight")`` or
``"objective"``.

The values (``signal=``): by default (``"trajectory"``) the mean of each row's standardised
descent direction of that loss over the first ``window`` epochs the row is seen in,

    g_i^t = d loss_t / d w_i,   z_i^t = -(g_i^t - mean_B g^t) / std_B g^t,
    z_i^(e) = mean of z_i^t over the steps of epoch e,   value_i = (1/T) sum_{e <= T} z_i^(e)

with ``T = min(epochs seen, window)`` (``window=10``; ``None``: every epoch); ``"weights"``: the
final weights (the paper). Why the trajectory: with the model on the user's plain loss
(``DataValuation``'s safe default) Adam's per-row normalisation keeps little more than the sign of
each row's gradient, so the final weights separate noisy rows far less (F1 0.42 against 0.69 at
10% noise; docs/model_safety.md). Why the window: the model memorises the flipped labels as
training goes on and their descent direction turns clean; counting each row's first 10 epochs
(as AUM and NDDV do) makes the values of one fit the same however long the user trains, and
better than the whole-fit mean (F1 read at 10 / 30 / 100 epochs 0.731 / 0.700 / 0.621 without
it, docs/model_safety.md).

``l_i`` is, by default (``task_loss="auto"``), the paper's own bounded cross-entropy
``-log(softmax(z_i)[y_i] + 1e-8)`` computed from the outputs and integer targets when the
training step passes them, else the user's per-sample loss. Why: the values must not depend on
how the user writes the same cross-entropy (logits + ``F.cross_entropy`` gave digits F1 0.65,
softmax + ``-log(p + 1e-8)`` 0.87 on the same splits; see docs/model_safety.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_dv._validation import check_choice, check_window
from lightning_dv.distributed import RowStatistics, all_reduce_max
from lightning_dv.methods.base import ValuationObjective, ValuationState, ValuationStep
from lightning_dv.methods.lossval.inputs import (
    bounded_cross_entropy,
    flatten_features,
    is_classification,
    validation_from_trainer,
    validation_inputs,
)
from lightning_dv.methods.lossval.ot import CachedSinkhornDivergence, bounding_diameter
from lightning_dv.methods.lossval.sinkhorn import SinkhornDivergence, check_schedule
from lightning_dv.methods.weight_mode import (
    check_checkpoint_weights,
    check_learn_weights,
    check_serves_model_loss,
)
from lightning_dv.methods.weights import CONSTRAINTS, SampleWeights

if TYPE_CHECKING:
    import lightning.pytorch as pl

MASSES = ("raw", "uniform")
REDUCTIONS = ("sum", "mean")
TASK_LOSSES = ("auto", "user")
SIGNALS = ("trajectory", "weights")
#: ``ot=``: our solver (no autograd through the loop) or geomloss's ``SamplesLoss`` (the reference).
OT_SOLVERS = ("fast", "exact")
BACKENDS = ("tensorized", "online", "auto")
#: ``ot_scaling=None``: the fast solver anneals its potentials at this ratio (or at ``scaling`` where
#: that is smaller). About half the epsilon steps of geomloss's 0.5 at equal detection on the
#: protocol (selection seeds 100-104: F1 -0.001, AUROC +-0.000 at 10% and 20%; docs/lossval_speed.md).
DEFAULT_OT_SCALING = 0.2


class LossValState(ValuationState):
    """State of LossVal: the learned weights (None when they stay fixed), the per-row gradient
    trajectory (its first ``window`` epochs per row), and the fixed OT diameter (saved for exact
    resume).

    Example:
        >>> LossValState(4, weights=None).weights is None  # fixed weights: the trajectory alone
        True
    """

    def __init__(
        self, num_rows: int, weights: SampleWeights | None = None, window: int | None = None
    ) -> None:
        super().__init__(num_rows)
        self.weights = weights
        self.trajectory = RowStatistics(num_rows, window=window)
        self.register_buffer("diameter", torch.tensor(float("nan")))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # A checkpoint of the other kind of state (learned vs fixed weights) would fail on
        # unexpected / missing keys: say which LossVal wrote it instead.
        if (prefix + "trajectory.sum") in state_dict:
            stored = any(k.startswith(prefix + "weights.") for k in state_dict)
            check_checkpoint_weights("LossVal", stored, self.weights is not None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def standardised_descent(grad: Tensor) -> Tensor:
    """``-(g - mean g) / std g`` over a batch's rows (0 where the batch is constant or not finite).

    Example:
        >>> standardised_descent(torch.tensor([1.0, 2.0, 3.0])).tolist()
        [1.0, 0.0, -1.0]
        >>> standardised_descent(torch.tensor([1.0, float("inf")])).tolist()  # a skipped AMP step
        [0.0, 0.0]
    """
    g = grad.detach().float().reshape(-1)
    if g.numel() < 2:
        return torch.zeros_like(g)
    centred = g.mean() - g
    std = g.std()
    ok = torch.isfinite(g).all() & (std > 0)  # no host sync: the hook runs inside every backward
    return torch.where(ok, centred / torch.where(ok, std, 1.0), 0.0)


class _TrajectoryHook:
    """Gradient hook on a batch's weights: records the rows' standardised descent direction."""

    def __init__(self, stats: RowStatistics, rows: Tensor) -> None:
        self.stats, self.rows = stats, rows

    def __call__(self, grad: Tensor) -> None:
        self.stats.update(self.rows, standardised_descent(grad))


class LossVal(ValuationObjective):
    """LossVal as a loss wrapper on any LightningModule.

    Args:
        validation: Validation inputs ``x_val`` (tensor or array), or ``(x_val, y_val)`` (labels
            are ignored: the OT term compares features only), or a map-style dataset whose items
            start with the input. ``None``: the validation dataloader given to ``Trainer.fit`` (or
            the DataModule's ``val_dataloader``), read once at fit start (inputs only).
        features: Maps a batch of inputs to ``(B, d)`` features for the OT term; applied to the
            validation inputs too (e.g. a frozen encoder for images). Default: flatten.
        mass: ``"raw"`` (the paper: batch mass = sum of weights, validation mass J; geomloss does
            not normalise) or ``"uniform"`` (both clouds normalised to mass 1).
        reduction: ``"sum"`` (the paper) or ``"mean"`` of the weighted per-sample losses.
        constraint: Learned weights only: ``"none"`` (the paper: weights may go negative),
            ``"softplus"`` or ``"clamp"``.
        exponent: Power of the divergence; 2 in the paper (1 measured clearly worse).
        lr: Learning rate of the learned weights' Adam optimizer (the paper: 0.01, shared with the model).
        init: Initial weight (the weight of every row when the weights are fixed).
        blur, scaling, p: geomloss Sinkhorn settings (paper: 0.05, 0.5, 2).
        ot_scaling: ``ot="fast"`` only: the epsilon-scaling ratio the solver anneals its potentials
            at. ``None`` (default): :data:`DEFAULT_OT_SCALING` (0.2), or ``scaling`` if smaller;
            ``ot_scaling=scaling`` gives geomloss's own result (what ``ot="exact"`` computes).
            Smaller means fewer epsilon steps per call (digits: 7 instead of 12 at 0.5);
            ``D``'s raw-mass offsets keep ``scaling``'s closed form, so only the per-row part of
            the gradient changes, which at raw masses is ~0.2% of the weight gradient: detection
            is unchanged on the protocol (docs/lossval_speed.md).
        diameter: Fixed OT diameter; default: 1.1 x the bounding-box diagonal of the validation
            features and the first batch (max over ranks), computed once and checkpointed.
        validation_subsample: Use this many random validation rows per step instead of all
            (for very large validation sets; then the self-term is recomputed per step). Drawn
            from the objective's own generator (``seed``), checkpointed, so a resume is exact.
        ot: The Sinkhorn solver. ``"fast"`` (default): our own
            (:class:`~lightning_dv.methods.lossval.sinkhorn.SinkhornDivergence`): geomloss's
            iteration (annealed at ``ot_scaling``) without autograd through the loop, the gradient in the weights
            from the dual potentials ``dD/dw_i = f_ab(i) - f_aa(i)``, and the validation
            self-term ``OT(b, b)`` solved once (exactly up to J = 2048, above from its bounds);
            small CPU batches run the loop on the host (numpy float64).
            With ``ot_scaling=scaling``, the same values as ``"exact"`` to float rounding
            (docs/lossval_speed.md).
            ``"exact"``: geomloss's ``SamplesLoss`` itself (the reference; needed for ``backend``).
        backend: geomloss backend for ``ot="exact"`` (``"tensorized"`` on CPU; ``"online"`` needs
            KeOps, for GPUs and validation sets whose J x J matrix does not fit).
        seed: Seed of the ``validation_subsample`` draws.
        task_loss: ``"auto"``: the paper's bounded ``-log(softmax(z)[y] + 1e-8)`` from
            ``outputs=`` and integer ``targets=`` when given (classification), so the values do
            not depend on how the user writes the loss; otherwise the user's per-sample loss.
            ``"user"``: always the user's per-sample loss.
        signal: What the values are: ``"trajectory"`` (default): each row's standardised descent
            direction of the loss averaged over its first ``window`` epochs (see the module
            docstring); ``"weights"``: the final weights (the paper).
        window: With ``signal="trajectory"``, the number of epochs per row that enter its value
            (default 10, as AUM and NDDV); later epochs, in which the model memorises flipped
            labels, leave it unchanged. ``None``: every epoch of the fit.
        learn_weights: ``None`` (default): learn the weights only where they are read
            (``signal="weights"``, ``DataValuation(model_loss="reweight")`` or ``"objective"``),
            else keep them fixed at ``init`` (no weight state or step; the module docstring says
            why). ``True``: always learn them (the paper; the default before session 6).
            ``False``: never; refused with ``signal="weights"``, a ``constraint`` or a
            ``model_loss`` other than ``"plain"``.

    Example:
        >>> objective = LossVal(validation=torch.randn(100, 8))
        >>> state = objective.build(num_rows=500)
        >>> state.weights is None, state.trajectory.mean().shape  # fixed weights: the trajectory alone
        (True, torch.Size([500]))
        >>> LossVal(validation=torch.randn(100, 8), signal="weights").build(500).weights.all().shape
        torch.Size([500])
    """

    name = "lossval"
    needs = frozenset({"inputs"})

    def __init__(
        self,
        validation: Any = None,
        features: Callable[[Tensor], Tensor] | None = None,
        mass: str = "raw",
        reduction: str = "sum",
        constraint: str = "none",
        exponent: float = 2.0,
        lr: float = 0.01,
        init: float = 1.0,
        blur: float = 0.05,
        scaling: float = 0.5,
        p: int = 2,
        diameter: float | None = None,
        validation_subsample: int | None = None,
        backend: str = "tensorized",
        seed: int = 0,
        ot: str = "fast",
        task_loss: str = "auto",
        signal: str = "trajectory",
        window: int | None = 10,
        ot_scaling: float | None = None,
        learn_weights: bool | None = None,
    ) -> None:
        check_choice("mass", mass, MASSES)
        check_choice("signal", signal, SIGNALS)
        check_window(window)
        check_choice("task_loss", task_loss, TASK_LOSSES)
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("ot", ot, OT_SOLVERS)
        check_choice("backend", backend, BACKENDS)
        check_choice("p", p, (1, 2))  # geomloss's point-cloud costs |x - y| and |x - y|^2 / 2
        if ot == "fast" and backend != "tensorized":
            raise ValueError(
                f"`backend={backend!r}` selects a geomloss backend, which only `ot='exact'` uses; pass "
                "`LossVal(ot='exact', backend=...)`, or drop `backend` for the fast solver."
            )
        check_choice("constraint", constraint, CONSTRAINTS)
        if lr <= 0:
            raise ValueError(f"`lr` must be > 0; got {lr}.")
        check_schedule(
            diameter=diameter, blur=blur, scaling=scaling, solve_scaling=ot_scaling, solve_name="ot_scaling"
        )
        if ot_scaling is not None and ot != "fast":
            raise ValueError(
                f"`ot_scaling={ot_scaling}` sets the fast solver's annealing, which `ot={ot!r}` does not use; "
                "drop `ot_scaling`, or use `ot='fast'`."
            )
        check_learn_weights(learn_weights)
        if learn_weights is False and signal == "weights":
            raise ValueError(
                "`signal='weights'` reads the learned weights, but `learn_weights=False` keeps them fixed: pass "
                "`learn_weights=True` (or leave it None), or use `signal='trajectory'`."
            )
        if learn_weights is False and constraint != "none":
            raise ValueError(
                f"`constraint={constraint!r}` constrains learned weights, but `learn_weights=False` keeps them "
                "fixed at `init`: drop `constraint`, or pass `learn_weights=True`."
            )
        if validation_subsample is not None and validation_subsample < 1:
            raise ValueError(f"`validation_subsample` must be >= 1; got {validation_subsample}.")
        self.validation_inputs = None if validation is None else validation_inputs(validation)
        self.task_loss = task_loss
        self.signal, self.window = signal, window
        self.learn_weights = learn_weights
        self._model_loss = "plain"  # what DataValuation trains the model on (bind_model_loss)
        self.features = features or flatten_features
        self.mass, self.reduction, self.constraint = mass, reduction, constraint
        self.exponent, self.lr, self.init = float(exponent), float(lr), float(init)
        self.blur, self.scaling, self.p, self.ot_scaling = blur, scaling, p, ot_scaling
        #: the ratio the fast solver anneals at
        self.solve_scaling = min(DEFAULT_OT_SCALING, scaling) if ot_scaling is None else ot_scaling
        self.fixed_diameter = diameter
        self.validation_subsample = validation_subsample
        self.backend, self.ot = backend, ot
        self._subsample_rng = torch.Generator().manual_seed(int(seed))
        self._val_features: Tensor | None = None
        self._divergence: SinkhornDivergence | CachedSinkhornDivergence | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def learned(self) -> bool:
        """Whether this fit learns the weights: ``learn_weights``, or (None) where the values or the
        model read them (``signal="weights"``, ``model_loss="reweight"`` / ``"objective"``)."""
        if self.learn_weights is not None:
            return self.learn_weights
        return self.signal == "weights" or self._model_loss != "plain"

    def bind_model_loss(self, model_loss: str) -> None:
        check_serves_model_loss("LossVal", self.learn_weights, model_loss)
        self._model_loss = model_loss

    def build(self, num_rows: int) -> LossValState:
        if not self.learned:
            return LossValState(num_rows, None, window=self.window)
        weights = SampleWeights(num_rows, init=self.init, constraint=self.constraint)
        return LossValState(num_rows, weights, window=self.window)

    def state_dict(self) -> dict[str, Any]:
        return {"subsample_rng": self._subsample_rng.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "subsample_rng" in state_dict:
            self._subsample_rng.set_state(state_dict["subsample_rng"])

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: nn.Module) -> None:
        if self.validation_inputs is None:
            self.validation_inputs = validation_from_trainer(trainer)
        x_val = self.validation_inputs.to(pl_module.device)
        with torch.no_grad():
            feats = self.features(x_val)
        if not isinstance(feats, Tensor) or feats.ndim != 2:
            raise ValueError(
                "`features` must map a batch of inputs to a 2-D tensor (batch, dim); on the validation "
                f"inputs it returned {type(feats).__name__} of shape {tuple(getattr(feats, 'shape', ()))}."
            )
        self._val_features = feats.detach().float()
        self._divergence = None

    def _val_weights(self, j: int, device: torch.device) -> Tensor:
        return torch.full((j,), 1.0 / j if self.mass == "uniform" else 1.0, device=device)

    def _ensure_divergence(self, state: LossValState, batch_features: Tensor) -> None:
        if self._divergence is not None:  # built once per fit, after the diameter
            return
        if not self._diameter_known(state):
            d = self.fixed_diameter
            if d is None:
                # Fixed once per fit (and checkpointed): a per-batch diameter would change
                # geomloss's epsilon schedule every step and sync the host on each call.
                local = torch.tensor(1.1 * bounding_diameter(self._val_features, batch_features))
                d = float(all_reduce_max(local.to(batch_features.device)))
            state.diameter.fill_(max(d, 1e-6))
        if self.validation_subsample is None:
            y = self._val_features
            self._divergence = self._solver(y, self._val_weights(y.shape[0], y.device), float(state.diameter))

    def _solver(self, y: Tensor, b: Tensor, diameter: float) -> SinkhornDivergence | CachedSinkhornDivergence:
        if self.ot == "fast":
            return SinkhornDivergence(
                y, b, diameter, self.p, self.blur, self.scaling, solve_scaling=self.solve_scaling
            )
        return CachedSinkhornDivergence(y, b, diameter, self.p, self.blur, self.scaling, self.backend)

    @staticmethod
    def _diameter_known(state: LossValState) -> bool:
        return bool(torch.isfinite(state.diameter))

    def _step_solver(self, state: LossValState, batch_features: Tensor):
        """This step's OT solver: the fit's own, or one on this step's validation subsample."""
        self._ensure_divergence(state, batch_features)
        if self.validation_subsample is None:
            return self._divergence
        y = self._val_features
        k = min(self.validation_subsample, y.shape[0])
        sub = y[torch.randperm(y.shape[0], generator=self._subsample_rng)[:k].to(y.device)]
        return self._solver(sub, self._val_weights(k, y.device), float(state.diameter))

    @staticmethod
    def _fp32(device_type: str):
        """The OT term runs in fp32 even under AMP: D**2 ~ 1e7 overflows fp16."""
        amp = torch.is_autocast_enabled(device_type)
        return torch.autocast(device_type=device_type, enabled=False) if amp else contextlib.nullcontext()

    def divergence(self, state: LossValState, weights: Tensor, batch_features: Tensor) -> Tensor:
        """The debiased Sinkhorn divergence of the weighted batch against the validation set (fp32)."""
        solver = self._step_solver(state, batch_features)
        a = weights / weights.sum() if self.mass == "uniform" else weights
        with self._fp32(batch_features.device.type):
            return solver(a.float(), batch_features.float())

    def _fixed_weight_gradient(
        self, state: LossValState, per_sample: Tensor, feats: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(loss, dloss/dw)`` at ``w = init`` for every row of the batch, in closed form from the fast
        solver's dual potentials (float64, no autograd graph):

            dloss/dw_i = dL/dw_i * D**e + L * e * D**(e - 1) * dD/dw_i,    dL/dw_i = l_i (sum) or l_i / B (mean)

        with ``dD/dw_i = dS/da_i`` at raw masses and ``(dS/da_i - a . dS/da) / sum w`` at uniform ones."""
        solver = self._step_solver(state, feats)
        n = feats.shape[0]
        w = torch.full((n,), self.init, device=feats.device, dtype=torch.float64)
        total = w.sum()
        a = w / total if self.mass == "uniform" else w
        with self._fp32(feats.device.type):
            if isinstance(solver, SinkhornDivergence):
                d, grad_a = solver.solve(a, feats)
                d, grad_a = d.to(w.device), grad_a.to(w.device)
            else:  # geomloss (ot="exact"): its gradient by autograd
                leaf = a.float().requires_grad_(True)
                with torch.enable_grad():
                    value = solver(leaf, feats.float())
                    (grad_a,) = torch.autograd.grad(value, leaf)
                d, grad_a = value.detach().double(), grad_a.double()
        dd = (grad_a - (a * grad_a).sum()) / total if self.mass == "uniform" else grad_a
        losses = per_sample.detach().double()
        scale = 1.0 if self.reduction == "sum" else 1.0 / n
        task = (w * losses).sum() * scale
        e = self.exponent
        grad = losses * scale * d**e + task * e * d ** (e - 1) * dd
        return (task * d**e).float(), grad

    def loss(self, state: nn.Module, step: ValuationStep) -> Tensor:
        if step.inputs is None:
            raise ValueError(
                "LossVal needs the batch inputs: call `self.valuation_loss(per_sample, idx, inputs=x, ...)`."
            )
        if self._val_features is None:
            raise RuntimeError("LossVal was not started: attach it through the DataValuation callback.")
        with torch.no_grad():
            feats = self.features(step.inputs)
        feats = feats.detach().float().reshape(feats.shape[0], -1)
        if feats.shape[0] != step.idx.shape[0]:
            raise ValueError(
                f"`features` returned {feats.shape[0]} rows for a batch of {step.idx.shape[0]} samples; "
                "it must return one feature vector per sample."
            )
        if feats.shape[1] != self._val_features.shape[1]:
            raise ValueError(
                f"the batch features have dimension {feats.shape[1]} but the validation features have "
                f"{self._val_features.shape[1]}: pass validation inputs shaped like the training inputs, "
                "or a `features=` function that maps both to the same space."
            )
        per_sample = step.per_sample_loss
        if self.task_loss == "auto" and is_classification(step.outputs, step.targets):
            per_sample = bounded_cross_entropy(step.outputs, step.targets.to(step.outputs.device))
        if state.weights is None:
            # The model never sees fixed weights: the rows' gradient is read off now (no backward
            # hook, no weight step) and the returned loss drives nothing.
            loss, grad = self._fixed_weight_gradient(state, per_sample, feats)
            state.trajectory.update(step.idx, standardised_descent(grad))
            return loss
        w = state.weights(step.idx)
        weighted = w.to(per_sample.dtype) * per_sample
        task = weighted.sum() if self.reduction == "sum" else weighted.mean()
        d = self.divergence(state, w, feats)
        loss = task * d.to(task.dtype) ** self.exponent
        if self.signal == "trajectory" and w.requires_grad:
            w.register_hook(_TrajectoryHook(state.trajectory, step.idx))
        return loss

    def on_train_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: nn.Module
    ) -> None:
        state.trajectory.reduce()

    def values(self, state: nn.Module) -> Tensor:
        if self.signal == "trajectory":
            return state.trajectory.mean()
        return state.weights.all()

    def model_weights(self, state: nn.Module, idx: Tensor) -> Tensor:
        """The learned weights clamped at zero: a row LossVal drives negative stops counting."""
        return state.weights(idx).detach().clamp(min=0)

    def after_optimizer_step(self, state: nn.Module) -> None:
        if state.weights is not None:
            state.weights.project_()

    def configure_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.lr)
