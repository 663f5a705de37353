"""Quickstart: value the rows of a noisy dataset while training your own LightningModule.

Run: python examples/quickstart.py   (about 20 s on a laptop CPU)
"""

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dv import DataValuation, DataValuationMixin, IndexedDataset, LossVal, detection_auroc
from lightning_dv.datasets import make_split


class Classifier(DataValuationMixin, L.LightningModule):
    def __init__(self, d_in: int, n_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, 64), nn.ReLU(), nn.Linear(64, n_classes))

    def training_step(self, batch, batch_idx):
        idx, x, y = batch
        logits = self.net(x)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        return self.valuation_loss(per_sample, idx, inputs=x, outputs=logits, targets=y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


if __name__ == "__main__":
    split = make_split("digits", noise=0.1, seed=0)  # 10% of the training labels flipped
    train = IndexedDataset(TensorDataset(torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)))
    valuation = DataValuation(
        LossVal(validation=(split.x_valid, split.y_valid)),
        export_path="quickstart_values.csv",
        known_noisy=split.noisy,
    )
    trainer = L.Trainer(max_epochs=30, callbacks=[valuation], logger=TensorBoardLogger("runs"))
    trainer.fit(
        Classifier(split.x_train.shape[1], split.num_classes), DataLoader(train, batch_size=32, shuffle=True)
    )
    values = valuation.values
    print(values.lowest(10).to_pandas(trajectory=False))
    print(f"AUROC for the flipped labels: {detection_auroc(values.values, split.noisy):.3f}")
