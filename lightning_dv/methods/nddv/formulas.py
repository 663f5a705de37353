"""NDDV's formulas: terminal state, label distribution, the state x costate value, calibration.

Liang, Gao, Zhang, "Neural Dynamic Data Valuation" (arXiv 2404.19557). For row ``i`` with
terminal state ``X_T,i`` (class probabilities), label distribution ``q_i``, weight ``w_i`` and
terminal cost ``Phi_i = w_i CE(X_T,i, q_i)``::

    v_i   = -(1/K) sum_k X_T,ik dPhi_i/dX_T,ik = -(1/K) <X_T,i, w_i (softmax(X_T,i) - q_i)>
    phi_i = v_i - mean_{j != i} v_j                                     (the paper's calibration)
    z_i   = clip((phi_i - median) / (1.4826 MAD), -fence, fence)        (the exported value)

Why the clipped robust score (:mod:`lightning_dv.methods.calibration`, shared with AUM): the
marginal map is affine and keeps any heavy tail, which lets one extreme row own a 2-means cluster
(measurements in docs/nddv.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_dv._validation import check_class_labels
from lightning_dv.methods.calibration import robust_clip, robust_score

__all__ = [
    "marginal_calibration",
    "robust_clip",
    "robust_score",
    "state_costate_value",
    "target_distribution",
    "target_labels",
    "terminal_probabilities",
    "terminal_width",
    "weighted_loss",
]


def terminal_probabilities(outputs: Tensor) -> Tensor:
    """The terminal state ``X_T``: class probabilities ``(B, K)`` from logits (differentiable).

    A single logit per row (shape ``(B,)`` or ``(B, 1)``) is a binary classifier: ``[1 - s, s]``
    with ``s = sigmoid(logit)``.

    Example:
        >>> terminal_probabilities(torch.zeros(2, 4))[0].tolist()
        [0.25, 0.25, 0.25, 0.25]
    """
    z = outputs.float()
    if terminal_width(z) == 2 and (z.ndim == 1 or z.shape[1] == 1):
        s = torch.sigmoid(z.reshape(-1))
        return torch.stack([1 - s, s], dim=1)
    return torch.softmax(z, dim=1)


def terminal_width(outputs: Tensor) -> int:
    """The number of classes ``K`` of the terminal state of ``outputs`` (shape check only, no arithmetic).

    Example:
        >>> terminal_width(torch.zeros(5)), terminal_width(torch.zeros(5, 1)), terminal_width(torch.zeros(5, 4))
        (2, 2, 4)
    """
    if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1):
        return 2
    if outputs.ndim != 2:
        raise ValueError(
            f"NDDV needs outputs of shape (batch, classes); got {tuple(outputs.shape)}. Flatten per-position "
            "outputs into rows, or pass the per-row logits."
        )
    return outputs.shape[1]


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


def target_labels(targets: Tensor, num_classes: int, check: bool = True) -> Tensor:
    """Integer class labels ``(B,)`` as they are (range-checked), soft labels as :func:`target_distribution`.

    The per-step form of :func:`target_distribution`: a one-hot matrix is never built for class
    indices (:func:`state_costate_value` gathers the label's probability instead), and the range
    check costs one host read (``check=False``: the caller checks them later, for many steps at
    once, with :func:`~lightning_dv._validation.check_class_labels`; the labels keep their dtype).

    Example:
        >>> target_labels(torch.tensor([2, 0]), 3).tolist()
        [2, 0]
    """
    if not isinstance(targets, Tensor) or targets.is_floating_point():
        return target_distribution(targets, num_classes)
    if not check:
        return targets.reshape(-1)
    labels = targets.reshape(-1).long()
    check_class_labels(labels, num_classes)
    return labels


def state_costate_value(probs: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Per-row value ``v_i = -(1/K) sum_k X_T,ik dPhi_i/dX_T,ik`` for ``Phi_i = w_i CE(X_T,i, q_i)``.

    The costate ``w_i (softmax(X_T,i) - q_i)`` is the gradient of row ``i``'s own terminal cost,
    so the value does not depend on the other rows of the batch. ``target`` is the label
    distribution ``q`` ``(B, K)`` or integer class labels ``(B,)`` (then
    ``v_i = -(w_i / K) (<X_T,i, softmax(X_T,i)> - X_T,i,y_i)``, the same value without a one-hot).

    Example:
        >>> p = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
        >>> q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> v = state_costate_value(p, q, torch.ones(2))
        >>> bool(v[0] > 0 > v[1])
        True
        >>> torch.allclose(v, state_costate_value(p, torch.tensor([0, 0]), torch.ones(2)))
        True
    """
    # softmax(X) as exp(X) / sum exp(X): X holds probabilities in [0, 1], so exp cannot overflow;
    # torch.softmax over a short last dimension costs 3-7x more on CPU for a thousand rows
    # (the records of many steps at once), and the two agree to float rounding.
    e = torch.exp(probs)
    soft = e.div_(e.sum(dim=1, keepdim=True))
    if target.ndim == 1:
        inner = torch.linalg.vecdot(probs, soft) - probs.gather(1, target[:, None]).squeeze(1)
        return inner.mul_(weight).mul_(-1.0 / probs.shape[1])
    costate = weight.unsqueeze(1) * (soft - target)
    return -(probs * costate).mean(dim=1)


def marginal_calibration(raw: Tensor, inplace: bool = False) -> Tensor:
    """The paper's calibration ``phi_i = v_i - (1 / (N - 1)) sum_{j != i} v_j`` (``inplace``: in ``raw``)."""
    n = raw.numel()
    if n < 2:
        return raw if inplace else raw.clone()
    if inplace:  # the same two roundings per row, without a second N-vector
        others = raw.sum() / (n - 1)
        return raw.mul_(1 + 1 / (n - 1)).sub_(others)
    return raw * (1 + 1 / (n - 1)) - raw.sum() / (n - 1)


class _WeightedLoss(torch.autograd.Function):
    """Forward and gradients of :func:`weighted_loss` as one autograd node (see there)."""

    @staticmethod
    def forward(ctx, w, per_sample, probs, mu, strength, eps):  # type: ignore[override]
        total = w.sum() + eps
        task = torch.dot(w, per_sample) / total
        diff = probs - mu
        flat = diff.reshape(-1)
        ctx.save_for_backward(w, per_sample, total, task, diff)
        ctx.strength = strength
        return task + (strength * torch.dot(flat, flat)).to(task.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        w, per_sample, total, task, diff = ctx.saved_tensors
        scale = grad / total
        gw = (per_sample - task) * scale if ctx.needs_input_grad[0] else None
        gl = w * scale if ctx.needs_input_grad[1] else None
        gp = diff * (2 * ctx.strength * grad.to(diff.dtype)) if ctx.needs_input_grad[2] else None
        return gw, gl, gp, None, None, None


def weighted_loss(
    w: Tensor, per_sample: Tensor, probs: Tensor | None = None, mu: Tensor | None = None,
    strength: float = 0.0, eps: float = 1e-12,
) -> Tensor:  # fmt: skip
    """NDDV's training loss ``sum_i w_i l_i / (sum_i w_i + eps) + strength sum_i ||p_i - mu||^2``.

    The weighted task loss and the mean-field coupling (``strength = a / (2 B)``; ``probs=None``:
    the task alone), computed as one autograd node with the closed-form gradients
    ``d/dw_i = (l_i - task) / S``, ``d/dl_i = w_i / S`` and ``d/dp_i = 2 strength (p_i - mu)``
    (``S = sum_i w_i + eps``). Why: on a batch of 32 rows each autograd node costs more than its
    arithmetic; the dozen nodes of the plain expression were a tenth of a training step. The task
    alone (``probs=None``, the usual case: detached model outputs) is ``dot(w, l) / S`` in built-in
    operations, whose forward costs about half of the Python node's (tight loop, batch 32).
    ``w`` and ``per_sample`` share a dtype; ``probs`` and ``mu`` too.

    Example:
        >>> w = torch.tensor([1.0, 3.0], requires_grad=True)
        >>> l = torch.tensor([2.0, 4.0], requires_grad=True)
        >>> p = torch.tensor([[0.5, 0.5], [1.0, 0.0]], requires_grad=True)
        >>> loss = weighted_loss(w, l, p, torch.tensor([0.5, 0.5]), strength=0.25, eps=0.0)
        >>> loss.backward()
        >>> loss.item(), w.grad.tolist(), l.grad.tolist(), p.grad.tolist()
        (3.625, [-0.375, 0.125], [0.25, 0.75], [[0.0, 0.0], [0.25, -0.25]])
    """
    if probs is None:  # the task alone: four built-in nodes cost less than one Python node here
        return torch.dot(w, per_sample).div(w.sum().add(eps))
    return _WeightedLoss.apply(w, per_sample, probs, mu, strength, eps)
