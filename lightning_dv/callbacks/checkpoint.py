"""Where the valuation state lives in a checkpoint: next to the model's weights, not among them.

The :class:`~lightning_dv.DataValuation` callback registers the objective's state on the
LightningModule as ``dv_state`` (so it moves to the device, is all-reduced by DDP and restored
exactly), which puts ``dv_state.*`` keys in the model's ``state_dict``. A plain
``Model.load_from_checkpoint(path)`` (strict) would then fail on unexpected keys. The callback's
``on_save_checkpoint`` moves those entries to the top-level key :data:`CHECKPOINT_KEY`; the mixin's
``on_load_checkpoint``, which Lightning calls before it restores the model, moves them back when
the module carries a valuation state (a resumed fit), and leaves them outside otherwise.
"""

from __future__ import annotations

from typing import Any

#: Attribute under which the objective's learnable state is registered on the LightningModule.
STATE_ATTR = "dv_state"
#: Top-level checkpoint key that holds the ``dv_state.*`` tensors, outside the model's state_dict.
CHECKPOINT_KEY = "lightning_dv_state"


def relocate_state_out(checkpoint: dict[str, Any]) -> None:
    """Move ``dv_state.*`` entries from ``checkpoint["state_dict"]`` to ``checkpoint[CHECKPOINT_KEY]``.

    Example:
        >>> ckpt = {"state_dict": {"net.weight": 1, "dv_state.weights.raw": 2}}
        >>> relocate_state_out(ckpt)
        >>> ckpt
        {'state_dict': {'net.weight': 1}, 'lightning_dv_state': {'weights.raw': 2}}
        >>> relocate_state_in(ckpt, expected={"weights.raw": 0})
        >>> ckpt["state_dict"]
        {'net.weight': 1, 'dv_state.weights.raw': 2}
    """
    model_state = checkpoint.get("state_dict")
    if not model_state:
        return
    prefix = STATE_ATTR + "."
    moved = {k[len(prefix) :]: model_state.pop(k) for k in list(model_state) if k.startswith(prefix)}
    if moved:
        checkpoint[CHECKPOINT_KEY] = moved


def relocate_state_in(checkpoint: dict[str, Any], expected: dict[str, Any] | None) -> None:
    """Put the valuation state back into ``checkpoint["state_dict"]`` before the model is restored.

    Args:
        checkpoint: The loaded checkpoint (modified in place).
        expected: The module's current ``dv_state`` state_dict, or None when the module carries no
            valuation state (plain inference: the entries stay outside, so strict loading works).
            A checkpoint written WITHOUT the callback gets the current (initial) entries, so a plain
            checkpoint can be fine-tuned with valuation.
    """
    if expected is None:
        return
    model_state = checkpoint.setdefault("state_dict", {})
    stored = checkpoint.pop(CHECKPOINT_KEY, None)
    prefix = STATE_ATTR + "."
    if stored is None:
        if any(k.startswith(prefix) for k in model_state):
            return  # a checkpoint from before the relocation: already in place
        stored = expected
    for k, v in stored.items():
        model_state[prefix + k] = v
