"""EcoVal's utility trainings: all subsets as one batched softmax program, or one Lightning fit each."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_dv.progress import Progress, quiet_lightning

log = logging.getLogger("lightning_dv.methods.ecoval")


def _with_bias(x: Tensor) -> Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)


def train_softmax_batched(
    x: Tensor,
    y: Tensor,
    masks: Tensor,
    num_classes: int,
    steps: int = 200,
    l2: float = 1e-3,
) -> Tensor:
    """Train one multinomial logistic regression per subset, all subsets as one tensor program.

    Subset ``s`` minimises ``sum_i m_si CE(x_i W_s, y_i) / sum_i m_si + l2/2 * ||W_s[:-1]||^2``
    (the bias row, last, is not penalised), the same objective as scikit-learn's
    ``LogisticRegression(C=1 / (l2 * n_s))`` with ``sample_weight=m_s``. The optimiser is
    Nesterov's accelerated gradient with step ``1 / L_s``, ``L_s = lambda_max(X^T M_s X / n_s) / 2
    + l2`` (the softmax Hessian is bounded by half the covariance), for a fixed number of
    full-batch steps; gradients are closed-form, so there is no autograd graph.

    Args:
        x: Features, shape ``(N, d)`` (float32 or float64; the computation keeps the dtype).
        y: Class labels, shape ``(N,)``, in ``0..num_classes-1``.
        masks: Per-subset row weights (0/1 masks or any non-negative weights), shape ``(S, N)``.
        num_classes: Number of classes ``C``.
        steps: Full-batch steps.
        l2: L2 penalty on the weights.

    Returns:
        Weights of shape ``(S, d + 1, C)``; the last row is the bias. Logits: ``[x, 1] @ W_s``.

    Example:
        >>> x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
        >>> w = train_softmax_batched(x, torch.tensor([0, 0, 1, 1]), torch.ones(3, 4), 2, steps=50)
        >>> w.shape, bool((_with_bias(x) @ w[0]).argmax(1).eq(torch.tensor([0, 0, 1, 1])).all())
        (torch.Size([3, 2, 2]), True)
    """
    xb = _with_bias(x)
    n, d1 = xb.shape
    m = masks.to(xb.dtype)
    s = m.shape[0]
    n_s = m.sum(1).clamp_min(torch.finfo(xb.dtype).tiny)
    onehot = F.one_hot(y.long(), num_classes).to(xb.dtype)[:, None, :]
    cov = torch.einsum("sn,nd,ne->sde", m / n_s[:, None], xb, xb)
    lipschitz = torch.linalg.eigvalsh(cov)[:, -1] / 2 + l2
    # Weights live as one (d+1, C*S) matrix, so every step is two large matrix products over all
    # subsets at once (logits: X @ W, gradient: X^T @ R) instead of S small ones. The subset axis
    # is innermost, so the softmax over C reads contiguous memory (timing in docs/ecoval.md).
    lr = (1.0 / lipschitz)[None, None, :]
    penal = torch.ones(d1, 1, 1, dtype=xb.dtype, device=xb.device)
    penal[-1] = 0.0
    onehot = onehot.reshape(n, num_classes, 1)
    weight_scale = (m / n_s[:, None]).T[:, None, :]  # (N, 1, S)
    w = torch.zeros(d1, num_classes, s, dtype=xb.dtype, device=xb.device)
    w_prev = w
    for t in range(steps):
        look = w + (t / (t + 3.0)) * (w - w_prev)
        probs = torch.softmax((xb @ look.reshape(d1, -1)).reshape(n, num_classes, s), dim=1)
        resid = ((probs - onehot) * weight_scale).reshape(n, -1)
        grad = (xb.T @ resid).reshape(d1, num_classes, s) + l2 * penal * look
        w_prev, w = w, look - lr * grad
    return w.permute(2, 0, 1).contiguous()


def softmax_log_utility(weights: Tensor, x_valid: Tensor, y_valid: Tensor, utility: str) -> Tensor:
    """``log U`` of each batched softmax model on the validation set, shape ``(S,)``."""
    logits = torch.einsum("nd,sdc->snc", _with_bias(x_valid.to(weights.dtype)), weights)
    return _log_utility_from_logits(logits, y_valid, utility)


def _log_utility_from_logits(logits: Tensor, y_valid: Tensor, utility: str) -> Tensor:
    """``log U`` from validation logits of shape ``(S, Nv, C)``."""
    y = y_valid.long().to(logits.device)
    if utility == "log_likelihood":
        logp = torch.log_softmax(logits.double(), dim=-1)
        return logp.gather(-1, y.expand(logits.shape[0], -1)[..., None])[..., 0].mean(1)
    acc = (logits.argmax(-1) == y).double().mean(1)
    # floor at half a validation row so log U stays finite when a model gets nothing right
    return torch.log(acc.clamp_min(0.5 / y.numel()))


def train_lightning(
    factory: Callable[[], pl.LightningModule],
    x: Tensor,
    y: Tensor,
    masks: np.ndarray,
    x_valid: Tensor,
    y_valid: Tensor,
    utility: str,
    trainer_kwargs: dict[str, Any],
    batch_size: int,
    seed: int,
    progress: bool = True,
) -> np.ndarray:
    """One ``lightning.Trainer`` fit per subset; ``log U`` of each on the validation set.

    The nested fits print nothing (no banners, summaries or data-loader hints); one k/N bar
    counts them instead (``progress=False``: none).
    """
    kwargs = {
        "max_epochs": 10,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    kwargs.update(trainer_kwargs)
    out = np.zeros(masks.shape[0])
    with quiet_lightning(), Progress(progress, masks.shape[0], "EcoVal trainings") as bar:
        for s, mask in enumerate(masks):
            out[s] = _fit_one(factory, x, y, mask, x_valid, y_valid, utility, kwargs, batch_size, seed + s)
            bar.update()
            log.info("EcoVal: Lightning training %d/%d done (log U = %.4f)", s + 1, masks.shape[0], out[s])
    return out


def _fit_one(
    factory: Callable[[], pl.LightningModule],
    x: Tensor,
    y: Tensor,
    mask: np.ndarray,
    x_valid: Tensor,
    y_valid: Tensor,
    utility: str,
    kwargs: dict[str, Any],
    batch_size: int,
    seed: int,
) -> float:
    """Train a fresh module on the rows of ``mask``; ``log U`` on the validation set."""
    from torch.utils.data import DataLoader, TensorDataset

    rows = torch.from_numpy(np.flatnonzero(mask))
    # fork the RNG so each subset's initialisation and shuffling is reproducible and the
    # caller's global random state is left alone
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = factory()
        if not isinstance(module, pl.LightningModule):
            raise TypeError(
                f"`utility_model` must return a fresh LightningModule; it returned {type(module).__name__}."
            )
        loader: DataLoader = DataLoader(
            TensorDataset(rows, x[rows], y[rows]), batch_size=batch_size, shuffle=True
        )
        trainer = pl.Trainer(**kwargs)
        trainer.fit(module, loader)
    module.eval()
    with torch.no_grad():
        logits = module(x_valid.to(module.device)).float().cpu()
    if logits.ndim != 2 or logits.shape[0] != x_valid.shape[0]:
        raise ValueError(
            f"the LightningModule's forward must return class logits of shape ({x_valid.shape[0]}, C); "
            f"got {tuple(logits.shape)}."
        )
    return float(_log_utility_from_logits(logits[None], y_valid, utility)[0])
