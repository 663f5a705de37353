"""A faithful plain-PyTorch loop of the LossVal paper (Wibiral et al. 2024/25), the benchmark's reference.

One Adam (lr 0.01, no weight decay) over the model AND the per-row weights ``w`` (init 1,
unconstrained); a 5-layer MLP with 100 hidden units and a softmax output; per-sample loss
``l_i = -log(p_i[y_i] + 1e-8)``; for every minibatch of 32:

    L_w  = sum_i w_i l_i
    D    = geomloss SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.5, debias=True, diameter)
           between the RAW-mass batch {(w_i, x_i)} and the validation inputs {(1, v_j)}
    loss = L_w * D ** 2

for 30 epochs; the values are the final ``w``. No Lightning, no caching, no fp32 pinning: the
formula run plainly, so the project's ``DataValuation(LossVal(...))`` can be held against it on the
same splits and seeds (shared/METHODS.md section 1).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from geomloss import SamplesLoss
from torch import nn

from lightning_dv.values import DataValues


def paper_mlp(in_features: int, num_classes: int, hidden: int = 100, layers: int = 5) -> nn.Sequential:
    """The paper's classifier: ``layers`` linear layers (``hidden`` wide, ReLU) and a softmax output."""
    dims = [in_features] + [hidden] * (layers - 1)
    mods: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    mods += [nn.Linear(dims[-1], num_classes), nn.Softmax(dim=1)]
    return nn.Sequential(*mods)


def lossval_reference(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    num_classes: int,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 0.01,
    seed: int = 0,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
) -> DataValues:
    """Run the paper's LossVal loop; returns the final weights (HIGHER = MORE VALUABLE).

    ``metadata`` holds ``fit_seconds`` and, when a test set is given, the ``test_accuracy`` of the
    model the loop trained (the paper's formula drives it).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.normal(size=(64, 3)).astype("float32"), rng.integers(0, 2, 64)
        >>> dv = lossval_reference(x, y, x[:16], num_classes=2, epochs=1)
        >>> len(dv), dv.method
        (64, 'lossval_reference')
    """
    torch.manual_seed(seed)
    x = torch.as_tensor(x_train, dtype=torch.float32)
    y = torch.as_tensor(y_train, dtype=torch.long)
    v = torch.as_tensor(x_valid, dtype=torch.float32)
    n = x.shape[0]
    model = paper_mlp(x.shape[1], num_classes)
    w = nn.Parameter(torch.ones(n))
    opt = torch.optim.Adam([*model.parameters(), w], lr=lr)
    pts = torch.cat([x, v])
    diameter = float((pts.max(0).values - pts.min(0).values).norm())
    sinkhorn = SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.5, debias=True, diameter=diameter)
    ones = torch.ones(v.shape[0])
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for rows in torch.randperm(n, generator=g).split(batch_size):
            p = model(x[rows]).gather(1, y[rows, None]).squeeze(1)
            per_sample = -torch.log(p + 1e-8)
            wb = w[rows]
            d = sinkhorn(wb, x[rows], ones, v)
            loss = (wb * per_sample).sum() * d**2
            opt.zero_grad()
            loss.backward()
            opt.step()
    meta: dict = {"fit_seconds": time.perf_counter() - t0, "epochs": epochs, "model": "5x100 MLP (paper)"}
    if x_test is not None and y_test is not None:
        with torch.no_grad():
            pred = model(torch.as_tensor(x_test, dtype=torch.float32)).argmax(1).numpy()
        meta["test_accuracy"] = float((pred == np.asarray(y_test)).mean())
    return DataValues(w.detach().double().numpy(), method="lossval_reference", metadata=meta)
