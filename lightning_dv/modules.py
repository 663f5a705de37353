"""A ready-made LightningModule for tabular data, used by the demo, the benchmarks and examples."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_dv.mixin import DataValuationMixin


class MLPClassifier(DataValuationMixin, L.LightningModule):
    """A one-hidden-layer MLP (or, with ``hidden=0``, a linear model) whose ``training_step``
    returns ``valuation_loss``.

    Args:
        in_features: Input dimension.
        num_outputs: Number of classes (classification) or targets (regression).
        hidden: Hidden width; 0 gives a linear (logistic / least-squares) model.
        lr: Adam learning rate (the LossVal paper shares lr 0.01 between model and weights).
        regression: Squared-error loss (summed over outputs) instead of cross-entropy.
        valuate: Route the loss through ``valuation_loss`` (needs a ``DataValuation`` callback);
            ``False`` trains on the plain mean loss, the baseline the overhead benchmark times.

    Example:
        >>> model = MLPClassifier(in_features=4, num_outputs=3)
        >>> model(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        hidden: int = 64,
        lr: float = 0.01,
        regression: bool = False,
        valuate: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if hidden > 0:
            self.net = nn.Sequential(
                nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_outputs)
            )
        else:
            self.net = nn.Linear(in_features, num_outputs)
        self.lr, self.regression, self.valuate = lr, regression, valuate

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def per_sample_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Unreduced loss: cross-entropy, or the sum of squared errors per sample."""
        if self.regression:
            diff = outputs.reshape(outputs.shape[0], -1) - targets.reshape(targets.shape[0], -1)
            return (diff**2).sum(1)
        return F.cross_entropy(outputs, targets, reduction="none")

    def training_step(self, batch, batch_idx: int) -> Tensor:
        idx, x, y = batch
        out = self(x)
        per_sample = self.per_sample_loss(out, y)
        if self.valuate:
            loss = self.valuation_loss(per_sample, idx, inputs=x, outputs=out, targets=y)
        else:
            loss = per_sample.mean()
        self.log("train_loss", loss.detach(), prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class ValidatedMLPClassifier(MLPClassifier):
    """:class:`MLPClassifier` that logs the mean loss on ``fit``'s validation loader as ``val_loss``
    every epoch: the metric ``AUM(monitor="val_loss")`` follows (a separate class, because Lightning
    warns about a ``validation_step`` that gets no loader).

    Example:
        >>> ValidatedMLPClassifier(in_features=4, num_outputs=3).hparams.hidden
        64
    """

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        x, y = batch[-2], batch[-1]  # (row, x, y) or (x, y) batches
        loss = self.per_sample_loss(self(x), y).mean()
        self.log("val_loss", loss, on_step=False, on_epoch=True)
        return loss
