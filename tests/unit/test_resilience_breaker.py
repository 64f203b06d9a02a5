"""The circuit breaker and its sliding window, on a fake clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ironcart.platform.resilience import BreakerConfig, BreakerState, CircuitBreaker
from ironcart.platform.resilience.breaker import Ticket
from ironcart.platform.resilience.budget import RetryBudget, RollingCounts

CONFIG = BreakerConfig(
    window_seconds=10.0,
    minimum_calls=5,
    failure_ratio=0.5,
    slow_call_seconds=1.0,
    slow_call_ratio=0.8,
    open_seconds=5.0,
    half_open_probes=2,
    consecutive_failures=0,  # the ratios alone; the streak rule has its own tests
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _call(breaker: CircuitBreaker, *, failed: bool = False, seconds: float = 0.01) -> bool:
    ticket = breaker.acquire()
    if ticket is None:
        return False
    breaker.record(ticket, failed=failed, seconds=seconds)
    return True


def _opened(clock: FakeClock, config: BreakerConfig = CONFIG) -> CircuitBreaker:
    breaker = CircuitBreaker(config, clock=clock)
    for _ in range(config.minimum_calls):
        _call(breaker, failed=True)
    assert breaker.state is BreakerState.OPEN
    return breaker


def test_all_failing_opens_exactly_when_the_minimum_number_of_calls_is_reached() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CONFIG, clock=clock)
    states = []
    for _ in range(CONFIG.minimum_calls):
        clock.advance(0.1)  # five failing calls within half a second
        _call(breaker, failed=True)
        states.append(breaker.state)

    assert states == [BreakerState.CLOSED] * 4 + [BreakerState.OPEN]


def test_below_the_minimum_number_of_calls_it_stays_closed_whatever_the_ratio() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(replace(CONFIG, consecutive_failures=0), clock=clock)
    for _ in range(CONFIG.minimum_calls - 1):
        _call(breaker, failed=True)

    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot().failures == 4


@pytest.mark.parametrize(
    ("failures", "successes", "state"),
    [
        pytest.param(4, 6, BreakerState.CLOSED, id="40-percent-stays-closed"),
        pytest.param(5, 5, BreakerState.OPEN, id="50-percent-opens"),
    ],
)
def test_it_opens_on_the_failure_ratio(failures: int, successes: int, state: BreakerState) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CONFIG, clock=clock)
    for _ in range(successes):
        _call(breaker)
    for _ in range(failures):
        _call(breaker, failed=True)

    assert breaker.state is state


def test_it_opens_on_the_slow_call_ratio_even_when_every_call_succeeds() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CONFIG, clock=clock)
    _call(breaker, seconds=0.1)
    for _ in range(3):
        _call(breaker, seconds=1.5)
    assert breaker.snapshot().state is BreakerState.CLOSED  # 3 of 4 slow, below the minimum
    _call(breaker, seconds=1.0)  # 4 of 5 slow: 80 %

    assert breaker.state is BreakerState.OPEN
    assert breaker.snapshot().failures == 0


def test_failures_older_than_the_window_are_forgotten() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CONFIG, clock=clock)
    for _ in range(4):
        _call(breaker, failed=True)
    clock.advance(10.5)  # those four left the window
    for _ in range(4):
        _call(breaker)
    _call(breaker, failed=True)

    assert breaker.state is BreakerState.CLOSED
    assert (breaker.snapshot().calls, breaker.snapshot().failures) == (5, 1)


def test_open_lets_no_call_through_until_open_seconds_have_passed() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    admitted = []
    for _ in range(49):
        clock.advance(0.1)  # 4.9 s
        admitted.append(breaker.acquire())

    assert admitted == [None] * 49
    assert breaker.state is BreakerState.OPEN
    assert breaker.seconds_until_half_open() == pytest.approx(0.1)
    assert breaker.retry_after_seconds() == 1


def test_half_open_admits_at_most_the_probes_and_closes_when_they_all_succeed() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(5.0)
    first, second, third = breaker.acquire(), breaker.acquire(), breaker.acquire()

    assert breaker.state is BreakerState.HALF_OPEN
    assert first is not None
    assert second is not None
    assert third is None
    breaker.record(first, failed=False, seconds=0.01)
    assert breaker.acquire() is None  # one probe done, one running: still no third call
    breaker.record(second, failed=False, seconds=0.01)
    assert breaker.snapshot().state is BreakerState.CLOSED
    assert breaker.snapshot().calls == 0  # the window starts afresh


@pytest.mark.parametrize(
    ("failed", "seconds"),
    [pytest.param(True, 0.01, id="failed"), pytest.param(False, 2.0, id="slow")],
)
def test_a_failed_or_slow_probe_opens_again_for_open_seconds(failed: bool, seconds: float) -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(5.0)
    probe = breaker.acquire()
    other = breaker.acquire()
    assert probe is not None
    assert other is not None
    breaker.record(probe, failed=failed, seconds=seconds)

    assert breaker.state is BreakerState.OPEN
    assert breaker.seconds_until_half_open() == pytest.approx(5.0)
    breaker.record(other, failed=False, seconds=0.01)  # a probe of the old half-open state
    assert breaker.state is BreakerState.OPEN


def test_recovery_closes_it_within_one_window() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    opened_at = clock.now
    while breaker.state is not BreakerState.CLOSED and clock.now - opened_at < 20:
        clock.advance(0.1)
        _call(breaker)  # the dependency is healthy again; traffic keeps coming

    assert breaker.state is BreakerState.CLOSED
    assert clock.now - opened_at <= CONFIG.window_seconds


def test_a_call_admitted_while_closed_changes_nothing_once_the_breaker_moved_on() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CONFIG, clock=clock)
    late = breaker.acquire()
    assert late is not None
    for _ in range(5):
        _call(breaker, failed=True)
    clock.advance(5.0)
    probe = breaker.acquire()
    assert probe is not None
    breaker.record(late, failed=True, seconds=9.0)  # ends long after: not a probe

    assert breaker.state is BreakerState.HALF_OPEN


def test_a_cancelled_probe_frees_its_place() -> None:
    clock = FakeClock()
    breaker = _opened(clock, BreakerConfig(minimum_calls=1, half_open_probes=1))
    clock.advance(5.0)
    probe = breaker.acquire()
    assert probe is not None
    assert breaker.acquire() is None
    breaker.release(probe)

    assert breaker.acquire() == Ticket(probe.generation, probe=True)


def test_state_changes_are_reported_in_order() -> None:
    clock = FakeClock()
    seen: list[BreakerState] = []
    breaker = CircuitBreaker(
        BreakerConfig(minimum_calls=2, half_open_probes=1), clock=clock, on_state_change=seen.append
    )
    _call(breaker, failed=True)
    _call(breaker, failed=True)
    clock.advance(5.0)
    _call(breaker)

    assert seen == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_rolling_counts_keep_only_the_last_window() -> None:
    clock = FakeClock()
    counts = RollingCounts(("a", "b"), window_seconds=10.0, buckets=10, clock=clock)
    for _ in range(12):
        counts.add("a")
        counts.add("b", 2)
        clock.advance(1.0)

    assert counts.totals() == {"a": 9, "b": 18}  # the bucket now being filled is empty


def test_the_retry_budget_allows_the_floor_then_a_share_of_calls() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, floor_per_second=0.5, window_seconds=10.0, clock=clock)
    floor = [budget.try_retry() for _ in range(6)]
    for _ in range(10):
        budget.record_call()
    earned = [budget.try_retry() for _ in range(3)]
    clock.advance(11.0)

    assert floor == [True] * 5 + [False]
    assert earned == [True, True, False]
    assert budget.try_retry() is True  # the old retries left the window


def test_failures_in_a_row_open_it_even_after_a_busy_healthy_spell() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(replace(CONFIG, consecutive_failures=5), clock=clock)
    for _ in range(50):
        _call(breaker)
    states = []
    for _ in range(5):
        _call(breaker, failed=True)  # 5 of 55: far below the ratio
        states.append(breaker.state)

    assert states == [BreakerState.CLOSED] * 4 + [BreakerState.OPEN]


def test_a_success_breaks_the_streak() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(replace(CONFIG, consecutive_failures=3), clock=clock)
    for _ in range(20):
        _call(breaker)
    for failed in (True, True, False, True, True, False, True, True):
        _call(breaker, failed=failed)

    assert breaker.state is BreakerState.CLOSED
