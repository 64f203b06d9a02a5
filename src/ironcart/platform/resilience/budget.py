"""Counts over a sliding time window, and the retry budget built on them.

A retry budget (Finagle, gRPC) bounds retries to a share of recent calls: over the last
`window_seconds`, retries <= `ratio` x first attempts + `floor_per_second` x window. When a
dependency fails for everyone, each call still gets its first attempt, but retries add at
most `ratio` more load instead of multiplying it by `max_attempts`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

Clock = Callable[[], float]


class RollingCounts:
    """Named counters summed over the last `window_seconds`, in `buckets` time buckets.

    Old buckets are dropped as time moves on, so memory is fixed whatever the call rate.
    """

    def __init__(
        self, names: tuple[str, ...], *, window_seconds: float, buckets: int = 10, clock: Clock
    ) -> None:
        if window_seconds <= 0 or buckets < 1:
            raise ValueError("window_seconds must be > 0 and buckets >= 1")
        self._names = names
        self._width = window_seconds / buckets
        self._size = buckets
        self._clock = clock
        self._slots: list[list[int]] = [[0] * len(names) for _ in range(buckets)]
        self._epochs: list[int] = [-1] * buckets

    def add(self, name: str, amount: int = 1) -> None:
        """Count `amount` of `name` now."""
        epoch = math.floor(self._clock() / self._width)
        index = epoch % self._size
        if self._epochs[index] != epoch:
            self._epochs[index] = epoch
            self._slots[index] = [0] * len(self._names)
        self._slots[index][self._names.index(name)] += amount

    def totals(self) -> dict[str, int]:
        """Each counter summed over the buckets still inside the window."""
        newest = math.floor(self._clock() / self._width)
        sums = [0] * len(self._names)
        for epoch, counts in zip(self._epochs, self._slots, strict=True):
            if newest - self._size < epoch <= newest:
                sums = [total + count for total, count in zip(sums, counts, strict=True)]
        return dict(zip(self._names, sums, strict=True))

    def clear(self) -> None:
        self._epochs = [-1] * self._size


class RetryBudget:
    """Allows a retry while retries stay within `ratio` of recent calls plus a small floor."""

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        floor_per_second: float = 1.0,
        window_seconds: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._ratio = ratio
        self._floor = floor_per_second * window_seconds
        self._counts = RollingCounts(
            ("calls", "retries"), window_seconds=window_seconds, clock=clock
        )

    def record_call(self) -> None:
        """A first attempt: earns `ratio` of a retry."""
        self._counts.add("calls")

    def try_retry(self) -> bool:
        """Spend one retry if the budget allows it; False means: do not retry."""
        totals = self._counts.totals()
        if totals["retries"] + 1 > self._ratio * totals["calls"] + self._floor:
            return False
        self._counts.add("retries")
        return True
