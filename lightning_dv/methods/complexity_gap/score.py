"""The complexity gap of a whole labelled set: inputs checked, duplicates resolved, problems solved."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightning_dv._validation import check_choice
from lightning_dv.methods.complexity_gap.duplicates import Duplicates, normalise, resolve_duplicates
from lightning_dv.methods.complexity_gap.kernel import NotPositiveDefiniteError, cg_scores
from lightning_dv.methods.complexity_gap.memory import available_memory, memory_message, problem_memory_bytes
from lightning_dv.methods.complexity_gap.problems import (
    MODES,
    CGProblem,
    _encode_labels,
    _item,
    plan_problems,
)
from lightning_dv.progress import Progress, ProgressFn
from lightning_dv.values import DataValues

log = logging.getLogger("lightning_dv.methods.complexity_gap")

#: Seconds of work before the progress bar appears: short runs print nothing.
PROGRESS_DELAY_S = 2.0


def complexity_gap(
    features: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | Sequence[Any],
    *,
    mode: Literal["ovr", "binary"] = "ovr",
    ratio: float = 1.0,
    rep: int = 1,
    seed: int = 0,
    ridge: float = 0.0,
    block_size: int = 1024,
    max_memory_bytes: int | None = None,
    subsample: int | None = None,
    device: torch.device | str | None = None,
    progress: bool | ProgressFn | None = True,
    ids: Sequence[Any] | None = None,
) -> DataValues:
    """Complexity-gap score of every row, exact, from one Cholesky factorisation per problem.

    Inputs are flattened and L2-normalised (so the score ignores each row's scale), everything
    runs in float64 on ``device`` (default: where ``features`` lives, so CUDA tensors compute on
    the GPU). The Gram matrix is built in row blocks and factorised in place; per problem the
    memory is one ``m x m`` float64 matrix plus ``O(m * block_size)`` working space. Before
    allocating, the need is checked against the free memory and a :class:`MemoryError` names the
    size and the ``subsample=`` value that fits.

    Duplicates: rows whose normalised features are identical (exact or rescaled copies: equal to
    ``2^-32`` in every coordinate) make ``H`` singular; for distinct directions the NTK Gram matrix
    is positive definite. Duplicates are reported with a warning naming the rows. With ``ridge=0``
    (default) copies with the SAME label are kept once in every problem (so they are also drawn
    once as negatives) and all of them score ``CG = 0``: this is the exact limit
    ``ridge -> 0`` (removing one copy leaves the fit unchanged). Copies with DIFFERENT labels have
    an infinite gap at ``ridge=0``: they are left out of every problem (so every other row scores
    exactly as on the data without them) and scored just above the largest finite score, the most
    suspicious rows (column ``conflicting``). ``ridge > 0`` uses ``H + ridge * I`` (kernel ridge
    instead of interpolation): every score changes, copies stay in, conflicting copies get large
    finite scores. Should the factorisation still fail, the error names the row and suggests a ridge.

    Args:
        features: ``(N, ...)`` inputs or embeddings; flattened to ``(N, d)``.
        labels: ``(N,)`` class labels (any hashable values).
        mode: ``"ovr"``: the authors' one-vs-rest scheme, one problem per class with sampled
            negatives (see :func:`plan_problems`); ``"binary"``: the whole set as one problem
            (exactly two classes).
        ratio: Negatives per positive in one-vs-rest (the paper uses 1).
        rep: Repetitions with fresh negatives; scores are averaged.
        seed: Seed of the negative sampling.
        ridge: Added to the diagonal of ``H``. Changes every score; see above.
        block_size: Rows per block of the Gram build and columns per panel of ``L^-1``.
        max_memory_bytes: Memory allowed for one problem (default: the free memory of the
            device: ``MemAvailable`` on CPU, ``torch.cuda.mem_get_info`` on CUDA).
        subsample: At most this many scored rows per problem; larger classes (binary: the whole
            set) are split at random into parts. Memory falls quadratically; every row is still
            scored, each against a smaller context, so scores change.
        device: Where to compute (default: the device of ``features``).
        progress: True (default): a k/N bar over the problems on rank zero, shown once the work
            takes more than two seconds; False / None: silent; or a function
            ``progress(done, total, description)`` called after every problem. Every problem is
            also logged at INFO level to the ``lightning_dv.methods.complexity_gap`` logger.
        ids: Optional user id per row, carried into the result.

    Returns:
        :class:`DataValues` with ``values = -CG`` (higher = more valuable), columns ``cg_score``
        (raw CG, high = suspicious), ``duplicate_of`` (first row of the row's duplicate group,
        or -1) and ``conflicting`` (identical features, different labels), settings in ``metadata``.

    Raises:
        MemoryError: One problem would not fit; the message names the size and ``subsample=``.
        ValueError: Bad arguments, or a Gram matrix that is not numerically positive definite.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(40) % 2
        >>> x = torch.randn(40, 5, generator=g)
        >>> x[:, 0] += 4.0 * y - 2.0               # two classes, two directions
        >>> y[:2] = 1 - y[:2]                      # two flipped labels
        >>> dv = complexity_gap(x, y, seed=0)
        >>> bool((dv.columns["cg_score"] >= 0).all()), dv.values.shape
        (True, (40,))
        >>> sorted(dv.lowest(2).index.tolist())   # the flipped rows are the least valuable
        [0, 1]
    """
    if int(block_size) < 1:
        raise ValueError(f"`block_size` must be >= 1; got {block_size}.")
    if not ridge >= 0:
        raise ValueError(f"`ridge` must be >= 0; got {ridge}.")
    xn, codes, classes = _prepare(features, labels, device)
    dups = resolve_duplicates(xn, codes, classes, ridge)
    problems = _plan(codes, classes, dups, mode=mode, ratio=ratio, rep=rep, seed=seed, subsample=subsample)
    _check_memory(problems, xn, int(block_size), mode, ratio, max_memory_bytes)
    start = time.perf_counter()
    cg_all = _solve(problems, xn, ridge, int(block_size), progress)
    cg_all = _score_duplicates(cg_all, dups)
    return DataValues(
        values=-cg_all,
        method="complexity_gap",
        ids=ids,
        columns={
            "cg_score": cg_all.numpy(),
            "duplicate_of": dups.duplicate_of.numpy(),
            "conflicting": dups.conflicting.numpy(),
        },
        metadata={
            "mode": mode,
            "ratio": ratio,
            "rep": rep,
            "seed": seed,
            "ridge": ridge,
            "subsample": subsample,
            "problems": len(problems),
            "duplicate_groups": dups.groups,
            "conflicting_rows": int(dups.conflicting.sum()),
            "seconds": time.perf_counter() - start,
        },
    )


def _prepare(features: Any, labels: Any, device: Any) -> tuple[Tensor, Tensor, np.ndarray]:
    """Flattened, L2-normalised float64 rows on the compute device; class codes; class values."""
    x = features if isinstance(features, Tensor) else torch.as_tensor(np.asarray(features))
    dev = torch.device(device) if device is not None else x.device
    if x.ndim < 2:
        raise ValueError(f"`features` must have shape (N, d) or (N, ...); got shape {tuple(x.shape)}.")
    n = x.shape[0]
    if n == 0:
        raise ValueError(
            "`features` has no rows: pass the features of the rows to score, shape (N, d) with N >= 1."
        )
    codes, classes = _encode_labels(labels)
    if len(codes) != n:
        raise ValueError(
            f"`labels` has {len(codes)} entries but `features` has {n} rows; give one label per row."
        )
    xn = normalise(x.reshape(n, -1).to(device=dev, dtype=torch.float64))
    if not torch.isfinite(xn).all():
        bad = torch.nonzero(~torch.isfinite(xn).all(1)).reshape(-1)[:10].tolist()
        raise ValueError(f"`features` hold NaN or inf values (rows {bad}...); clean or impute them first.")
    return xn, codes, classes


def _plan(codes: Tensor, classes: np.ndarray, dups: Duplicates, **options: Any) -> list[CGProblem]:
    """The problems to solve (duplicates set aside), labelled with the user's class values."""
    problems = [p for p in plan_problems(codes, exclude=dups.exclude, **options) if p.num_scored]
    if not problems:
        raise ValueError(
            "every row has an identical copy with a different label, so no row is left to score; "
            "pass ridge=1e-3 to score them with a kernel ridge."
        )
    return [
        CGProblem(
            p.rows, p.targets, p.num_scored, None if p.label is None else _item(classes[p.label]), p.rep
        )
        for p in problems
    ]


def _check_memory(
    problems: list[CGProblem], xn: Tensor, block_size: int, mode: str, ratio: float, user_limit: int | None
) -> None:
    """Refuse before allocating when the largest problem does not fit."""
    limit = available_memory(xn.device) if user_limit is None else int(user_limit)
    d = xn.shape[1]
    biggest = max(problems, key=lambda p: len(p.rows))
    need = problem_memory_bytes(len(biggest.rows), biggest.num_scored, d, block_size)
    if need > limit:
        raise MemoryError(memory_message(biggest, need, limit, d, block_size, mode, ratio, user_limit))


def _solve(
    problems: list[CGProblem], xn: Tensor, ridge: float, block_size: int, progress: bool | ProgressFn | None
) -> Tensor:
    """Mean CG score of every row over the problems that score it (0 where none does)."""
    n = xn.shape[0]
    total = torch.zeros(n, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.float64)
    with Progress(progress, len(problems), "complexity gap", delay=PROGRESS_DELAY_S) as bar:
        for k, p in enumerate(problems):
            t0 = time.perf_counter()
            try:
                cg = cg_scores(
                    xn[p.rows.to(xn.device)], p.targets.to(xn.device), p.num_scored, ridge, block_size
                )
            except NotPositiveDefiniteError as err:
                raise NotPositiveDefiniteError(err.position, ridge, row=int(p.rows[err.position])) from None
            scored = p.scored_rows
            total[scored] += cg.cpu()
            count[scored] += 1
            msg = p.describe()
            log.info(
                "complexity_gap: problem %d/%d (%s) took %.2f s",
                k + 1,
                len(problems),
                msg,
                time.perf_counter() - t0,
            )
            bar.update(msg)
    return total / count.clamp_min(1)


def _score_duplicates(cg: Tensor, dups: Duplicates) -> Tensor:
    """Merged copies score 0; conflicting copies just above the largest finite score."""
    cg = cg.clone()
    cg[dups.merged] = 0.0
    if dups.conflicting.any():
        top = float(cg[~dups.conflicting].max()) if (~dups.conflicting).any() else 0.0
        cg[dups.conflicting] = float(np.nextafter(top, np.inf))
    return cg


class ComplexityGap:
    """The complexity gap as a whole-set method: ``ComplexityGap(...).fit(features, labels)``.

    Holds the settings of :func:`complexity_gap` (see there for the formula and every
    argument) so that :class:`~lightning_dv.callbacks.WholeSetValuation` can run it.

    Example:
        >>> x = torch.tensor([[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 0.9]])
        >>> ComplexityGap(seed=0).fit(x, [0, 0, 1, 1]).values.shape
        (4,)
    """

    name = "complexity_gap"

    def __init__(
        self,
        mode: Literal["ovr", "binary"] = "ovr",
        ratio: float = 1.0,
        rep: int = 1,
        seed: int = 0,
        ridge: float = 0.0,
        subsample: int | None = None,
        block_size: int = 1024,
        max_memory_bytes: int | None = None,
        device: torch.device | str | None = None,
        progress: bool | ProgressFn | None = True,
    ) -> None:
        check_choice("mode", mode, MODES)
        self.options: dict[str, Any] = dict(
            mode=mode,
            ratio=ratio,
            rep=rep,
            seed=seed,
            ridge=ridge,
            subsample=subsample,
            block_size=block_size,
            max_memory_bytes=max_memory_bytes,
            progress=progress,
        )
        self.device = device

    def fit(self, features: Tensor | np.ndarray, labels: Any, ids: Sequence[Any] | None = None) -> DataValues:
        """Complexity gap of every row (computed on ``device``, default: where ``features`` lives)."""
        device = self.device if self.device is not None else getattr(features, "device", None)
        return complexity_gap(features, labels, device=device, ids=ids, **self.options)
