"""Value training rows from a LightningCLI YAML config: ``python main.py fit --config lossval.yaml``.

A tiny LightningModule (the mixin's ``valuation_loss`` in ``training_step``) and a DataModule
reading the files ``make_data.py`` writes. The valuation method is a callback in the config, so
switching methods is switching configs (see README.md).
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dv import DataValuationMixin, IndexedDataset
from lightning_dv.io import load_if_path


class TinyClassifier(DataValuationMixin, L.LightningModule):
    """A one-hidden-layer MLP whose training loss goes through ``valuation_loss``."""

    def __init__(
        self, in_features: int = 64, num_classes: int = 10, hidden: int = 32, lr: float = 0.01
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        idx, x, y = batch
        logits = self(x)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        return self.valuation_loss(per_sample, idx, inputs=x, outputs=logits, targets=y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class FileDataModule(L.LightningDataModule):
    """Training rows from ``train`` (indexed, so every batch carries its row), validation from ``valid``.

    Both are paths to .pt / .npz / .csv files holding ``(x, y)`` (see ``lightning_dv.io.load_if_path``).
    """

    def __init__(
        self, train: str = "data/train.npz", valid: str = "data/valid.pt", batch_size: int = 32
    ) -> None:
        super().__init__()
        self.train, self.valid, self.batch_size = train, valid, batch_size

    def setup(self, stage: str) -> None:
        x, y = load_if_path(self.train, "train")
        self.train_set = IndexedDataset(TensorDataset(torch.as_tensor(x).float(), torch.as_tensor(y).long()))
        xv, yv = load_if_path(self.valid, "valid")
        self.valid_set = TensorDataset(torch.as_tensor(xv).float(), torch.as_tensor(yv).long())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.valid_set, batch_size=256)


def main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(TinyClassifier, FileDataModule, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
