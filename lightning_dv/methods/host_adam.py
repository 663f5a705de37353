"""The exact row-sparse Adam of :class:`~lightning_dv.methods.weights.SampleWeights` on host arrays.

For a row last updated at step ``t0`` with moments ``m, v`` (``u = sqrt(v)``), dense Adam (Kingma &
Ba, 2015) with a zero gradient moves it at step ``t0 + k`` by::

    term_k = lr m a_k / (u c_k + eps),   a_k = b1^k / (1 - b1^(t0+k)),   c_k = b2^(k/2) / sqrt(1 - b2^(t0+k))

A read needs the terms not yet applied, ``R(b) = sum_{k > b} term_k`` (``b`` steps after ``t0``).
Summing ``K`` terms per row costs ``O(rows x K)`` per step; with ``x = eps / u`` small the
geometric series ``1 / (u c + eps) = sum_j (-x)^j / (u c^(j+1))`` separates the row from the step::

    R(b) = lr (m / u) sum_{j < J} (-x)^j G_j(t0, b),    G_j(t0, b) = sum_{k > b} a_k / c_k^(j+1)

``G`` depends on ``t0`` and the betas only: it is computed once per step (``J x K`` numbers) and
kept for the last ``K`` steps, so a row costs ``O(J)``. The truncation is below
``x_max^J / (1 - x_max)`` of the row's tail with ``x_max = eps / (u min_k c_k)``; rows with
``x_max > 1e-3`` (``J = 3``: below 1e-9, far under float32 rounding), e.g. rows whose gradients
were all ~0, sum their ``K`` terms exactly. On CPU the weights' tensors are read and written
through zero-copy NumPy views (~1 us per operation against ~5-10 us for a torch CPU call on 32
numbers); the torch path of :class:`~lightning_dv.methods.weights.SampleWeights` stays for
other devices.

Why: the row-sparse step then costs about what torch's fused dense step costs at 1,000 rows
(docs/scaling.md), so a step's cost does not depend on N.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["HostRowAdam", "merge_rows"]


def merge_rows(rows: np.ndarray, grads: np.ndarray, values: np.ndarray, world_size: int = 1):
    """Distinct rows, their summed gradients (over ``world_size``) and the values read, on host arrays.

    Rows that are already distinct (the sampler's usual case: a Python set of a batch's rows, or one
    sort of a larger set) are returned as they are.

    Example:
        >>> r, g, v = merge_rows(np.array([2, 0, 2]), np.array([1.0, 3.0, 1.0]), np.array([0.5, 0.1, 0.5]))
        >>> r.tolist(), g.tolist(), v.tolist()
        ([0, 2], [3.0, 2.0], [0.1, 0.5])
    """
    if rows.size <= 512:  # a set of a few hundred ints costs less than the NumPy calls of a sort
        distinct = len(set(rows.tolist())) == rows.size
    else:
        ordered = np.sort(rows)
        distinct = not np.count_nonzero(ordered[1:] == ordered[:-1])
    if distinct:
        return rows, (grads / world_size if world_size > 1 else grads), values
    uniq, inverse = np.unique(rows, return_inverse=True)
    summed = np.bincount(inverse, weights=grads, minlength=uniq.size).astype(grads.dtype)
    read = np.empty(uniq.size, dtype=values.dtype)
    read[inverse] = values  # every read of a row saw the same value
    return uniq, (summed / world_size if world_size > 1 else summed), read


class HostRowAdam:
    """Row-sparse Adam on NumPy arrays: the not-yet-applied tail of a row, and one step of distinct rows.

    Args:
        lr, betas, eps: Adam's settings.
        window: Number ``K`` of tail terms kept (:func:`~lightning_dv.methods.weights.tail_window`).

    Example:
        >>> adam = HostRowAdam(0.1, (0.9, 0.999), 1e-8, window=176)
        >>> raw, m, v = np.ones(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32)
        >>> last = np.zeros(3, np.int32)
        >>> rows = np.array([1])
        >>> adam.step(raw, m, v, last, rows, np.array([1.0], np.float32), raw[rows], now=1)
        >>> [round(float(x), 4) for x in adam.read(raw, m, v, last, rows, now=1)]
        [0.9]
        >>> exact = adam.tail(m[rows], v[rows], last[rows], np.array([5]), now=6)
        >>> bool(np.isclose(adam.remaining(m[rows], v[rows], last[rows], np.array([5]), now=6), exact, rtol=1e-12))
        True
    """

    #: Terms of the series in ``eps / sqrt(v)``, and the largest ``eps / (sqrt(v) min c)`` it serves.
    ORDER, RATIO = 3, 1e-3

    def __init__(self, lr: float, betas: tuple[float, float], eps: float, window: int) -> None:
        self.lr, self.betas, self.eps, self.window = lr, betas, eps, window
        b1, b2 = betas
        self.k = np.arange(1, window + 1)
        self.p1 = b1 ** self.k.astype(np.float64)
        self.q2 = np.sqrt(b2 ** self.k.astype(np.float64))
        self._powers = np.arange(1, self.ORDER + 1, dtype=np.float64)[:, None]
        # Beyond ``cap`` both bias corrections are exactly 1 in float64: the tables stop there.
        tiny = math.log(2.0**-54)
        self.cap = 1 + max(math.ceil(tiny / math.log(b)) if b > 0 else 1 for b in betas)
        self._a1 = self._a2 = np.empty(0)
        # lr G_j(t0, b) of the last K and the next K steps, [j, slot t0 % 2K, b] (b = K: zero), read
        # through the flat view [j, slot (K + 1) + b] with one ``take``; the step each slot holds.
        self._series = np.zeros((self.ORDER, 2 * window, window + 1))
        self._flat = self._series.reshape(self.ORDER, -1)
        self._slot_step = np.full(2 * window, -1, dtype=np.int64)
        self._filled_since: int | None = None  # every step since this one filled its slot
        # c_k >= b2^(K/2): below this sqrt(v) the series is not used.
        self._u_min = eps / (self.RATIO * self.q2[-1])
        self._scalars: dict[int, tuple] = {}  # per-step numbers of the next K steps

    def _tables(self, upto: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """``1 / (1 - b1^s)`` and ``1 / sqrt(1 - b2^s)`` for ``s = 0..min(upto, cap)`` (grown by doubling); capped?"""
        if self._a1.size <= min(upto, self.cap):
            size = min(max(2 * self._a1.size, upto + 1, 1024), self.cap + 1)
            s = np.arange(size, dtype=np.float64)
            b1, b2 = self.betas
            with np.errstate(divide="ignore"):  # step 0 is never looked up
                self._a1 = 1.0 / (1.0 - b1**s)
                self._a2 = 1.0 / np.sqrt(1.0 - b2**s)
        return self._a1, self._a2, self._a1.size == self.cap + 1

    def _steps(self, t0: np.ndarray, now: int) -> np.ndarray:
        """Global steps ``t0 + k`` as table indices, shape ``(len(t0), K)``."""
        _, _, capped = self._tables(now + self.window)
        s = np.add.outer(np.asarray(t0, dtype=np.int64), self.k)
        return np.minimum(s, self.cap, out=s) if capped else s

    def tail(self, m: np.ndarray, v: np.ndarray, t0: np.ndarray, after: np.ndarray, now: int) -> np.ndarray:
        """Exact sum of each row's tail terms ``k = after + 1 .. K`` after its update at ``t0`` (float64)."""
        s = self._steps(t0, now)
        den = np.multiply.outer(np.sqrt(v, dtype=np.float64), self.q2)
        den *= self._a2.take(s)
        den += self.eps
        num = self._a1.take(s)
        num *= self.p1
        num /= den
        num *= np.less.outer(after, self.k)  # terms already applied (k <= after) count zero
        return (self.lr * m.astype(np.float64)) * num.sum(axis=1)

    def reset(self) -> None:
        """Check the tables of recent steps again at the next reads (after a load, or steps taken elsewhere)."""
        self._filled_since = None
        self._scalars = {}

    def _fill(self, t0: np.ndarray, now: int) -> tuple[np.ndarray, np.ndarray]:
        """Compute ``lr G_j(t0, b)`` (``b = 0 .. K``; zero at ``K``) of the distinct steps ``t0`` into their
        slots; returns the terms' ``a_k, c_k`` of each step, ``(T, K)`` each."""
        s = self._steps(t0, int(t0.max()))
        a = self.p1 * self._a1.take(s)  # (T, K)
        c = self.q2 * self._a2.take(s)
        inv = 1.0 / c
        terms = np.empty((self.ORDER, *a.shape))  # [j, T, K]: a_k / c_k^(j+1), by products (no pow)
        np.multiply(a, inv, out=terms[0])
        for j in range(1, self.ORDER):
            np.multiply(terms[j - 1], inv, out=terms[j])
        suffix = np.cumsum(terms[:, :, ::-1], axis=2)[:, :, ::-1]  # suffix[.., i] = sum_{k > i}
        slots = t0 % self._series.shape[1]
        suffix *= self.lr
        self._series[:, slots, : self.window] = suffix  # [j, slot, b]
        self._slot_step[slots] = t0
        return a, c

    def _series_sum(self, m: np.ndarray, v: np.ndarray, g0, g1, g2) -> tuple[np.ndarray, np.ndarray]:
        """``(m / u) sum_j (-eps / u)^j lr g_j`` per row, and the rows the series does not serve.

        ``g_j``: per-row arrays or one number each (rows of one step). About a dozen NumPy calls on
        the batch: ``u`` is floored at the smallest ``sqrt(v)`` the series serves, so no division
        warns (rows below it, zero ``u`` included, are reported and recomputed by the caller).
        """
        u = np.sqrt(v, dtype=np.float64)
        exact = u <= self._u_min
        np.maximum(u, self._u_min, out=u)
        x = self.eps / u
        out = x * g2
        np.subtract(g1, out, out=out)
        out *= x
        np.subtract(g0, out, out=out)
        out *= m
        out /= u
        return out, exact

    def _exact_rows(self, out, exact, m, v, t0, after, now) -> None:
        """Replace the series' result of the ``exact`` rows by their summed ``K`` terms (zero if no gradient yet)."""
        out[exact] = 0.0  # rows that never had a gradient: no tail
        exact &= (m != 0) & (after < self.window)
        if exact.any():
            out[exact] = self.tail(m[exact], v[exact], t0[exact], after[exact], now)

    def remaining(
        self, m: np.ndarray, v: np.ndarray, t0: np.ndarray, after: np.ndarray, now: int
    ) -> np.ndarray:
        """``R(after)``: each row's tail terms ``k > after`` after its update at ``t0`` (zero once ``after >= K``)."""
        K = self.window
        slots = t0 % (2 * K)
        if self._filled_since is None or self._filled_since > now - K:  # K steps after a start or a load
            stale = (self._slot_step[slots] != t0) & (after < K) & (m != 0)
            if stale.any():
                self._fill(np.unique(t0[stale]), now)
        slots *= K + 1
        slots += np.minimum(after, K)
        g0, g1, g2 = self._flat.take(slots, axis=1)
        out, exact = self._series_sum(m, v, g0, g1, g2)
        if exact.any():
            self._exact_rows(out, exact, m, v, t0, after, now)
        return out

    def read(
        self,
        raw: np.ndarray,
        exp_avg: np.ndarray,
        exp_avg_sq: np.ndarray,
        last_step: np.ndarray,
        rows: np.ndarray,
        now: int,
        min_value: float | None = None,
    ) -> np.ndarray:
        """The raw values of ``rows`` as dense Adam holds them after ``now`` steps (float32, a new array).

        The stored value plus the tail not yet due, for rows touched in the last ``K`` steps only
        (one ``max`` decides whether any is); ``min_value``: clamped (``"clamp"``).
        """
        out = raw[rows]
        last = last_step[rows]
        if rows.size and last.max() > max(now - self.window, 0):  # a touched row's tail is still open
            tail = self.remaining(exp_avg[rows], exp_avg_sq[rows], last, now - last, now)
            out += tail.astype(np.float32)  # rounded as SampleWeights.all() adds it: the same bits
        if min_value is not None:
            np.maximum(out, np.float32(min_value), out=out)
        return out

    def _step_scalars(self, now: int) -> tuple:
        """Per-step numbers: ``sqrt(1 - b2^now)``, ``lr / (1 - b1^now)`` (float32), ``lr G_j(now, 0)``, and
        the tail terms' ``a_k, c_k`` (``(K,)`` each) of a row updated at ``now``.

        Computed with the tables of the next ``K`` steps (one dictionary look-up per step).
        """
        scalars = self._scalars.pop(now, None)
        if scalars is None:
            if self._filled_since is None:
                self._filled_since = now  # every step from here on has its table
            upcoming = np.arange(now, now + self.window)
            a, c = self._fill(upcoming, now)
            b1, b2 = self.betas
            c2 = np.sqrt(1 - b2 ** upcoming.astype(np.float64)).astype(np.float32)
            size = (self.lr / (1 - b1 ** upcoming.astype(np.float64))).astype(np.float32)
            g = self._series[:, upcoming % (2 * self.window), 0].tolist()
            # the K terms' a_k, c_k of each step, for the rows the series does not serve
            self._scalars = dict(zip(upcoming.tolist(), zip(c2, size, *g, a, c)))
            scalars = self._scalars.pop(now)
        return scalars

    def step(
        self,
        raw: np.ndarray,
        exp_avg: np.ndarray,
        exp_avg_sq: np.ndarray,
        last_step: np.ndarray,
        rows: np.ndarray,
        grads: np.ndarray,
        before: np.ndarray,
        now: int,
        min_value: float | None = None,
    ) -> None:
        """Step ``now`` of distinct ``rows`` with gradients ``grads`` (every other row has zero), in place.

        ``before``: the rows' current raw values; ``min_value``: clamp the result (``"clamp"``).
        ``raw`` keeps each updated row with its whole future tail applied.
        """
        b1, b2 = self.betas
        c2, step_size, g0, g1, g2, a, c = self._step_scalars(now)
        gap = now - last_step[rows]  # zero-gradient steps since the last touch decay the moments
        g = grads.astype(np.float64)
        m = np.power(b1, gap)
        m *= exp_avg[rows]
        m += (1 - b1) * g
        m = m.astype(np.float32)
        v = np.power(b2, gap)
        v *= exp_avg_sq[rows]
        g *= g
        g *= 1 - b2
        v += g
        v = v.astype(np.float32)
        denom = np.sqrt(v)
        denom /= c2
        denom += np.float32(self.eps)
        after = step_size * m
        after /= denom
        np.subtract(before, after, out=after)
        if min_value is not None:
            np.maximum(after, np.float32(min_value), out=after)
        whole, exact = self._series_sum(m, v, g0, g1, g2)
        if exact.any():  # their whole tail summed term by term: sum_k lr m a_k / (u c_k + eps)
            den = np.multiply.outer(np.sqrt(v[exact], dtype=np.float64), c)
            den += self.eps
            whole[exact] = (self.lr * m[exact].astype(np.float64)) * np.divide(a, den, out=den).sum(axis=1)
        exp_avg[rows] = m
        exp_avg_sq[rows] = v
        last_step[rows] = now
        np.subtract(after, whole, out=whole)
        raw[rows] = whole
