"""Checkpoints written with the DataValuation callback: plain strict loading and exact resume."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from helpers import MLP, digits_split, loader, resumable_loader, seeded, trainer_kwargs
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_dv import NDDV, DataValuation, LossVal


def test_plain_load_from_checkpoint_is_strict_and_exact(tmp_path):
    s = digits_split(n_train=200)
    seeded(0)
    model = MLP(s.x_train.shape[1], s.num_classes)
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[DataValuation(NDDV()), ModelCheckpoint(dirpath=tmp_path, save_last=True)],
        **trainer_kwargs(enable_checkpointing=True),
    )
    trainer.fit(model, loader(s.x_train, s.y_train))
    raw = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert not any(k.startswith("dv_state.") for k in raw["state_dict"])
    assert raw["lightning_dv_state"]  # the valuation state travels next to the weights
    loaded = MLP.load_from_checkpoint(tmp_path / "last.ckpt")  # strict by default
    assert not hasattr(loaded, "dv_state")
    x = torch.as_tensor(s.x_train[:8])
    torch.testing.assert_close(loaded(x), model(x))


def test_resume_with_ckpt_path_is_exact(tmp_path):
    s = digits_split(n_train=200)

    def run(epochs, ckpt=None, callbacks=()):
        seeded(0)
        model = MLP(s.x_train.shape[1], s.num_classes)
        cb = DataValuation(LossVal(validation=(s.x_valid, s.y_valid)))
        trainer = L.Trainer(
            max_epochs=epochs,
            callbacks=[cb, *callbacks],
            **trainer_kwargs(enable_checkpointing=True, default_root_dir=tmp_path / "root"),
        )
        trainer.fit(model, resumable_loader(s.x_train, s.y_train), ckpt_path=ckpt)
        return cb

    full = run(4)
    run(2, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    resumed = run(4, ckpt=str(tmp_path / "last.ckpt"))
    np.testing.assert_allclose(resumed.values.values, full.values.values, rtol=1e-5, atol=1e-6)
    assert resumed.optimizer_steps == full.optimizer_steps


def test_a_plain_checkpoint_can_be_fine_tuned_with_valuation(tmp_path):
    s = digits_split(n_train=200)
    seeded(0)
    plain = L.Trainer(max_epochs=1, **trainer_kwargs())
    model = MLP(s.x_train.shape[1], s.num_classes)
    model.valuate = False  # a plain fit: the mean loss, no valuation
    plain.fit(model, loader(s.x_train, s.y_train))
    plain.save_checkpoint(tmp_path / "plain.ckpt")
    cb = DataValuation(NDDV())
    trainer = L.Trainer(max_epochs=2, callbacks=[cb], **trainer_kwargs())
    trainer.fit(
        MLP(s.x_train.shape[1], s.num_classes),
        loader(s.x_train, s.y_train),
        ckpt_path=tmp_path / "plain.ckpt",
    )
    assert len(cb.values) == 200 and cb.values.metadata["epochs"] == 1
