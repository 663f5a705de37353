"""`DataValuationMixin`: the one call a user adds to ``training_step``."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor


class DataValuationMixin:
    """Mixin for a ``LightningModule`` whose training rows should be valued while it trains.

    Put it BEFORE ``LightningModule`` in the bases and return ``self.valuation_loss(...)`` from
    ``training_step``. Without a :class:`~lightning_dv.DataValuation` callback on the trainer the
    call falls back to the plain mean loss (with a one-time warning), so the same module also
    trains normally.

    Example:
        >>> import lightning as L, torch.nn.functional as F
        >>> class Classifier(DataValuationMixin, L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(4, 3)
        ...     def training_step(self, batch, batch_idx):
        ...         idx, x, y = batch
        ...         logits = self.net(x)
        ...         per_sample = F.cross_entropy(logits, y, reduction="none")
        ...         return self.valuation_loss(per_sample, idx, inputs=x, outputs=logits, targets=y)
    """

    _dv_warned_no_callback: bool = False

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put the valuation state (kept outside the model's ``state_dict``) back before resuming.

        A :class:`~lightning_dv.DataValuation` callback stores its ``dv_state.*`` tensors in the
        checkpoint next to the model's weights, not among them, so ``Model.load_from_checkpoint``
        loads strictly without the callback. When a fit resumes with ``ckpt_path=``, this hook
        returns them to the ``state_dict`` Lightning is about to restore. If you override
        ``on_load_checkpoint``, call ``super().on_load_checkpoint(checkpoint)``.
        """
        from lightning_dv.callbacks.checkpoint import STATE_ATTR, relocate_state_in

        state = getattr(self, STATE_ATTR, None)
        relocate_state_in(checkpoint, None if state is None else state.state_dict())
        parent = getattr(super(), "on_load_checkpoint", None)
        if parent is not None:
            parent(checkpoint)

    def valuation_loss(
        self,
        per_sample_loss: Tensor,
        idx: Tensor,
        inputs: Any = None,
        outputs: Tensor | None = None,
        targets: Tensor | None = None,
    ) -> Tensor:
        """The training loss with the valuation objective applied.

        Args:
            per_sample_loss: UNREDUCED loss, one entry per sample (``reduction="none"``).
            idx: Dataset row of each sample (the first element of an ``IndexedDataset`` batch).
            inputs: The batch inputs (LossVal's OT term compares their features).
            outputs: The model outputs (NDDV reads the terminal state from them).
            targets: The batch targets.

        Returns:
            A scalar loss to return from ``training_step``.
        """
        from lightning_dv.callbacks import DataValuation

        trainer = getattr(self, "_trainer", None)
        callback = None
        if trainer is not None:
            found = [c for c in trainer.callbacks if isinstance(c, DataValuation)]
            callback = found[0] if found else None
        if callback is None:
            # a whole-set callback (complexity gap, EcoVal) values the data without this loss
            whole_set = trainer is not None and any(
                type(c).__module__.startswith("lightning_dv.") for c in trainer.callbacks
            )
            if not self._dv_warned_no_callback and not whole_set:
                self._dv_warned_no_callback = True  # once per model, not once per class
                rank_zero_warn(
                    "valuation_loss() was called but the Trainer has no DataValuation callback: training with "
                    "the plain mean loss and valuing nothing. Add `callbacks=[DataValuation(LossVal(...))]`."
                )
            return torch.as_tensor(per_sample_loss).mean()
        return callback.compute_loss(self, per_sample_loss, idx, inputs, outputs, targets)
