"""Small models and data shared by the tests (real Lightning modules, no mocks)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_dv import IndexedDataset
from lightning_dv.datasets import make_split
from lightning_dv.modules import MLPClassifier


class MLP(MLPClassifier):
    """The package's example classifier under a short name (``regression=`` switches the loss)."""

    def __init__(
        self, d_in: int, n_classes: int, hidden: int = 64, lr: float = 0.01, regression: bool = False
    ):
        super().__init__(d_in, n_classes, hidden=hidden, lr=lr, regression=regression)


def loader(x, y, batch_size=32, shuffle=True, seed=0, ids=None):
    ds = IndexedDataset(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), ids=ids)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g)


def digits_split(noise=0.1, seed=0, n_train=1000):
    return make_split("digits", noise=noise, seed=seed, n_train=n_train, n_valid=100, n_test=600)


def trainer_kwargs(tmp_path=None, **kw):
    base = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    base.update(kw)
    return base


def seeded(seed=0):
    L.seed_everything(seed, verbose=False)
    np.random.seed(seed)


class EpochSeededSampler(torch.utils.data.Sampler):
    """Shuffles with a permutation seeded by (seed, epoch): resumed fits see the same order."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class ResumableLoader(DataLoader):
    """A DataLoader Lightning resumes mid-epoch (it has ``state_dict`` / ``load_state_dict``).

    Its state is the number of batches of the current epoch drawn so far (0 once the epoch ran
    out). After loading, the next iteration skips them in the same (epoch-seeded) permutation.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._yielded, self._exhausted, self._skip = 0, False, 0

    def __iter__(self):
        it = super().__iter__()
        skip, self._skip = self._skip, 0
        self._yielded, self._exhausted = 0, False
        for _ in range(skip):
            next(it)
            self._yielded += 1
        for batch in it:
            self._yielded += 1
            yield batch
        self._exhausted = True

    def state_dict(self):
        consumed = 0 if self._exhausted else self._yielded
        return {"consumed": consumed}

    def load_state_dict(self, state):
        self._skip = int(state["consumed"])


def resumable_loader(x, y, batch_size=32, seed=0):
    ds = IndexedDataset(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)))
    return ResumableLoader(ds, batch_size=batch_size, sampler=EpochSeededSampler(len(ds), seed))


# -- an objective written from the ValuationObjective docstring alone (the contract tests use it) --
from lightning_dv.distributed import RowStatistics  # noqa: E402
from lightning_dv.methods.base import ValuationObjective, ValuationState  # noqa: E402


class Margins(ValuationState):
    def __init__(self, num_rows):
        super().__init__(num_rows)
        self.margin = RowStatistics(num_rows)


class MarginObjective(ValuationObjective):
    """The area-under-the-margin accumulator of the base class's docstring, verbatim."""

    name, needs = "margin", frozenset({"outputs", "targets"})

    def build(self, num_rows):
        return Margins(num_rows)

    def loss(self, state, step):
        z = step.outputs.detach().float()
        own = z.gather(1, step.targets[:, None]).squeeze(1)
        other = z.scatter(1, step.targets[:, None], float("-inf")).amax(1)
        state.margin.update(step.idx, own - other)
        return step.per_sample_loss.mean()

    def on_train_epoch_end(self, trainer, pl_module, state):
        state.margin.reduce()

    def values(self, state):
        return state.margin.mean()


#: Every training-time objective, by name: ``make_objective(name, x_valid)``.
TRAINING_OBJECTIVES = ("lossval", "nddv", "aum", "margin")
#: Whole-set methods, by their public names.
WHOLE_SET_METHODS = ("ComplexityGapValuation", "EcoValValuation")


def make_objective(name: str, x_valid=None, y_valid=None):
    from lightning_dv import AUM, NDDV, LossVal

    if name == "lossval":
        return LossVal(validation=x_valid)
    if name == "nddv":
        return NDDV()
    if (
        name == "lossval_learned"
    ):  # learned weights (the default before session 6; reweight / objective modes)
        return LossVal(validation=x_valid, learn_weights=True)
    if name == "lossval_subsample":  # draws validation rows from its own checkpointed generator
        return LossVal(validation=x_valid, validation_subsample=10)
    if name == "nddv_learned":  # learned softplus weights (the default before session 6)
        return NDDV(learn_weights=True)
    if name == "nddv_meta":
        return NDDV(weighting="meta", meta=(x_valid, y_valid), meta_batch_size=16, lr=0.01)
    if name == "aum":
        return AUM()
    if name == "margin":
        return MarginObjective()
    raise ValueError(f"unknown objective {name!r}")


def make_callback(name: str, x_valid, y_valid, **kwargs):
    """A DataValuation callback for a training-time objective, or a whole-set callback by public name."""
    from lightning_dv import ComplexityGapValuation, DataValuation, EcoVal, EcoValValuation

    if name == "ComplexityGapValuation":
        return ComplexityGapValuation(seed=2, **kwargs)
    if name == "EcoValValuation":
        return EcoValValuation(EcoVal(n_clusters=4, n_subsets=20, steps=20), (x_valid, y_valid), **kwargs)
    return DataValuation(make_objective(name, x_valid, y_valid), **kwargs)


def contract_data(n=96, d=6, k=3, seed=0):
    """A small 3-class problem: ``(x, y, x_valid, y_valid)`` as float32 / int64 arrays."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(k, d))
    y = np.arange(n) % k
    x = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)
    yv = np.arange(30) % k
    xv = (centers[yv] + rng.normal(size=(30, d))).astype(np.float32)
    return x, y.astype(np.int64), xv, yv.astype(np.int64)
