"""NDDV (Liang, Gao, Zhang, "Neural Dynamic Data Valuation", arXiv 2404.19557) as a loss wrapper.

Each row gets a weight ``w_i > 0`` (softplus of a learnable raw weight, or the meta-trained weight
network ``V_phi(l_i)``); the task loss is the weighted mean, plus the mean-field coupling::

    loss = sum_i w_i l_i / sum_i w_i + (a / 2) mean_i || X_T,i - mu ||^2,   mu = sum_i w_i X_T,i / sum_i w_i

with ``X_T,i`` the output probabilities of row ``i`` (its terminal state) and ``mu`` accumulated
over the epoch (each row once) and reduced across ranks at epoch end (uniform before the first).
Every time a row is seen its state x costate value ``v_i`` is recorded (see
:mod:`~lightning_dv.methods.nddv.formulas`); the exported value is the robust, clipped score of
the paper's marginal calibration of ``v_i`` averaged over the first ``window`` epochs a row is
seen in (10 by default). Why: late in training the network memorises noisy labels and their
terminal value rises; averaging early epochs only keeps the evidence and makes the values
independent of how long the user trains.

The softplus weights (``learn_weights=``): learned with Adam where something reads them
(``DataValuation(model_loss="reweight")`` or ``"objective"``); with the model on the user's plain
loss (the default) they stay FIXED at 1: ``v_i`` is then the unweighted state x costate value and
``mu`` the plain mean of the terminal states, the state holds no weights (14 bytes per row instead
of 30) and no weight step runs. Why: at ``model_loss="plain"`` the learned weights reach the
values only as the factor ``w_i`` of ``v_i`` and ``mu``'s weighting, and on the protocol the fixed
weights detect as well (docs/nddv.md, "Fixed weights"). Measurements and design history:
docs/nddv.md.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_dv._validation import check_choice, check_window
from lightning_dv.distributed import frozen_parameter
from lightning_dv.methods.base import ValuationObjective, ValuationStep
from lightning_dv.methods.calibration import calibrate, check_calibration
from lightning_dv.methods.nddv.dynamics import ControlledDynamicsNet
from lightning_dv.methods.nddv.formulas import (
    marginal_calibration,
    robust_clip,
    state_costate_value,
    target_labels,
    terminal_probabilities,
    terminal_width,
    weighted_loss,
)
from lightning_dv.methods.nddv.meta import EPS, MetaWeighting, default_meta_loss, meta_tensors
from lightning_dv.methods.nddv.state import NDDVState
from lightning_dv.methods.weight_mode import check_learn_weights, check_serves_model_loss

if TYPE_CHECKING:
    import lightning.pytorch as pl

WEIGHTINGS = ("softplus", "meta")
CALIBRATIONS = ("robust", "marginal")
AGGREGATES = ("mean", "last")

__all__ = ["NDDV", "marginal_calibration", "robust_clip", "state_costate_value", "terminal_probabilities"]


class NDDV(MetaWeighting, ValuationObjective):
    """Neural Dynamic Data Valuation as a training-time objective (see the module docstring).

    Args:
        weighting: ``"softplus"`` (one learnable positive weight per row) or ``"meta"`` (the
            paper's weight network on the per-sample loss, trained bi-level on ``meta``).
        meta: The clean meta set ``(x_meta, y_meta)`` (tensors or arrays) for ``weighting="meta"``
            (100 rows in the paper). The LightningModule's ``forward`` must map a batch of
            ``x_meta`` to the same outputs the training step passes as ``outputs=``: the meta step
            calls it through ``torch.func.functional_call`` with pseudo-updated parameters.
        interaction: Interaction strength ``a`` of the mean-field coupling (0 switches it off).
        calibration: ``"robust"`` (median/MAD standard score clipped at ``fence``; the default) or
            ``"marginal"`` (the paper's ``v_i - mean_{j != i} v_j``, heavy-tailed).
        fence: Clip of the robust score, in robust standard deviations (default ``max(3, 0.5 sqrt(N))``).
        upper_scale: With ``"robust"``, scores above the median are multiplied by this factor
            (order-preserving): the clean bulk becomes compact, so 2-means cuts in the low tail
            where corrupted rows sit instead of inside the clean rows. 1 disables it.
        aggregate: ``"mean"`` (default): a row's value is the mean of its state x costate values
            over the epochs it was seen (the first ``window`` of them); ``"last"``: the value of
            the latest epoch.
        window: With ``aggregate="mean"``, the number of epochs per row that enter the mean
            (default 10): later epochs, in which the model memorises flipped labels, leave the
            values unchanged, so they do not depend on the training length. ``None``: all epochs.
        lr: Adam learning rate of the weights (softplus) or of the weight network (meta).
            Default 0.01 for softplus (0.05 measured worse), 1e-3 for meta (Meta-Weight-Net's setting).
        pseudo_lr: Step size of the differentiable SGD pseudo-update in the meta step.
        meta_batch_size: Meta rows per meta step (all of them when the meta set is smaller).
        meta_loss: ``f(outputs, targets) -> scalar`` on the meta batch; default cross-entropy
            (binary cross-entropy for a single logit).
        hidden: Width of the weight network.
        seed: Seed of the meta-batch sampling (deterministic and resumable).
        learn_weights: Softplus weighting only. ``None`` (default): learn the per-row weights only
            where the model reads them (``DataValuation(model_loss="reweight")`` or
            ``"objective"``), else keep them fixed at 1 (no weight state or step; the module
            docstring says why). ``True``: always learn them (the default before session 6).
            ``False``: never; refused with a ``model_loss`` other than ``"plain"``.

    Example:
        >>> objective = NDDV()
        >>> state = objective.build(num_rows=100)
        >>> objective.values(state).shape, state.weights is None  # fixed weights: no weight state
        (torch.Size([100]), True)
        >>> NDDV(learn_weights=True).build(100).weights.all().shape
        torch.Size([100])
        >>> from lightning_dv.callbacks import DataValuation
        >>> x_meta, y_meta = torch.randn(100, 8), torch.randint(0, 3, (100,))
        >>> valuation = DataValuation(NDDV(weighting="meta", meta=(x_meta, y_meta)))
        >>> valuation.objective.name  # then Trainer(callbacks=[valuation]).fit(...) as for LossVal
        'nddv'
    """

    name = "nddv"
    needs = frozenset({"outputs", "targets", "module"})

    def __init__(
        self,
        weighting: str = "softplus",
        meta: tuple[Any, Any] | str | None = None,
        interaction: float = 1.0,
        calibration: str = "robust",
        aggregate: str = "mean",
        window: int | None = 10,
        fence: float | None = None,
        upper_scale: float = 0.1,
        lr: float | None = None,
        pseudo_lr: float = 0.1,
        meta_batch_size: int = 100,
        meta_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
        hidden: int = 100,
        seed: int = 0,
        learn_weights: bool | None = None,
    ) -> None:
        check_choice("weighting", weighting, WEIGHTINGS)
        check_learn_weights(learn_weights)
        if weighting == "meta" and learn_weights is not None:
            raise ValueError(
                "`learn_weights` sets the per-row softplus weights, but `weighting='meta'` computes the "
                "weights with a weight network trained on the meta set: drop `learn_weights`, or use "
                "`weighting='softplus'`."
            )
        check_choice("calibration", calibration, CALIBRATIONS)
        check_choice("aggregate", aggregate, AGGREGATES)
        if weighting == "meta" and meta is None:
            raise ValueError(
                "`weighting='meta'` trains the weight network on a small clean meta set: pass "
                "`meta=(x_meta, y_meta)` (about 100 trusted rows), or use `weighting='softplus'`."
            )
        if interaction < 0:
            raise ValueError(f"`interaction` must be >= 0; got {interaction}.")
        check_calibration("robust", fence, upper_scale)
        check_window(window)
        if lr is not None and lr <= 0:
            raise ValueError(f"`lr` must be > 0; got {lr}.")
        if pseudo_lr <= 0 or meta_batch_size < 1 or hidden < 1:
            raise ValueError(
                f"`pseudo_lr`, `meta_batch_size` and `hidden` must be positive; got {pseudo_lr}, "
                f"{meta_batch_size}, {hidden}."
            )
        self.weighting, self.calibration, self.aggregate = weighting, calibration, aggregate
        self.window = window if aggregate == "mean" else None
        self.interaction, self.fence, self.upper_scale = float(interaction), fence, float(upper_scale)
        self.lr = float(lr if lr is not None else (0.01 if weighting == "softplus" else 1e-3))
        self.pseudo_lr, self.meta_batch_size = float(pseudo_lr), meta_batch_size
        self.hidden, self.seed = hidden, seed
        self.learn_weights = learn_weights
        self._model_loss = "plain"  # what DataValuation trains the model on (bind_model_loss)
        self.meta_loss = meta_loss or default_meta_loss
        self.meta = None if meta is None else meta_tensors(meta)
        self._meta_optimizer: torch.optim.Optimizer | None = None
        self._stashed_meta_optimizer: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_dynamics_modules", None)  # a weak reference to the module: rebuilt at the next step
        return state

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def learned(self) -> bool:
        """Whether this fit learns per-row softplus weights: ``learn_weights``, or (None) where the
        model reads them (``model_loss="reweight"`` / ``"objective"``). False with the weight network."""
        if self.weighting != "softplus":
            return False
        if self.learn_weights is not None:
            return self.learn_weights
        return self._model_loss != "plain"

    def bind_model_loss(self, model_loss: str) -> None:
        check_serves_model_loss("NDDV", self.learn_weights, model_loss)
        self._model_loss = model_loss

    def build(self, num_rows: int) -> NDDVState:
        self._meta_optimizer = None
        weighting = "fixed" if self.weighting == "softplus" and not self.learned else self.weighting
        return NDDVState(num_rows, weighting, self.hidden, window=self.window)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: nn.Module) -> None:
        if self.weighting == "meta":
            self._ensure_meta_optimizer(state)

    def on_train_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: nn.Module
    ) -> None:
        self.sync(state, pl_module)

    def state_dict(self) -> dict[str, Any]:
        opt = self._meta_optimizer
        return {} if opt is None else {"meta_optimizer": opt.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = state_dict.get("meta_optimizer")
        if sd is None:
            return
        if self._meta_optimizer is not None:
            self._meta_optimizer.load_state_dict(sd)
        else:
            self._stashed_meta_optimizer = sd

    # -- the loss -------------------------------------------------------------------------------
    def loss(self, state: nn.Module, step: ValuationStep) -> Tensor:
        if step.outputs is None or step.targets is None:
            raise ValueError(
                "NDDV reads the terminal state from the model outputs: call "
                "`self.valuation_loss(per_sample, idx, outputs=logits, targets=y)`."
            )
        per_sample = step.per_sample_loss
        outputs = step.outputs
        k = terminal_width(outputs)
        target = target_labels(step.targets, k, check=False).to(outputs.device)
        if target.shape[0] != outputs.shape[0]:
            raise ValueError(
                f"`targets` has {target.shape[0]} rows but `outputs` has {outputs.shape[0]}; pass one label per row."
            )
        if state.mean_field.numel() != k:
            # Before the first epoch end: the uniform distribution (the max-entropy terminal state).
            state.mean_field = frozen_parameter(torch.full((k,), 1.0 / k, device=outputs.device))
        dynamics = self._dynamics_states(step)
        if self.weighting == "softplus":
            w = state.weights(step.idx) if state.weights is not None else per_sample.new_ones(step.idx.shape)
        else:
            if torch.is_grad_enabled() and step.module is not None and step.module.training:
                self.meta_step(state, step)
            with torch.no_grad():
                w = state.weight_net(per_sample.detach())
        self._batch_weights = (step.idx, w.detach())
        # terminal states, values, per-row statistics and mean-field sums: computed for the
        # records of a few dozen steps at once (NDDVState.record)
        state.record(step.idx, outputs.detach(), target, w.detach().float(), dynamics)
        wl = w.to(per_sample.dtype)
        if self.interaction == 0 or not outputs.requires_grad:
            # Detached outputs (``model_loss="plain"`` / ``"reweight"``): the coupling has no
            # gradient to give, and the value of this loss is not used, so it is not computed.
            return weighted_loss(wl, per_sample, eps=EPS)
        probs = terminal_probabilities(outputs)
        mu = state.mean_field.to(probs.dtype)
        return weighted_loss(wl, per_sample, probs, mu, 0.5 * self.interaction / probs.shape[0], EPS)

    def model_weights(self, state: nn.Module, idx: Tensor) -> Tensor | None:
        """The rows' positive weights of the current batch (softplus weights or the weight network's)."""
        if self.weighting == "softplus":  # learned: model_loss="reweight" always learns them
            return state.weights(idx).detach()
        rows, w = getattr(self, "_batch_weights", (None, None))
        if rows is None or rows.shape != idx.shape:
            raise RuntimeError("NDDV.model_weights must follow NDDV.loss on the same batch.")
        return w

    def _dynamics_states(self, step: ValuationStep) -> dict[str, Tensor]:
        """Terminal states of the ControlledDynamicsNet modules that produced this batch's outputs.

        The modules are looked up once per LightningModule (not on every step).
        """
        if step.module is None:
            return {}
        cached = getattr(self, "_dynamics_modules", None)
        if cached is None or cached[0]() is not step.module:
            found = [(n, m) for n, m in step.module.named_modules() if isinstance(m, ControlledDynamicsNet)]
            cached = self._dynamics_modules = (weakref.ref(step.module), found)
        out = {}
        for name, mod in cached[1]:
            x = mod.terminal_state
            if x is not None and x.shape[0] == step.idx.shape[0]:
                out[name] = x.detach().float()
        return out

    # -- epoch end ------------------------------------------------------------------------------
    @torch.no_grad()
    def sync(self, state: NDDVState, pl_module: nn.Module | None = None) -> None:
        """End the epoch on every rank: per-row statistics (each row once), the mean field, and the
        ``mean_field`` of every ControlledDynamicsNet in ``pl_module``. Collective under DDP."""
        state.flush()
        state.stats.reduce()
        mu = state.field.reduce(state.mean_field.numel() or None)
        if mu is not None and state.mean_field.numel():
            state.mean_field.copy_(mu)
        if pl_module is not None:
            for name, mod in pl_module.named_modules():
                if isinstance(mod, ControlledDynamicsNet):
                    mu = state.dynamics_field(name).reduce(mod.in_features)
                    if mu is not None:
                        mod.set_mean_field(mu)

    # -- values ---------------------------------------------------------------------------------
    def raw_values(self, state: NDDVState) -> Tensor:
        """Per-row state x costate value: the mean over the (first ``window``) epochs the row was seen, or the latest."""
        if self.aggregate == "last":
            return state.raw_value.detach().clone()
        return state.value_mean.detach()  # a fresh tensor already

    def marginal_values(self, state: NDDVState) -> Tensor:
        """The paper's calibrated value ``phi_i = v_i - mean_{j != i} v_j`` over the rows seen so far."""
        seen = state.seen.detach() > 0
        raw = self.raw_values(state)
        if bool(seen.all()):  # the usual case after an epoch: no masked copies of N rows
            return marginal_calibration(raw, inplace=True)  # raw is a fresh tensor
        out = torch.zeros_like(raw)
        if bool(seen.any()):
            out[seen] = marginal_calibration(raw[seen])
        return out

    def values(self, state: nn.Module) -> Tensor:
        phi = self.marginal_values(state)
        if self.calibration == "marginal":
            return phi
        return calibrate(phi, "robust", self.fence, self.upper_scale, seen=state.seen.detach() > 0)

    def extra_columns(self, state: nn.Module) -> dict[str, Tensor]:
        weight = state.weight.detach().clone()
        mean = state.value_mean.detach()
        return {
            "nddv_state_costate": state.raw_value.detach().clone(),  # latest epoch
            "nddv_state_costate_mean": mean,  # mean over the (first `window`) epochs the row was seen
            "nddv_marginal": self.marginal_values(state),
            "nddv_weight": weight,
        }
