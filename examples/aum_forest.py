"""AUM during your own fit, then a forest's second opinion on every label (two lines after `fit`).

The callback keeps a few bytes per row and no features, so the forest runs after the fit on the
rows the model trained on: `with_forest(valuation.values, x_train, y_train)`. On `moons` (two
informative features among ten, a curved boundary) the forest finds what a small network learns
slowly in its first epochs (benchmarks/README.md, section 2f). `opinion="auto"` also fits a
Gaussian-mixture classifier and keeps whichever of the two predicts the labels better (section 2g):
on `moons` that is the forest, on `overlap` (classes made of Gaussian clusters) the mixture.

Run: python examples/aum_forest.py [moons|overlap|...]   (about 10 s on a laptop CPU)
"""

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dv import (
    AUM,
    DataValuation,
    DataValuationMixin,
    IndexedDataset,
    detection_auroc,
    kmeans_f1,
    with_forest,
)
from lightning_dv.datasets import make_split


class Classifier(DataValuationMixin, L.LightningModule):
    def __init__(self, d_in: int, n_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, 64), nn.ReLU(), nn.Linear(64, n_classes))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        idx, x, y = batch
        logits = self.net(x)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        return self.valuation_loss(per_sample, idx, inputs=x, outputs=logits, targets=y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def main(dataset: str = "moons", noise: float = 0.1, epochs: int = 10, seed: int = 0) -> dict:
    """Fit with ``DataValuation(AUM())``, add the forest's opinion, report both against the flipped rows."""
    L.seed_everything(seed, verbose=False)
    split = make_split(dataset, noise=noise, seed=seed)  # known flipped rows: split.noisy
    train = IndexedDataset(TensorDataset(torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)))
    valuation = DataValuation(AUM())
    model = Classifier(split.x_train.shape[1], split.num_classes)
    trainer = L.Trainer(max_epochs=epochs, callbacks=[valuation], logger=False, enable_checkpointing=False)
    trainer.fit(model, DataLoader(train, batch_size=32, shuffle=True))

    aum = valuation.values
    both = with_forest(aum, split.x_train, split.y_train, seed=seed)  # row i = dataset row i
    auto = with_forest(aum, split.x_train, split.y_train, seed=seed, opinion="auto")
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(split.x_test)).argmax(1).numpy() == split.y_test).mean())
    report = {"model_test_accuracy": accuracy, "auto_opinion": auto.metadata["opinion"]}
    for name, values in (("aum", aum.sorted_by_row()), ("aum_forest", both), ("aum_auto", auto)):
        report[name] = {
            "auroc": detection_auroc(values.values, split.noisy),
            "flagged": int(values.flagged.sum()),
            "flagged_f1": kmeans_f1(values.values, split.noisy),  # values.flagged is the 2-means low cluster
        }
    return report


if __name__ == "__main__":
    import sys

    report = main(*sys.argv[1:2])
    print(f"model test accuracy {report['model_test_accuracy']:.3f} (the forest never touches training)")
    print(f"opinion='auto' chose the {report['auto_opinion']}")
    for name in ("aum", "aum_forest", "aum_auto"):
        r = report[name]
        print(
            f"{name:>10}: AUROC {r['auroc']:.3f}, flagged {r['flagged']} rows, flagged-F1 {r['flagged_f1']:.3f}"
        )
