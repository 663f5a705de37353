"""What the user's model is trained on while an objective learns values, and the weights' own AMP step.

``DataValuation(model_loss=...)`` (measurements: docs/model_safety.md):

- ``"plain"``: ``L = mean_i l_i + (O - O.detach())`` with the objective's loss ``O`` computed from
  DETACHED model quantities, so the model's gradient is exactly the user's mean loss (a plain fit,
  bit for bit) and ``O`` drives only the objective's own parameters.
- ``"reweight"``: the model's gradient is that of ``sum_i r_i l_i / sum_i r_i`` with the
  objective's positive learned weights ``r`` (detached), so rows judged harmful count less.
- ``"objective"``: the model's gradient is the objective's formula (LossVal: ``L_w * D**2``).

Whatever the mode, the VALUE returned is ``mean_i l_i``: the progress bar and a logged
``train_loss`` show the user's task loss on its own scale.
"""

from __future__ import annotations

import torch
from torch import Tensor

MODEL_LOSSES = ("plain", "reweight", "objective")


def returned_loss(
    mode: str, per_sample_loss: Tensor, objective_loss: Tensor, weights: Tensor | None = None
) -> Tensor:
    """The loss handed back to Lightning for ``mode`` (value: the user's mean loss).

    Args:
        mode: One of :data:`MODEL_LOSSES`.
        per_sample_loss: The user's unreduced loss, attached to the model's graph.
        objective_loss: The objective's loss (from detached model quantities unless ``"objective"``).
        weights: ``"reweight"`` only: the rows' positive weights (detached here).

    Example:
        >>> l = torch.tensor([1.0, 3.0], requires_grad=True)
        >>> out = returned_loss("reweight", l, torch.tensor(5.0), weights=torch.tensor([1.0, 0.0]))
        >>> out.item(), torch.autograd.grad(out, l)[0].tolist()
        (2.0, [1.0, 0.0])
    """
    plain = per_sample_loss.mean()
    own = objective_loss - objective_loss.detach()  # zero value, the objective's gradient
    if mode == "objective":
        return plain.detach() + own
    if mode == "reweight":
        r = weights.detach().to(per_sample_loss.dtype)
        total = r.sum()
        r = torch.where(total > 0, r / total.clamp(min=torch.finfo(r.dtype).tiny), 1.0 / r.numel())
        model = (r * per_sample_loss).sum()
        return plain.detach() + (model - model.detach()) + own
    return plain + own


def step_unscaled(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> bool:
    """Unscale ``optimizer``'s gradients by ``scaler``'s scale and step it unless one is inf/NaN.

    Never goes through ``scaler.unscale_`` / ``scaler.step``: those record the weights' overflows in
    the user's scaler, whose ``update()`` would then shrink the scale and skip the MODEL's steps.

    Returns:
        Whether the step was taken.
    """
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, 1.0 / scaler.get_scale())
        if not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            return False
    optimizer.step()
    return True
