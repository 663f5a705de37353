"""TensorBoard shows the lowest rows (image grid or text table) and per-class summaries: read back from events."""

from __future__ import annotations

import lightning as L
import torch
from helpers import MLP, digits_split, loader, seeded, trainer_kwargs
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

from lightning_dv import NDDV, DataValuation


class ImageMLP(MLP):
    """Takes ``(B, 1, 8, 8)`` digit images."""

    def forward(self, x):
        return self.net(x.reshape(x.shape[0], -1))


def _events(logger):
    acc = EventAccumulator(logger.log_dir, size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    acc.Reload()
    return acc


def _fit(model, x, y, tmp_path, **cb_kwargs):
    seeded(0)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    cb = DataValuation(NDDV(), **cb_kwargs)
    kwargs = trainer_kwargs(logger=logger)
    trainer = L.Trainer(max_epochs=2, callbacks=[cb], **kwargs)
    trainer.fit(model, loader(x, y))
    return cb, _events(logger)


def test_image_inputs_give_a_grid_of_the_lowest_images(tmp_path):
    s = digits_split(n_train=200)
    images = torch.as_tensor(s.x_train).reshape(-1, 1, 8, 8)
    cb, acc = _fit(ImageMLP(64, 10), images, s.y_train, tmp_path, num_lowest=12, log_lowest_every_n_epochs=1)
    tags = [t for t in acc.Tags()["images"] if "lowest" in t]
    assert tags == ["data_values/nddv/lowest_images"]
    shots = acc.Images(tags[0])
    assert len(shots) == 3  # every epoch (2) and the end of fit
    assert (shots[-1].height, shots[-1].width) == (2 + 2 * 10, 2 + 8 * 10)  # 12 images, 8 per row
    text = acc.Tensors("data_values/nddv/lowest_images_rows/text_summary")[-1]
    first = text.tensor_proto.string_val[0].decode().splitlines()[2]
    assert first.startswith(f"| {cb.values.lowest(1).index[0]} | ")


def test_tabular_inputs_give_a_text_table_and_per_class_scalars(tmp_path):
    s = digits_split(n_train=200)
    cb, acc = _fit(MLP(64, 10), s.x_train, s.y_train, tmp_path)
    assert not [t for t in acc.Tags()["images"] if "lowest" in t]
    table = acc.Tensors("data_values/nddv/lowest_rows/text_summary")[-1].tensor_proto.string_val[0].decode()
    lines = table.splitlines()
    assert lines[0] == "| row | label | value | flagged |" and len(lines) == 2 + 16
    low = cb.values.lowest(1)
    assert lines[2].startswith(f"| {low.index[0]} | {s.y_train[low.index[0]]} | ")
    assert cb.values.labels.tolist() == s.y_train.tolist()
    for c in range(10):
        means = acc.Scalars(f"data_values/nddv/class_{c}/mean")
        assert len(means) == 2
        v = cb.values.values[s.y_train == c].mean()
        assert abs(means[-1].value - v) < 1e-4 * max(1.0, abs(v))
        assert 0.0 <= acc.Scalars(f"data_values/nddv/class_{c}/flagged")[-1].value <= 1.0
