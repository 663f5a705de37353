"""`ControlledDynamicsNet`: the network of NDDV (Liang, Gao, Zhang, "Neural Dynamic Data Valuation", 2024).

The network is a discretised controlled stochastic differential equation. With state
``X_0 = x`` (the input features or an embedding), ``T = steps`` Euler-Maruyama steps of size
``dt = horizon / T``::

    X_{t+1} = X_t + (a * (mu - X_t) + u_t(X_t)) * dt + sigma * dW_t,     dW_t ~ N(0, dt I)
    logits  = head(X_T)

``u_t`` is the control of step ``t`` (its own small MLP: BatchNorm, Linear, ELU, Linear, ELU,
Linear), ``mu`` the mean field (the weighted mean of the terminal states ``X_T`` over the
training set) and ``a`` the interaction strength that pulls every state towards it.

Differences from the authors' code, on purpose: the Brownian increments are drawn afresh at
every step of every forward pass (the authors draw them once and reuse them), there is no noise
in eval mode, and ``mu`` starts at zero (the mean of standardised inputs) instead of random noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def control_mlp(features: int, hidden: int) -> nn.Sequential:
    """One step's control ``u_t``: BatchNorm, Linear, ELU, Linear, ELU, Linear (state -> state)."""
    return nn.Sequential(
        nn.BatchNorm1d(features),
        nn.Linear(features, hidden),
        nn.ELU(),
        nn.Linear(hidden, hidden),
        nn.ELU(),
        nn.Linear(hidden, features),
    )


class ControlledDynamicsNet(nn.Module):
    """NDDV's mean-field controlled dynamics, for tabular data and embeddings.

    Args:
        in_features: Dimension of the input, which is also the dimension of the state.
        num_classes: Outputs of the head (classes; 1 for a regression output).
        steps: Number of Euler-Maruyama steps ``T`` (2 in the paper).
        hidden: Width of each control MLP (25 in the paper).
        sigma: Diffusion coefficient (0.01 in the paper); the noise is active in training mode only.
        interaction: Interaction strength ``a`` of the mean-field drift ``a * (mu - X_t)``.
        horizon: Total time; ``dt = horizon / steps``.

    The mean field ``mu`` is a buffer (checkpointed, identical on every rank). The
    :class:`~lightning_dv.methods.nddv.NDDV` objective updates it at the end of every epoch
    with the weighted mean of the terminal states it saw (each row once, synchronised across
    ranks); without NDDV set it yourself with :meth:`set_mean_field`. The terminal state of the
    latest forward pass is kept (detached) in ``terminal_state`` for that purpose.

    Example:
        >>> net = ControlledDynamicsNet(in_features=8, num_classes=3)
        >>> net(torch.randn(16, 8)).shape
        torch.Size([16, 3])
        >>> net.terminal_state.shape
        torch.Size([16, 8])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        steps: int = 2,
        hidden: int = 25,
        sigma: float = 0.01,
        interaction: float = 1.0,
        horizon: float = 1.0,
    ) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1:
            raise ValueError(
                f"`in_features` and `num_classes` must be >= 1; got {in_features} and {num_classes}."
            )
        if steps < 1:
            raise ValueError(f"`steps` must be >= 1 (the number of Euler-Maruyama steps); got {steps}.")
        if sigma < 0:
            raise ValueError(f"`sigma` must be >= 0; got {sigma}.")
        if horizon <= 0:
            raise ValueError(f"`horizon` must be > 0; got {horizon}.")
        self.in_features, self.num_classes = in_features, num_classes
        self.steps, self.sigma, self.interaction = steps, float(sigma), float(interaction)
        self.dt = float(horizon) / steps
        self.controls = nn.ModuleList(control_mlp(in_features, hidden) for _ in range(steps))
        self.head = nn.Linear(in_features, num_classes)
        self.register_buffer("mean_field", torch.zeros(in_features))
        self.terminal_state: Tensor | None = None

    def trajectory(self, x: Tensor) -> list[Tensor]:
        """The states ``[X_0, X_1, ..., X_T]`` of the dynamics for inputs ``x`` of shape ``(B, in_features)``."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"ControlledDynamicsNet expects inputs of shape (batch, {self.in_features}); got {tuple(x.shape)}. "
                "Flatten images or use embeddings from a frozen backbone."
            )
        states = [x]
        noise_scale = self.sigma * math.sqrt(self.dt)
        for control in self.controls:
            state = states[-1]
            drift = self.interaction * (self.mean_field.to(state.dtype) - state) + control(state)
            state = state + drift * self.dt
            if self.training and noise_scale > 0:
                # Fresh Brownian increment every step and every pass (dW_t ~ N(0, dt)).
                state = state + noise_scale * torch.randn_like(state)
            states.append(state)
        return states

    def forward(self, x: Tensor) -> Tensor:
        """Logits (or regression outputs) ``head(X_T)``; keeps ``X_T`` in ``terminal_state``."""
        terminal = self.trajectory(x)[-1]
        self.terminal_state = terminal.detach()  # detached: holding the graph would keep it alive
        return self.head(terminal)

    @torch.no_grad()
    def set_mean_field(self, mu: Tensor) -> None:
        """Replace the mean field ``mu`` (shape ``(in_features,)``)."""
        mu = torch.as_tensor(mu).reshape(-1)
        if mu.numel() != self.in_features:
            raise ValueError(f"the mean field must have {self.in_features} entries; got {mu.numel()}.")
        self.mean_field.copy_(mu.to(self.mean_field))
