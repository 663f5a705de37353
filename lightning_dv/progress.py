"""Progress and quiet: one k/N bar for long valuation work, and silence for nested Lightning fits."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from lightning.pytorch.utilities.rank_zero import rank_zero_only
from tqdm.auto import tqdm

#: ``progress(done, total, description)``: a user function called after every unit of work.
ProgressFn = Callable[[int, int, str], None]


class Progress:
    """Report ``done / total`` units of work: a tqdm bar, a user function, or nothing.

    Args:
        progress: True (a tqdm bar on rank zero), False / None (silent) or a function
            ``progress(done, total, description)``.
        total: Units of work.
        desc: Label of the bar.
        delay: Seconds before the bar appears, so work shorter than that prints nothing.

    Example:
        >>> seen = []
        >>> with Progress(lambda k, n, d: seen.append((k, n)), total=2, desc="demo") as p:
        ...     p.update("a"); p.update("b")
        >>> seen
        [(1, 2), (2, 2)]
    """

    def __init__(self, progress: bool | ProgressFn | None, total: int, desc: str, delay: float = 0.0) -> None:
        if progress is not None and not isinstance(progress, bool) and not callable(progress):
            raise TypeError(
                f"`progress` must be True, False or a function progress(done, total, description); "
                f"got {type(progress).__name__}."
            )
        self.fn = progress if callable(progress) else None
        self.total = total
        self.done = 0
        show = progress is True and getattr(rank_zero_only, "rank", 0) == 0
        self.bar = tqdm(total=total, desc=desc, delay=delay) if show else None

    def update(self, description: str = "", n: int = 1) -> None:
        """Mark ``n`` more units done."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.fn is not None:
            self.fn(self.done, self.total, description)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Lightning's chatter around a nested fit that tells the user nothing about their own run.
QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*number of training batches.*",
    ".*GPU available but not used.*",
)


@contextmanager
def quiet_lightning(*messages: str, level: int = logging.WARNING) -> Iterator[None]:
    """Silence Lightning's per-fit banners, summaries and data-loader hints for nested fits.

    Lightning's loggers are raised to ``level`` and the warnings matching :data:`QUIET_WARNINGS`
    (plus the regular expressions in ``messages``) are ignored, until the block ends.

    Example:
        >>> with quiet_lightning():
        ...     logging.getLogger("lightning.pytorch").isEnabledFor(logging.INFO)
        False
    """
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        with warnings.catch_warnings():
            for message in (*QUIET_WARNINGS, *messages):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def quiet_trainer_settings(**overrides) -> dict:
    """``Trainer`` arguments for a fit run on the user's behalf (``valuate``, the benchmarks): one
    CPU device, no logger, checkpoints, model summary, progress bar or sanity check; ``overrides`` win.

    Example:
        >>> quiet_trainer_settings(max_epochs=3, enable_progress_bar=True)["enable_progress_bar"]
        True
    """
    return {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        "num_sanity_val_steps": 0,
        **overrides,
    }
