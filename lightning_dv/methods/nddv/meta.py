"""NDDV's meta weighting: the weight network ``V_phi(l)`` trained bi-level on a small clean meta set.

One step (Meta-Weight-Net style, Shu et al. 2019, as used by NDDV's weight network)::

    theta' = theta - pseudo_lr * grad_theta( sum_i V_phi(l_i) l_i / sum_i V_phi(l_i) )
    phi   <- Adam step on grad_phi meta_loss(f(x_meta; theta'), y_meta)     (averaged over ranks)

Why: the authors' costates are detached, so their weight network never trains; here ``phi``
really receives the gradient of the meta loss through the differentiable pseudo-step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lightning_dv._validation import check_finite_rows
from lightning_dv.distributed import all_reduce_sum, is_distributed
from lightning_dv.io import load_if_path
from lightning_dv.methods.base import ValuationStep

if TYPE_CHECKING:
    from lightning_dv.methods.nddv.state import NDDVState

EPS = 1e-12


class WeightNet(nn.Module):
    """The paper's weight network ``V_phi(l)``: loss -> Linear -> ReLU -> Linear -> sigmoid, in (0, 1).

    Example:
        >>> w = WeightNet(hidden=4)(torch.tensor([0.1, 2.0]))
        >>> w.shape, bool(((w > 0) & (w < 1)).all())
        (torch.Size([2]), True)
    """

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, loss: Tensor) -> Tensor:
        return torch.sigmoid(self.net(loss.reshape(-1, 1).to(self.net[0].weight.dtype))).reshape(-1)


class MetaWeighting:
    """The bi-level meta step of :class:`~lightning_dv.methods.nddv.NDDV` (``weighting="meta"``).

    Uses the objective's ``meta`` pair, ``meta_loss``, ``pseudo_lr``, ``meta_batch_size``,
    ``seed`` and ``lr``; its Adam state is checkpointed through the objective's ``state_dict``.
    """

    meta: tuple[Tensor, Tensor] | None
    pseudo_lr: float
    meta_batch_size: int
    seed: int
    lr: float
    _meta_optimizer: torch.optim.Optimizer | None = None
    _stashed_meta_optimizer: dict[str, Any] | None = None

    def meta_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:  # replaced per instance
        return default_meta_loss(outputs, targets)

    def _ensure_meta_optimizer(self, state: NDDVState) -> torch.optim.Optimizer:
        if self._meta_optimizer is None:
            # The weight network is trained here, not by the callback (its parameters do not
            # require grad, so DDP and the callback leave them alone).
            self._meta_optimizer = torch.optim.Adam(state.weight_net.parameters(), lr=self.lr)
            if self._stashed_meta_optimizer is not None:
                self._meta_optimizer.load_state_dict(self._stashed_meta_optimizer)
                self._stashed_meta_optimizer = None
        return self._meta_optimizer

    def meta_gradient(self, state: NDDVState, step: ValuationStep) -> tuple[list[Tensor], Tensor]:
        """Gradient of the meta loss after a differentiable pseudo-step, w.r.t. the weight network.

        ``theta`` are the LightningModule's trainable parameters (the objective's own excluded);
        buffers are copied so the pseudo forward cannot change BatchNorm statistics.

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
        # The loss attached to the model's graph (the callback detaches `per_sample_loss` by default).
        per_sample = step.attached_loss if step.attached_loss is not None else step.per_sample_loss
        w = functional_call(state.weight_net, dict(zip(phi_names, phi)), (per_sample.detach(),))
        inner = (w * per_sample).sum() / (w.sum() + EPS)  # fp32 weights promote a half-precision loss
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
        except RuntimeError as err:
            raise ValueError(
                f"NDDV's meta set does not fit the model: `{type(module).__name__}.forward` failed on the meta "
                f"inputs of shape {tuple(x_meta.shape)} ({err}). Pass `meta=(x_meta, y_meta)` with inputs shaped "
                "like the training inputs."
            ) from err
        if not getattr(self, "_meta_labels_checked", False):  # once: the meta set is fixed
            check_meta_labels(out, self.meta[1])
            self._meta_labels_checked = True
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


def default_meta_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy on the meta batch (binary cross-entropy for a single logit)."""
    if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1):
        return F.binary_cross_entropy_with_logits(outputs.reshape(-1).float(), targets.reshape(-1).float())
    return F.cross_entropy(outputs.float(), targets)


def meta_tensors(meta: Any) -> tuple[Tensor, Tensor]:
    """Check and normalise the ``meta=(x_meta, y_meta)`` argument."""
    meta = load_if_path(meta, "meta")  # a .pt / .npz / .csv path, e.g. from a YAML config
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
    check_finite_rows(x, "`meta` (NDDV's meta set) inputs", "drop or impute those rows of the meta set")
    check_finite_rows(y, "`meta` (NDDV's meta set) labels", "drop those rows of the meta set")
    return (x.float() if x.is_floating_point() else x), y


def check_meta_labels(outputs: Tensor, labels: Tensor) -> None:
    """Refuse meta labels outside the classes of the model's outputs, naming the meta set."""
    k = 2 if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1) else outputs.shape[-1]
    if labels.is_floating_point() or labels.numel() == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise ValueError(
            f"NDDV's meta set has labels in [{lo}, {hi}] but the model outputs {k} classes: `meta=(x_meta, "
            f"y_meta)` needs class indices in [0, {k})."
        )
