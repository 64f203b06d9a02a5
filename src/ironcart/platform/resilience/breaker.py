"""A circuit breaker over failure and slow-call ratios in a sliding time window.

    closed ──ratio reached (>= minimum_calls in the window)──> open
    open ──open_seconds later──> half_open (at most `half_open_probes` calls at once)
    half_open ──every probe succeeded──> closed (window cleared)
    half_open ──a probe failed or was slow──> open

As in Resilience4j and Sentinel, the breaker opens when, over the last `window_seconds`
(bucketed: memory is fixed), at least `minimum_calls` ended and the share of failures
reaches `failure_ratio` or the share of calls slower than `slow_call_seconds` reaches
`slow_call_ratio`. It also opens after `consecutive_failures` failures in a row (as Envoy's
outlier detection does; 0: never), so that a dependency that stops answering right after
a busy healthy spell is cut off at once rather than once its failures outweigh the window's
successes. Libraries such as purgatory count consecutive failures only.

Each admitted call holds a `Ticket`; its outcome counts only for the state that admitted
it (a call let in while closed that ends after the breaker opened changes nothing).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from ironcart.platform.resilience.budget import Clock, RollingCounts


class BreakerState(IntEnum):
    """The exported gauge value: 0 closed, 1 half-open, 2 open."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True)
class BreakerConfig:
    window_seconds: float = 10.0
    minimum_calls: int = 10
    failure_ratio: float = 0.5
    slow_call_seconds: float = 1.0
    slow_call_ratio: float = 0.8
    open_seconds: float = 5.0
    half_open_probes: int = 2
    consecutive_failures: int = 5


@dataclass(frozen=True)
class Ticket:
    """One admitted call: the state generation that admitted it, and whether it probes."""

    generation: int
    probe: bool


@dataclass(frozen=True)
class BreakerSnapshot:
    state: BreakerState
    calls: int
    failures: int
    slow: int
    seconds_until_half_open: float | None


StateListener = Callable[[BreakerState], None]


class CircuitBreaker:
    def __init__(
        self,
        config: BreakerConfig,
        *,
        clock: Clock = time.monotonic,
        on_state_change: StateListener | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._listener = on_state_change
        self._window = RollingCounts(
            ("calls", "failures", "slow"), window_seconds=config.window_seconds, clock=clock
        )
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._opened_at = 0.0
        self._probes_in_flight = 0
        self._probes_passed = 0
        self._streak = 0

    @property
    def config(self) -> BreakerConfig:
        return self._config

    @property
    def state(self) -> BreakerState:
        self._half_open_when_due()
        return self._state

    def acquire(self) -> Ticket | None:
        """A ticket for one call, or None: the breaker refuses it (open, or probes busy)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return Ticket(self._generation, probe=False)
        if state is BreakerState.OPEN:
            return None
        if self._probes_in_flight + self._probes_passed >= self._config.half_open_probes:
            return None
        self._probes_in_flight += 1
        return Ticket(self._generation, probe=True)

    def record(self, ticket: Ticket, *, failed: bool, seconds: float) -> None:
        """The outcome of an admitted call; `seconds` is how long it took."""
        if ticket.generation != self._generation:
            return  # admitted under an earlier state: already accounted for
        slow = seconds >= self._config.slow_call_seconds
        if ticket.probe:
            self._probes_in_flight -= 1
            self._end_probe(passed=not (failed or slow))
            return
        self._window.add("calls")
        self._streak = self._streak + 1 if failed else 0
        if failed:
            self._window.add("failures")
        if slow:
            self._window.add("slow")
        if self._streak_reached() or self._ratio_reached():
            self._move(BreakerState.OPEN)

    def release(self, ticket: Ticket) -> None:
        """The call was abandoned (cancelled) before it had an outcome: it counts for nothing."""
        if ticket.probe and ticket.generation == self._generation:
            self._probes_in_flight -= 1

    def seconds_until_half_open(self) -> float | None:
        if self.state is not BreakerState.OPEN:
            return None
        return max(0.0, self._opened_at + self._config.open_seconds - self._clock())

    def retry_after_seconds(self) -> int:
        """Whole seconds a refused caller should wait (at least 1)."""
        return max(1, math.ceil(self.seconds_until_half_open() or 0.0))

    def snapshot(self) -> BreakerSnapshot:
        totals = self._window.totals()
        return BreakerSnapshot(
            state=self.state,
            calls=totals["calls"],
            failures=totals["failures"],
            slow=totals["slow"],
            seconds_until_half_open=self.seconds_until_half_open(),
        )

    def _streak_reached(self) -> bool:
        limit = self._config.consecutive_failures
        return limit > 0 and self._streak >= limit

    def _ratio_reached(self) -> bool:
        totals = self._window.totals()
        calls = totals["calls"]
        if calls < self._config.minimum_calls:
            return False
        return (
            totals["failures"] >= self._config.failure_ratio * calls
            or totals["slow"] >= self._config.slow_call_ratio * calls
        )

    def _end_probe(self, *, passed: bool) -> None:
        if not passed:
            self._move(BreakerState.OPEN)
            return
        self._probes_passed += 1
        if self._probes_passed >= self._config.half_open_probes:
            self._move(BreakerState.CLOSED)

    def _half_open_when_due(self) -> None:
        if self._state is BreakerState.OPEN and (
            self._clock() >= self._opened_at + self._config.open_seconds
        ):
            self._move(BreakerState.HALF_OPEN)

    def _move(self, state: BreakerState) -> None:
        self._state = state
        self._generation += 1
        self._probes_in_flight = 0
        self._probes_passed = 0
        self._streak = 0
        if state is BreakerState.OPEN:
            self._opened_at = self._clock()
        if state is BreakerState.CLOSED:
            self._window.clear()
        if self._listener is not None:
            self._listener(state)
