"""Whether an objective learns its per-row weights: the checks LossVal and NDDV share.

An objective with per-row weights (LossVal, NDDV's softplus weighting) learns them with Adam only
where something reads them: the user's model (``DataValuation(model_loss="reweight")`` or
``"objective"``) or the values themselves (LossVal's ``signal="weights"``). At
``model_loss="plain"`` they stay at their initial value: no weight state, no weight step
(``learn_weights=None``, the default). Why: on the benchmark protocol the fixed weights detect as
well or better for both objectives (docs/lossval_speed.md, docs/nddv.md, "session 6"), for 16
bytes per row and a weight step less.

Example:
    >>> check_learn_weights(None)
    >>> check_serves_model_loss("LossVal", False, "plain")
    >>> check_serves_model_loss("LossVal", False, "reweight")
    Traceback (most recent call last):
    ...
    ValueError: `DataValuation(model_loss='reweight')` trains the model on LossVal's learned weights, ...
"""

from __future__ import annotations

__all__ = ["check_learn_weights", "check_serves_model_loss", "check_checkpoint_weights"]


def check_learn_weights(learn_weights: object) -> None:
    """Refuse anything but ``True``, ``False`` or ``None`` (automatic) for ``learn_weights``."""
    if learn_weights not in (None, True, False):
        raise TypeError(f"`learn_weights` must be True, False or None (automatic); got {learn_weights!r}.")


def check_serves_model_loss(objective: str, learn_weights: bool | None, model_loss: str) -> None:
    """Refuse ``learn_weights=False`` where the user's model trains on the weights."""
    if learn_weights is False and model_loss != "plain":
        raise ValueError(
            f"`DataValuation(model_loss={model_loss!r})` trains the model on {objective}'s learned weights, but "
            f"`{objective}(learn_weights=False)` keeps them fixed: pass `learn_weights=True` (or leave it None), "
            "or use model_loss='plain'."
        )


def check_checkpoint_weights(objective: str, stored: bool, kept: bool, what: str = "weights") -> None:
    """Name the cause when a checkpoint's state has learned weights (``stored``) and this fit's does
    not (``kept`` False), or the reverse, instead of a strict load's list of keys."""
    if stored == kept:
        return
    written, wanted, keeps = ("learned", "True", "fixed") if stored else ("fixed", "False", "learned")
    before = f" ({objective}'s default before session 6)" if stored else ""
    raise ValueError(
        f"this checkpoint holds {objective}'s state with {written} {what}{before}, but this fit's "
        f"{objective} keeps them {keeps}: resume with `{objective}(..., learn_weights={wanted})`."
    )
