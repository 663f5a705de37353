"""NDDV (Liang, Gao, Zhang, "Neural Dynamic Data Valuation", arXiv 2404.19557) as a loss wrapper.

NDDV views training as a mean-field stochastic optimal control problem and reads the value of a
training row at the terminal time from its state and costate. This objective carries the three
parts of the method that need only the model's outputs, so it works on any LightningModule:

1. **Re-weighting.** Each row gets a weight ``w_i > 0`` and the task loss is the weighted MEAN
   ``sum_i w_i l_i / sum_i w_i`` over the batch. ``weighting="softplus"``: one learnable weight
   per row, kept positive by softplus, learned jointly with the model (the method card's
   formulation). ``weighting="meta"``: the paper's weight network ``w_i = V_phi(l_i)``, a small
   sigmoid MLP of the row's loss, trained bi-level on a small clean meta set (Meta-Weight-Net
   style): one differentiable SGD pseudo-step of the user's model on the weighted loss
   (``torch.func.functional_call``), the meta loss of the pseudo-updated model on a meta batch,
   its gradient with respect to ``phi`` only, an Adam step on ``phi``; the real model then trains
   on the weighted loss with the UPDATED weights. Unlike the authors' code, ``phi`` really
   receives that gradient (their costates are detached, so the weight network never trains).

2. **Mean field.** ``mu`` is the weighted mean of the terminal states over the training set:
   ``mu = sum_i w_i X_T,i / sum_i w_i`` with ``X_T,i`` the output probabilities of row ``i``
   (recorded when the row is seen). It is accumulated during the epoch, every row counted exactly
   once across all ranks (sampler padding removed), and all-reduced at epoch end. The
   model-agnostic coupling with interaction strength ``a`` is the mean-field running cost

       C = (a / 2) * mean_i || X_T,i - mu ||^2

   added to the loss: its negative gradient with respect to the state is ``a * (mu - X_T,i)``,
   the paper's mean-field drift, applied at the output layer. (With
   :class:`~lightning_dv.methods.nddv.dynamics.ControlledDynamicsNet`, whose dynamics already carry the drift in
   state space, the objective also keeps the network's own ``mean_field`` up to date; pass
   ``interaction=0`` to reproduce the paper's model with no output-level coupling.) Before the
   first epoch end ``mu`` is the uniform distribution.

3. **Value.** Terminal state times costate at the output, per row::

       v_i = -(1/K) sum_k X_T,ik * dPhi_i / dX_T,ik = (w_i / K) * (<X_T,i, q_i> - <X_T,i, softmax(X_T,i)>)

   with ``X_T,i`` the probability vector, ``q_i`` the one-hot (or soft) label and ``Phi_i = w_i *
   CE(X_T,i, q_i)`` the paper's terminal cost, the cross-entropy evaluated on the terminal state
   (its network ends in a softmax and the loss applies log-softmax to that state). The costate
   ``dPhi_i / dX_T,i = w_i (softmax(X_T,i) - q_i)`` is computed per row in closed form, so the
   value does not depend on the batch size (the authors' scales with 1/B through a batch-mean
   loss). Note that with the cost ``-log X_T,iy`` instead, ``X_T * costate`` is ``-w_i`` for
   every row and would carry no information beyond the weight.

   The paper calibrates by the marginal contribution ``phi_i = v_i - mean_{j != i} v_j``. That
   map is affine and keeps any heavy tail (the authors' values have one; here ``|v_i| <= w_i / K``
   but the learned weights are unbounded), which lets one extreme row own a 2-means cluster, so
   the exported value (``calibration="robust"``, the default) is the median/MAD standard score
   ``z_i`` of ``phi_i`` clipped to ``+-fence`` (default ``max(3, 0.5 sqrt(N))``): one isolated row
   only forms its own 2-means cluster beyond ``~0.8 sqrt(N)`` bulk standard deviations, so no
   outlier can, while the bulk, where the noisy rows sit, is left exactly as it is. Chosen by
   measurement (benchmarks/bench_nddv.py; digits, breast_cancer, gaussian at 10% and 20% label
   noise, 3 seeds, 20 epochs; mean 2-means F1 with softplus / meta weighting): uncalibrated 0.678
   / 0.779, clipped score 0.678 / 0.771, while a bounded ``tanh(z / s)`` squash cost F1 (s = 3, 5,
   10, 20: 0.575, 0.615, 0.667, 0.676 with softplus) because it compresses the low tail in which
   the noisy rows lie; a rank (quantile) transform makes the values uniform and 2-means then cuts
   at the median. The values are thus in robust standard deviations.
   ``calibration="marginal"`` exports ``phi_i`` as is.
   Values are recorded for every row every epoch (rows not seen in an epoch keep their last
   value), so the callback records a trajectory per row. By default (``aggregate="mean"``) the
   exported value averages ``v_i`` over the epochs seen: late in training a network memorises
   noisy labels and their terminal value rises, and the average keeps the early evidence
   (measured on digits with 10% label noise, 20 epochs, 3 seeds: AUROC 0.961 and F1 0.480 with
   the last epoch's value, 0.994 and 0.620 with the average).

Classification only (integer labels, or soft labels of shape ``(B, K)``; a single binary logit
is read as two classes); regression targets are refused with an error.

Practical notes: the meta step runs once per ``training_step`` call (so once per micro-batch
under gradient accumulation), costs a second-order backward through the user's graph plus one
forward of the meta batch, and leaves the model's buffers (BatchNorm statistics) untouched; the
pseudo-step uses the weighted task loss without the coupling term. Each rank keeps this epoch's
per-row records (row, value, weight, the ``K`` output probabilities) until the epoch-end sync,
``O(N K / world_size)`` floats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lightning_dv._validation import check_choice
from lightning_dv.distributed import all_reduce_max, all_reduce_sum, gather_rows, is_distributed
from lightning_dv.methods.base import ValuationObjective, ValuationStep
from lightning_dv.methods.nddv.dynamics import ControlledDynamicsNet
from lightning_dv.methods.weights import Float32Module, SampleWeights

if TYPE_CHECKING:
    import lightning.pytorch as pl

WEIGHTINGS = ("softplus", "meta")
CALIBRATIONS = ("robust", "marginal")
AGGREGATES = ("mean", "last")
_EPS = 1e-12


# -- the maths, one function each --------------------------------------------------------------
def terminal_probabilities(outputs: Tensor) -> Tensor:
    """The terminal state ``X_T``: class probabilities ``(B, K)`` from logits (differentiable).

    A single logit per row (shape ``(B,)`` or ``(B, 1)``) is a binary classifier: ``[1 - s, s]``
    with ``s = sigmoid(logit)``.

    Example:
        >>> terminal_probabilities(torch.zeros(2, 4))[0].tolist()
        [0.25, 0.25, 0.25, 0.25]
    """
    z = outputs.float()
    if z.ndim == 1 or (z.ndim == 2 and z.shape[1] == 1):
        s = torch.sigmoid(z.reshape(-1))
        return torch.stack([1 - s, s], dim=1)
    if z.ndim != 2:
        raise ValueError(
            f"NDDV needs outputs of shape (batch, classes); got {tuple(z.shape)}. Flatten per-position "
            "outputs into rows, or pass the per-row logits."
        )
    return torch.softmax(z, dim=1)


def target_distribution(targets: Tensor, num_classes: int) -> Tensor:
    """The label of each row as a distribution ``(B, K)``: one-hot for class indices, soft labels as is.

    Raises:
        ValueError: for regression targets (floating point, one per row).

    Example:
        >>> target_distribution(torch.tensor([2, 0]), 3).tolist()
        [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    if not isinstance(targets, Tensor):
        targets = torch.as_tensor(np.asarray(targets))
    if targets.is_floating_point():
        if targets.ndim == 2 and targets.shape[1] == num_classes and num_classes >= 2:
            return targets.float()
        raise ValueError(
            f"NDDV values classification rows; it got floating-point targets of shape {tuple(targets.shape)}, "
            "which look like regression. The terminal-state x costate value needs class probabilities: pass "
            "integer class labels (cast binary 0/1 labels with `.long()`) or soft labels of shape "
            "(batch, classes), or use LossVal for regression."
        )
    labels = targets.reshape(-1).long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for outputs with {num_classes} classes; got "
            f"[{int(labels.min())}, {int(labels.max())}]."
        )
    return F.one_hot(labels, num_classes).float()


def state_costate_value(probs: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Per-row value ``v_i = -(1/K) sum_k X_T,ik dPhi_i/dX_T,ik`` for ``Phi_i = w_i CE(X_T,i, q_i)``.

    The costate ``w_i (softmax(X_T,i) - q_i)`` is the gradient of row ``i``'s own terminal cost,
    so the value does not depend on the other rows of the batch.

    Example:
        >>> p = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
        >>> q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> v = state_costate_value(p, q, torch.ones(2))
        >>> bool(v[0] > 0 > v[1])
        True
    """
    costate = weight.unsqueeze(1) * (torch.softmax(probs, dim=1) - target)
    return -(probs * costate).mean(dim=1)


def marginal_calibration(raw: Tensor) -> Tensor:
    """The paper's calibration ``phi_i = v_i - (1 / (N - 1)) sum_{j != i} v_j``."""
    n = raw.numel()
    if n < 2:
        return raw.clone()
    return raw * (1 + 1 / (n - 1)) - raw.sum() / (n - 1)


def robust_score(x: Tensor) -> Tensor:
    """Median/MAD standard score ``(x - median) / (1.4826 MAD)`` (the mean absolute deviation if MAD is 0).

    Example:
        >>> robust_score(torch.tensor([1.0, 2.0, 3.0, 100.0])).round(decimals=2).tolist()
        [-0.67, 0.0, 0.67, 66.1]
    """
    x = x.double()
    med = x.median()
    scale = 1.4826 * (x - med).abs().median()
    if not scale > 0:  # more than half the rows tie
        scale = (x - med).abs().mean()
    if not scale > 0:
        return torch.zeros_like(x)
    return (x - med) / scale


def robust_clip(x: Tensor, fence: float | None = None, upper_scale: float = 1.0) -> Tensor:
    """Robust standard score clipped to ``[-fence, fence]``: the bulk is untouched, no row can own a cluster.

    A single row at distance ``d`` from ``n`` others of standard deviation ``s`` forms its own
    2-means cluster only when ``d^2 > (2 / pi) n s^2``, i.e. ``d > ~0.8 sqrt(n) s``. The default
    fence ``max(3, 0.5 sqrt(n))`` robust standard deviations stays below that, whatever the tail.
    ``upper_scale < 1`` then compresses the scores above the median (strictly monotone, so the
    order of the rows, hence AUROC and any ranking, is unchanged).

    Example:
        >>> v = torch.cat([torch.linspace(-1, 1, 99), torch.tensor([1e6])])
        >>> out = robust_clip(v)
        >>> float(out.max()) == 0.5 * 100 ** 0.5 and bool((out.argsort()[:99] == v.argsort()[:99]).all())
        True
    """
    fence = max(3.0, 0.5 * x.numel() ** 0.5) if fence is None else float(fence)
    z = robust_score(x).clamp(-fence, fence)
    return torch.where(z > 0, z * upper_scale, z).float()


class WeightNet(nn.Module):
    """The paper's weight network ``V_phi(l)``: loss -> Linear -> ReLU -> Linear -> sigmoid, in (0, 1)."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, loss: Tensor) -> Tensor:
        return torch.sigmoid(self.net(loss.reshape(-1, 1).to(self.net[0].weight.dtype))).reshape(-1)


# -- learnable and synchronised state -----------------------------------------------------------
def _frozen(t: Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


class _EpochLog:
    """Per-rank records of the current epoch, synchronised and cleared at epoch end.

    Deliberately not buffers: DDP re-broadcasts buffers from rank 0 before every forward, which
    would overwrite each rank's own records.
    """

    def __init__(self) -> None:
        self.rows: list[Tensor] = []
        self.value: list[Tensor] = []
        self.weight: list[Tensor] = []
        self.state: list[Tensor] = []
        self.dynamics: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {}

    def __bool__(self) -> bool:
        return bool(self.rows)


class NDDVState(Float32Module):
    """NDDV's per-fit state, registered on the LightningModule by the callback.

    The per-row statistics (``raw_value``, ``value_sum``, ``weight``, ``seen`` = number of epochs
    the row was seen) and the mean field are
    parameters with ``requires_grad=False`` rather than buffers: they change only at epoch end,
    identically on every rank, and DDP would otherwise re-broadcast ``O(N)`` buffers before
    every forward. They are checkpointed like any parameter.
    """

    def __init__(self, num_samples: int, weighting: str, hidden: int) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1; got {num_samples}.")
        self.num_samples = int(num_samples)
        self.weights = (
            SampleWeights(num_samples, init=1.0, constraint="softplus") if weighting == "softplus" else None
        )
        self.weight_net = WeightNet(hidden) if weighting == "meta" else None
        if self.weight_net is not None:
            for p in self.weight_net.parameters():
                p.requires_grad_(False)  # trained by the objective's own meta step, invisible to DDP
        self.raw_value = _frozen(torch.zeros(num_samples))
        self.value_sum = _frozen(torch.zeros(num_samples))
        self.weight = _frozen(torch.ones(num_samples))
        self.seen = _frozen(torch.zeros(num_samples))
        self.mean_field = _frozen(torch.zeros(0))  # (K,) once the number of classes is known
        self.meta_steps = _frozen(torch.zeros(()))
        self.epoch_log = _EpochLog()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # The mean field is sized lazily (K is known at the first step): match the checkpoint.
        incoming = state_dict.get(prefix + "mean_field")
        if incoming is not None and incoming.shape != self.mean_field.shape:
            self.mean_field = _frozen(torch.zeros_like(incoming, device=self.mean_field.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _owned_entries(rows: Tensor, num_rows: int) -> Tensor:
    """Mask of this rank's records that stand for their row: each row counted once over all ranks.

    Within a rank the latest record of a row wins; across ranks (the sampler pads the last
    batch with repeated rows) the highest rank that saw the row wins.
    """
    n = rows.numel()
    pos = torch.arange(n, device=rows.device)
    latest = torch.full((num_rows,), -1, dtype=torch.long, device=rows.device)
    latest.scatter_reduce_(0, rows, pos, reduce="amax")
    keep = latest[rows] == pos
    rank = dist.get_rank() if is_distributed() else 0
    claim = torch.full((num_rows,), -1, dtype=torch.long, device=rows.device)
    claim[rows] = rank
    claim = all_reduce_max(claim)
    return keep & (claim[rows] == rank)


def _weighted_mean_once(rows: Tensor, states: Tensor, weights: Tensor, owned: Tensor) -> Tensor | None:
    """``sum_i w_i X_i / sum_i w_i`` over the owned records of every rank (None if no weight)."""
    w = weights[owned].double()
    local = torch.cat([(w.unsqueeze(1) * states[owned].double()).sum(0), w.sum().reshape(1)])
    total = all_reduce_sum(local)
    if not total[-1] > 0:
        return None
    return (total[:-1] / total[-1]).float()


# -- the objective -------------------------------------------------------------------------------
class NDDV(ValuationObjective):
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
            over the epochs it was seen (the value integrated along training, robust to late
            memorisation of noisy labels); ``"last"``: the value of the latest epoch.
        lr: Adam learning rate of the weights (softplus) or of the weight network (meta).
            Default 0.01 for softplus (0.05 measured worse), 1e-3 for meta (Meta-Weight-Net's setting).
        pseudo_lr: Step size of the differentiable SGD pseudo-update in the meta step.
        meta_batch_size: Meta rows per meta step (all of them when the meta set is smaller).
        meta_loss: ``f(outputs, targets) -> scalar`` on the meta batch; default cross-entropy
            (binary cross-entropy for a single logit).
        hidden: Width of the weight network.
        seed: Seed of the meta-batch sampling (deterministic and resumable).

    Example:
        >>> objective = NDDV()
        >>> state = objective.build(num_samples=100)
        >>> objective.values(state).shape
        torch.Size([100])
        >>> from lightning_dv.callbacks import DataValuation
        >>> x_meta, y_meta = torch.randn(100, 8), torch.randint(0, 3, (100,))
        >>> valuation = DataValuation(NDDV(weighting="meta", meta=(x_meta, y_meta)))
        >>> valuation.objective.name  # then Trainer(callbacks=[valuation]).fit(...) as for LossVal
        'nddv'
    """

    name = "nddv"

    def __init__(
        self,
        weighting: str = "softplus",
        meta: tuple[Any, Any] | None = None,
        interaction: float = 1.0,
        calibration: str = "robust",
        aggregate: str = "mean",
        fence: float | None = None,
        upper_scale: float = 0.1,
        lr: float | None = None,
        pseudo_lr: float = 0.1,
        meta_batch_size: int = 100,
        meta_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
        hidden: int = 100,
        seed: int = 0,
    ) -> None:
        check_choice("weighting", weighting, WEIGHTINGS)
        check_choice("calibration", calibration, CALIBRATIONS)
        check_choice("aggregate", aggregate, AGGREGATES)
        if weighting == "meta" and meta is None:
            raise ValueError(
                "`weighting='meta'` trains the weight network on a small clean meta set: pass "
                "`meta=(x_meta, y_meta)` (about 100 trusted rows), or use `weighting='softplus'`."
            )
        if interaction < 0:
            raise ValueError(f"`interaction` must be >= 0; got {interaction}.")
        if not 0 < upper_scale <= 1:
            raise ValueError(f"`upper_scale` must lie in (0, 1]; got {upper_scale}.")
        if fence is not None and fence <= 0:
            raise ValueError(f"`fence` must be > 0 (robust standard deviations); got {fence}.")
        if lr is not None and lr <= 0:
            raise ValueError(f"`lr` must be > 0; got {lr}.")
        if pseudo_lr <= 0 or meta_batch_size < 1 or hidden < 1:
            raise ValueError(
                f"`pseudo_lr`, `meta_batch_size` and `hidden` must be positive; got {pseudo_lr}, "
                f"{meta_batch_size}, {hidden}."
            )
        self.weighting, self.calibration, self.aggregate = weighting, calibration, aggregate
        self.interaction, self.fence, self.upper_scale = float(interaction), fence, float(upper_scale)
        self.lr = float(lr if lr is not None else (0.01 if weighting == "softplus" else 1e-3))
        self.pseudo_lr, self.meta_batch_size = float(pseudo_lr), meta_batch_size
        self.hidden, self.seed = hidden, seed
        self.meta_loss = meta_loss or _default_meta_loss
        self.meta = None if meta is None else _meta_tensors(meta)
        self._meta_optimizer: torch.optim.Optimizer | None = None
        self._stashed_meta_optimizer: dict[str, Any] | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def build(self, num_samples: int) -> NDDVState:
        self._meta_optimizer = None
        return NDDVState(num_samples, self.weighting, self.hidden)

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

    def _ensure_meta_optimizer(self, state: NDDVState) -> torch.optim.Optimizer:
        if self._meta_optimizer is None:
            # The weight network is trained here, not by the callback (its parameters do not
            # require grad, so DDP and the callback leave them alone); state in our checkpoint entry.
            self._meta_optimizer = torch.optim.Adam(state.weight_net.parameters(), lr=self.lr)
            if self._stashed_meta_optimizer is not None:
                self._meta_optimizer.load_state_dict(self._stashed_meta_optimizer)
                self._stashed_meta_optimizer = None
        return self._meta_optimizer

    # -- the loss -------------------------------------------------------------------------------
    def loss(self, state: nn.Module, step: ValuationStep) -> Tensor:
        if step.outputs is None or step.targets is None:
            raise ValueError(
                "NDDV reads the terminal state from the model outputs: call "
                "`self.valuation_loss(per_sample, idx, outputs=logits, targets=y)`."
            )
        per_sample = step.per_sample_loss
        probs = terminal_probabilities(step.outputs)
        target = target_distribution(step.targets, probs.shape[1]).to(probs.device)
        if target.shape[0] != probs.shape[0]:
            raise ValueError(
                f"`targets` has {target.shape[0]} rows but `outputs` has {probs.shape[0]}; pass one label per row."
            )
        if state.mean_field.numel() != probs.shape[1]:
            # Before the first epoch end: the uniform distribution (the max-entropy terminal state).
            state.mean_field = _frozen(
                torch.full((probs.shape[1],), 1.0 / probs.shape[1], device=probs.device)
            )
        dynamics = self._dynamics_states(step)
        if self.weighting == "softplus":
            w = state.weights(step.idx)
        else:
            if torch.is_grad_enabled() and step.module is not None and step.module.training:
                self.meta_step(state, step)
            with torch.no_grad():
                w = state.weight_net(per_sample.detach())
        task = (w.to(per_sample.dtype) * per_sample).sum() / (w.sum().to(per_sample.dtype) + _EPS)
        with torch.no_grad():
            wd = w.detach().float()
            p = probs.detach()
            log = state.epoch_log
            log.rows.append(step.idx.detach())
            log.value.append(state_costate_value(p, target, wd))
            log.weight.append(wd)
            log.state.append(p)
            for name, terminal in dynamics.items():
                log.dynamics.setdefault(name, []).append((step.idx.detach(), terminal, wd))
        if self.interaction == 0:
            return task
        mu = state.mean_field.to(probs.dtype)
        coupling = 0.5 * self.interaction * ((probs - mu) ** 2).sum(dim=1).mean()
        return task + coupling.to(task.dtype)

    @staticmethod
    def _dynamics_states(step: ValuationStep) -> dict[str, Tensor]:
        """Terminal states of the ControlledDynamicsNet modules that produced this batch's outputs."""
        if step.module is None:
            return {}
        out = {}
        for name, mod in step.module.named_modules():
            x = getattr(mod, "terminal_state", None) if isinstance(mod, ControlledDynamicsNet) else None
            if x is not None and x.shape[0] == step.idx.shape[0]:
                out[name] = x.detach().float()
        return out

    # -- the meta step --------------------------------------------------------------------------
    def meta_gradient(self, state: NDDVState, step: ValuationStep) -> tuple[list[Tensor], Tensor]:
        """Gradient of the meta loss after a differentiable pseudo-step, w.r.t. the weight network.

        ``theta' = theta - pseudo_lr * grad_theta(sum_i V_phi(l_i) l_i / sum_i V_phi(l_i))``, then
        ``grad_phi meta_loss(f(x_meta; theta'), y_meta)``. ``theta`` are the LightningModule's
        trainable parameters (the objective's own excluded); buffers are copied so the pseudo
        forward cannot change BatchNorm statistics.

        Returns:
            ``(gradients, meta_loss)``; gradients are this rank's (not averaged).
        """
        module = step.module
        if module is None:
            raise RuntimeError("the meta step needs the LightningModule (`ValuationStep.module`).")
        ours = {id(p) for p in state.parameters()}
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad and id(p) not in ours]
        phi_names = [n for n, _ in state.weight_net.named_parameters()]
        phi = [p.detach().requires_grad_(True) for p in state.weight_net.parameters()]
        per_sample = step.per_sample_loss
        w = functional_call(state.weight_net, dict(zip(phi_names, phi)), (per_sample.detach(),))
        inner = (w * per_sample).sum() / (w.sum() + _EPS)  # fp32 weights promote a half-precision loss
        grads = torch.autograd.grad(
            inner, [p for _, p in named], create_graph=True, retain_graph=True, allow_unused=True
        )
        fast = {n: p - self.pseudo_lr * g for (n, p), g in zip(named, grads) if g is not None}
        if not fast:
            raise RuntimeError(
                "the per-sample loss does not depend on any trainable parameter of the LightningModule, so "
                "the meta step has nothing to update: compute `per_sample` from the model's outputs."
            )
        buffers = {n: b.clone() for n, b in module.named_buffers()}
        x_meta, y_meta = self._meta_batch(state, per_sample.device)
        if x_meta.is_floating_point():  # match the model's precision (arrays often arrive as float64)
            x_meta = x_meta.to(named[0][1].dtype)
        try:
            out = functional_call(module, {**buffers, **fast}, (x_meta,))
        except NotImplementedError as err:
            raise NotImplementedError(
                f"NDDV(weighting='meta') runs the meta set through `{type(module).__name__}.forward`, which is "
                "not defined: implement `forward(x)` to return the outputs that the training step passes as "
                "`outputs=`."
            ) from err
        meta_loss = self.meta_loss(out, y_meta)
        g_phi = torch.autograd.grad(meta_loss, phi, retain_graph=True, allow_unused=True)
        grads_phi = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(phi, g_phi)]
        return grads_phi, meta_loss.detach()

    def meta_step(self, state: NDDVState, step: ValuationStep) -> Tensor:
        """One bi-level update of the weight network (gradients averaged over ranks); returns the meta loss."""
        grads, meta_loss = self.meta_gradient(state, step)
        world = dist.get_world_size() if is_distributed() else 1
        opt = self._ensure_meta_optimizer(state)
        for p, g in zip(state.weight_net.parameters(), grads):
            p.grad = all_reduce_sum(g) / world
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            state.meta_steps.add_(1)
        return meta_loss

    def _meta_batch(self, state: NDDVState, device: torch.device) -> tuple[Tensor, Tensor]:
        x, y = self.meta
        if x.device != device:
            self.meta = (x.to(device), y.to(device))
            x, y = self.meta
        m = x.shape[0]
        if m <= self.meta_batch_size:
            return x, y
        # Seeded by the step count (checkpointed), so a resumed fit draws the same meta batches.
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(state.meta_steps))
        rows = torch.randperm(m, generator=g)[: self.meta_batch_size].to(device)
        return x[rows], y[rows]

    # -- epoch end ------------------------------------------------------------------------------
    @torch.no_grad()
    def sync(self, state: NDDVState, pl_module: nn.Module | None = None) -> None:
        """Merge this epoch's per-row records of every rank into the state (each row once).

        Updates the value and weight of every row seen this epoch (the others keep theirs), the
        mean field, and the ``mean_field`` of every ControlledDynamicsNet in ``pl_module``.
        Collective under DDP: every rank must call it.
        """
        log = state.epoch_log
        device = state.raw_value.device
        n = state.num_samples
        k = state.mean_field.numel()
        if log:
            rows = torch.cat(log.rows).to(device)
            value, weight = torch.cat(log.value).to(device), torch.cat(log.weight).to(device)
            states = torch.cat(log.state).to(device)
        else:  # a rank with no batch still takes part in the collectives
            rows = torch.zeros(0, dtype=torch.long, device=device)
            value, weight, states = (torch.zeros(0, device=device),) * 2 + (torch.zeros(0, k, device=device),)
        owned = _owned_entries(rows, n)
        merged = gather_rows(rows[owned], torch.stack([value[owned], weight[owned]], dim=1), n)
        fresh = ~torch.isnan(merged[:, 0])
        state.raw_value[fresh] = merged[fresh, 0]
        state.weight[fresh] = merged[fresh, 1]
        state.value_sum[fresh] += merged[fresh, 0]
        state.seen[fresh] += 1.0
        if k:
            mu = _weighted_mean_once(rows, states, weight, owned)
            if mu is not None:
                state.mean_field.copy_(mu)
        if pl_module is not None:
            for name, mod in pl_module.named_modules():
                if isinstance(mod, ControlledDynamicsNet):
                    records = log.dynamics.get(name, [])
                    if records:
                        r = torch.cat([t[0] for t in records]).to(device)
                        x = torch.cat([t[1] for t in records]).to(device)
                        w = torch.cat([t[2] for t in records]).to(device)
                    else:
                        r = torch.zeros(0, dtype=torch.long, device=device)
                        x, w = torch.zeros(0, mod.in_features, device=device), torch.zeros(0, device=device)
                    mu = _weighted_mean_once(r, x, w, _owned_entries(r, n))
                    if mu is not None:
                        mod.set_mean_field(mu)
        state.epoch_log = _EpochLog()

    # -- values ---------------------------------------------------------------------------------
    def raw_values(self, state: NDDVState) -> Tensor:
        """Per-row state x costate value: the mean over the epochs the row was seen, or the latest one."""
        if self.aggregate == "last":
            return state.raw_value.detach().clone()
        count = state.seen.detach()
        return torch.where(count > 0, state.value_sum.detach() / count.clamp(min=1), torch.zeros_like(count))

    def marginal_values(self, state: NDDVState) -> Tensor:
        """The paper's calibrated value ``phi_i = v_i - mean_{j != i} v_j`` over the rows seen so far."""
        seen = state.seen.detach() > 0
        raw = self.raw_values(state)
        out = torch.zeros_like(raw)
        if bool(seen.any()):
            out[seen] = marginal_calibration(raw[seen])
        return out

    def values(self, state: nn.Module) -> Tensor:
        phi = self.marginal_values(state)
        if self.calibration == "marginal":
            return phi
        seen = state.seen.detach() > 0
        out = torch.zeros_like(phi)  # rows never seen sit at the median
        if bool(seen.any()):
            out[seen] = robust_clip(phi[seen], self.fence, self.upper_scale).to(out)
        return out

    def extra_columns(self, state: nn.Module) -> dict[str, Tensor]:
        weight = state.weights.all() if state.weights is not None else state.weight.detach()
        count = state.seen.detach()
        mean = torch.where(count > 0, state.value_sum.detach() / count.clamp(min=1), torch.zeros_like(count))
        return {
            "nddv_state_costate": state.raw_value.detach().clone(),  # latest epoch
            "nddv_state_costate_mean": mean,  # mean over the epochs the row was seen
            "nddv_marginal": self.marginal_values(state),
            "nddv_weight": weight.clone(),
        }


def _default_meta_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1):
        return F.binary_cross_entropy_with_logits(outputs.reshape(-1).float(), targets.reshape(-1).float())
    return F.cross_entropy(outputs.float(), targets)


def _meta_tensors(meta: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(meta, (tuple, list)) or len(meta) != 2:
        raise TypeError(f"`meta` must be a pair (x_meta, y_meta); got {type(meta).__name__}.")
    x, y = (torch.as_tensor(np.asarray(t)) if not isinstance(t, Tensor) else t for t in meta)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"`meta` must hold the same, non-zero number of inputs and labels; got {x.shape[0]} and {y.shape[0]}."
        )
    if y.is_floating_point() and y.ndim == 1:
        raise ValueError(
            "`meta` labels are floating point, which looks like regression: NDDV values classification rows. "
            "Pass integer class labels (cast binary 0/1 labels with `.long()`)."
        )
    return (x.float() if x.is_floating_point() else x), y
