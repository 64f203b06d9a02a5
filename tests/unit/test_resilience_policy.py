"""`Policy.call`: what is a failure and what an answer, retries under a deadline and a budget,
the breaker refusing, the bulkhead bounding concurrency, and the settings that build it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from ironcart.platform.errors import ErrorKind
from ironcart.platform.resilience import (
    BreakerConfig,
    BreakerState,
    BulkheadFull,
    CircuitOpen,
    DeadlineExceeded,
    DependencyUnavailable,
    Policy,
    PolicyConfig,
    Transient,
    deadline_scope,
    policy_for,
    registered_policies,
)
from ironcart.platform.settings import DependencyPolicySettings, ResilienceSettings

pytestmark = pytest.mark.anyio

FAST = PolicyConfig(
    attempt_timeout_seconds=1.0,
    deadline_seconds=5.0,
    max_attempts=3,
    backoff_initial_seconds=0.001,
    backoff_max_seconds=0.005,
    max_concurrent=10,
    queue_seconds=0.05,
    retry_budget_ratio=1.0,
    retry_budget_floor_per_second=10.0,
    breaker=BreakerConfig(minimum_calls=5, failure_ratio=0.5, open_seconds=5.0),
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Dependency:
    """Scripted outcomes, one per attempt; counts the attempts that reached it."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.attempts = 0
        self.timeouts: list[float] = []

    async def __call__(self, timeout_seconds: float) -> str:
        self.attempts += 1
        self.timeouts.append(timeout_seconds)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, float):
            await asyncio.sleep(outcome)
            return "late"
        return str(outcome)


def _name() -> str:
    return f"dep{time.monotonic_ns()}"


def _calls(dependency: str, outcome: str) -> float:
    labels = {"dependency": dependency, "outcome": outcome}
    return REGISTRY.get_sample_value("ironcart_dependency_calls_total", labels) or 0.0


async def test_an_answer_passes_through_and_counts_as_a_success() -> None:
    name = _name()
    policy = Policy(name, FAST)
    dependency = Dependency("ok")

    assert await policy.call(dependency, retryable=True) == "ok"
    assert dependency.timeouts == [1.0]
    assert _calls(name, "success") == 1


async def test_a_business_error_propagates_at_once_and_never_opens_the_breaker() -> None:
    policy = Policy(_name(), FAST)
    dependency = Dependency(LookupError("no such payment"))
    for _ in range(10):
        with pytest.raises(LookupError):
            await policy.call(dependency, retryable=True)

    assert dependency.attempts == 10  # never retried
    assert policy.breaker.state is BreakerState.CLOSED


async def test_transient_failures_are_retried_when_retryable() -> None:
    dependency = Dependency(Transient("503"), Transient("503"), "ok")

    assert await Policy(_name(), FAST).call(dependency, retryable=True) == "ok"
    assert dependency.attempts == 3


async def test_a_call_that_is_not_retryable_gets_one_attempt() -> None:
    dependency = Dependency(Transient("503"), "ok")
    with pytest.raises(DependencyUnavailable) as raised:
        await Policy(_name(), FAST).call(dependency, retryable=False)

    assert dependency.attempts == 1
    assert isinstance(raised.value.__cause__, Transient)
    assert type(raised.value) is DependencyUnavailable
    assert (raised.value.code, raised.value.kind) == (
        "resilience.dependency_unavailable",
        ErrorKind.UNAVAILABLE,
    )


async def test_exhausted_attempts_are_unavailable_chained_from_the_last_error() -> None:
    dependency = Dependency(Transient("first"), Transient("second"), Transient("last"))
    with pytest.raises(DependencyUnavailable) as raised:
        await Policy(_name(), FAST).call(dependency, retryable=True)

    assert dependency.attempts == 3
    assert str(raised.value.__cause__) == "last"
    assert raised.value.extra == {"dependency": raised.value.dependency}


async def test_an_attempt_slower_than_its_timeout_is_cut_and_retried() -> None:
    config = replace(FAST, attempt_timeout_seconds=0.05)
    dependency = Dependency(10.0, "ok")
    started = time.monotonic()

    assert await Policy(_name(), config).call(dependency, retryable=True) == "ok"
    assert time.monotonic() - started < 1.0
    assert dependency.attempts == 2


async def test_retries_stop_at_the_deadline() -> None:
    config = replace(FAST, attempt_timeout_seconds=0.1, deadline_seconds=0.28, max_attempts=10)
    dependency = Dependency(10.0)
    started = time.monotonic()
    with pytest.raises(DependencyUnavailable):
        await Policy(_name(), config).call(dependency, retryable=True)
    elapsed = time.monotonic() - started

    assert 0.25 <= elapsed < 0.4
    assert dependency.timeouts[:2] == [0.1, 0.1]
    assert dependency.timeouts[2] < 0.08  # the last attempt got only what was left
    assert sum(dependency.timeouts) <= 0.28


async def test_the_retry_budget_stops_retries_when_spent() -> None:
    config = replace(FAST, retry_budget_ratio=0.0, retry_budget_floor_per_second=0.2)
    policy = Policy(_name(), config, clock=FakeClock())  # the floor: 2 retries per window
    dependency = Dependency(Transient("503"))
    for _ in range(3):
        with pytest.raises(DependencyUnavailable):
            await policy.call(dependency, retryable=True)

    assert dependency.attempts == 3 + 2


async def test_with_every_call_failing_the_breaker_opens_and_no_call_passes() -> None:
    clock = FakeClock()
    policy = Policy(_name(), replace(FAST, max_attempts=1), clock=clock)
    dependency = Dependency(Transient("503"))
    for _ in range(5):
        with pytest.raises(DependencyUnavailable):
            await policy.call(dependency, retryable=True)
    clock.now += 1.5
    with pytest.raises(CircuitOpen) as refused:
        await policy.call(dependency, retryable=True)

    assert policy.breaker.state is BreakerState.OPEN
    assert dependency.attempts == 5
    assert policy.attempts_made == 5
    assert refused.value.headers == {"Retry-After": "4"}
    assert refused.value.code == "resilience.circuit_open"


async def test_the_breaker_opening_during_retries_ends_them() -> None:
    clock = FakeClock()
    config = replace(FAST, max_attempts=10, breaker=BreakerConfig(minimum_calls=3))
    dependency = Dependency(Transient("503"))
    with pytest.raises(CircuitOpen) as refused:
        await Policy(_name(), config, clock=clock).call(dependency, retryable=True)

    assert dependency.attempts == 3
    assert isinstance(refused.value, DependencyUnavailable)


async def test_a_slow_success_counts_as_slow() -> None:
    clock = FakeClock()
    name = _name()
    policy = Policy(name, FAST, clock=clock)

    async def slow(_timeout: float) -> str:
        clock.now += 1.2  # the breaker's clock: this call took 1.2 s
        return "ok"

    assert await policy.call(slow, retryable=True) == "ok"
    assert policy.breaker.snapshot().slow == 1
    assert _calls(name, "slow") == 1


async def test_the_bulkhead_refuses_beyond_its_slots_without_calling() -> None:
    policy = Policy(_name(), replace(FAST, max_concurrent=2, queue_seconds=0.05))
    release = asyncio.Event()
    reached = 0

    async def stalled(_timeout: float) -> str:
        nonlocal reached
        reached += 1
        await release.wait()
        return "ok"

    running = [asyncio.create_task(policy.call(stalled, retryable=False)) for _ in range(2)]
    await asyncio.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(BulkheadFull):
        await policy.call(stalled, retryable=False)
    waited = time.monotonic() - started
    assert policy.bulkhead.in_flight == 2
    release.set()

    assert await asyncio.gather(*running) == ["ok", "ok"]
    assert reached == 2
    assert 0.04 <= waited < 0.5
    assert policy.bulkhead.in_flight == 0


async def test_a_waiting_call_gets_the_slot_freed_within_its_queue_time() -> None:
    policy = Policy(_name(), replace(FAST, max_concurrent=1, queue_seconds=1.0))
    first = asyncio.create_task(policy.call(Dependency(0.05), retryable=False))
    await asyncio.sleep(0.01)

    assert await policy.call(Dependency("second"), retryable=False) == "second"
    assert await first == "late"


async def test_a_cancelled_call_frees_its_slot_and_counts_for_nothing() -> None:
    policy = Policy(_name(), replace(FAST, max_concurrent=1))
    task = asyncio.create_task(policy.call(Dependency(10.0), retryable=True))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert policy.bulkhead.in_flight == 0
    assert policy.breaker.snapshot().calls == 0


async def test_a_request_with_little_time_left_never_starts_a_long_call() -> None:
    policy = Policy(_name(), replace(FAST, attempt_timeout_seconds=5.0))
    dependency = Dependency("ok")
    with deadline_scope(0.5):
        await policy.call(dependency, retryable=True)

    assert 0.4 < dependency.timeouts[0] <= 0.5


async def test_no_call_is_made_when_the_deadline_has_passed() -> None:
    name = _name()
    dependency = Dependency("ok")
    with deadline_scope(0.01):
        await asyncio.sleep(0.02)
        with pytest.raises(DeadlineExceeded) as refused:
            await Policy(name, FAST).call(dependency, retryable=True)

    assert dependency.attempts == 0
    assert refused.value.code == "resilience.deadline_exceeded"
    assert _calls(name, "deadline") == 1


def test_policy_for_layers_defaults_then_base_then_overrides() -> None:
    name = _name()
    settings = ResilienceSettings(
        attempt_timeout_seconds=3.0,
        open_seconds=7.0,
        dependencies={name: DependencyPolicySettings(max_attempts=1, minimum_calls=20)},
    )
    policy = policy_for(name, settings, base={"attempt_timeout_seconds": 1.0, "max_attempts": 4})

    assert policy.config.attempt_timeout_seconds == 1.0
    assert policy.config.max_attempts == 1
    assert policy.config.deadline_seconds == settings.deadline_seconds
    assert (policy.config.breaker.minimum_calls, policy.config.breaker.open_seconds) == (20, 7.0)
    assert registered_policies()[name] is policy


def test_per_dependency_overrides_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ironcart.platform.settings import load_settings

    monkeypatch.setenv("IRONCART_RESILIENCE__DEPENDENCIES__PSP__ATTEMPT_TIMEOUT_SECONDS", "0.5")
    monkeypatch.setenv("IRONCART_RESILIENCE__FAILURE_RATIO", "0.25")

    settings = load_settings().resilience
    psp = policy_for("psp", settings, base={"attempt_timeout_seconds": 1.0})
    assert psp.config.attempt_timeout_seconds == 0.5
    assert psp.config.breaker.failure_ratio == 0.25
