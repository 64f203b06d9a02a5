"""One dependency's resilience policy: deadline, circuit breaker, bulkhead, timeout, retries.

    DependencyUnavailable       code resilience.dependency_unavailable (503; attempts exhausted)
     ├── CircuitOpen            code resilience.circuit_open: no call was made
     ├── BulkheadFull           code resilience.bulkhead_full: no call was made
     └── DeadlineExceeded       code resilience.deadline_exceeded: too little time left

`Policy.call(attempt, retryable=...)` runs `attempt(timeout_seconds)`, one try, under
`asyncio.timeout`. A timeout or `Transient` is a failure (for the breaker, and retried when
`retryable`); any other exception is the dependency's ANSWER (e.g. a 4xx business error):
it propagates at once and counts as a success. Retries use exponential backoff with full
jitter (tenacity's `wait_random_exponential`), stop at `max_attempts`, at the deadline, or
when the dependency's retry budget is spent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge
from tenacity import RetryCallState, wait_random_exponential

from ironcart.platform.errors import ServiceUnavailable
from ironcart.platform.resilience.breaker import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    Ticket,
)
from ironcart.platform.resilience.budget import Clock, RetryBudget
from ironcart.platform.resilience.bulkhead import Bulkhead
from ironcart.platform.resilience.deadline import deadline_scope, remaining_seconds
from ironcart.platform.settings import ResilienceSettings

T = TypeVar("T")
# Below this much time left an attempt is not started: it could not get an answer back.
MINIMUM_ATTEMPT_SECONDS = 0.05

BREAKER_STATE = Gauge(
    "ironcart_circuit_breaker_state",
    "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open.",
    ["dependency"],
    multiprocess_mode="max",
)
DEPENDENCY_CALLS = Counter(
    "ironcart_dependency_calls_total",
    "Outbound attempts by dependency and outcome (success, failure, slow, rejected_open,"
    " rejected_bulkhead, deadline).",
    ["dependency", "outcome"],
)
DEPENDENCY_RETRIES = Counter(
    "ironcart_dependency_retries_total",
    "Outbound retries by dependency: made, or refused by the retry budget.",
    ["dependency", "result"],
)


class DependencyUnavailable(ServiceUnavailable):
    code = "resilience.dependency_unavailable"
    title = "A dependency is unavailable"

    def __init__(
        self,
        detail: str | None = None,
        *,
        dependency: str,
        retry_after_seconds: int | None = None,
        **extra: Any,
    ) -> None:
        self.dependency = dependency
        self.retry_after_seconds = retry_after_seconds
        headers = {} if retry_after_seconds is None else {"Retry-After": str(retry_after_seconds)}
        super().__init__(detail, headers=headers, dependency=dependency, **extra)


class CircuitOpen(DependencyUnavailable):
    code = "resilience.circuit_open"
    title = "A dependency is failing; calls to it are paused"


class BulkheadFull(DependencyUnavailable):
    code = "resilience.bulkhead_full"
    title = "Too many calls to a dependency at once"


class DeadlineExceeded(DependencyUnavailable):
    code = "resilience.deadline_exceeded"
    title = "Not enough time left to call a dependency"


class Transient(Exception):
    """Raised by an attempt: this try failed (5xx, timeout, connection error), another may not."""


@dataclass(frozen=True)
class PolicyConfig:
    attempt_timeout_seconds: float = 2.0
    deadline_seconds: float = 5.0
    max_attempts: int = 3
    backoff_initial_seconds: float = 0.05
    backoff_max_seconds: float = 1.0
    max_concurrent: int = 50
    queue_seconds: float = 0.1
    retry_budget_ratio: float = 0.2
    retry_budget_floor_per_second: float = 1.0
    breaker: BreakerConfig = field(default_factory=BreakerConfig)


class _AttemptFailed(Exception):
    """Internal: one attempt failed (timeout or Transient); the cause is chained."""


class Policy:
    def __init__(
        self, dependency: str, config: PolicyConfig, *, clock: Clock = time.monotonic
    ) -> None:
        self.dependency = dependency
        self.config = config
        self._clock = clock
        self._breaker = CircuitBreaker(
            config.breaker, clock=clock, on_state_change=self._state_changed
        )
        self._bulkhead = Bulkhead(config.max_concurrent)
        self._budget = RetryBudget(
            ratio=config.retry_budget_ratio,
            floor_per_second=config.retry_budget_floor_per_second,
            window_seconds=config.breaker.window_seconds,
            clock=clock,
        )
        self._wait = wait_random_exponential(
            multiplier=config.backoff_initial_seconds, max=config.backoff_max_seconds
        )
        self._attempts_made = 0
        BREAKER_STATE.labels(dependency).set(BreakerState.CLOSED)

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    @property
    def attempts_made(self) -> int:
        """Attempts that reached the dependency since the start (none while open)."""
        return self._attempts_made

    @property
    def bulkhead(self) -> Bulkhead:
        return self._bulkhead

    async def call(self, attempt: Callable[[float], Awaitable[T]], *, retryable: bool) -> T:
        """Run `attempt(timeout_seconds)` under this policy; see the module docstring."""
        with deadline_scope(self.config.deadline_seconds):
            self._budget.record_call()
            number = 1
            while True:
                try:
                    return await self._attempt(attempt)
                except _AttemptFailed as failed:
                    last = failed.__cause__ or failed
                if not retryable or not await self._backoff(number):
                    raise self._exhausted(number, last) from last
                number += 1

    async def _backoff(self, number: int) -> bool:
        """Sleep before attempt `number + 1`; False when no further attempt may be made."""
        if number >= self.config.max_attempts:
            return False
        delay = self._wait(_retry_state(number))
        left = remaining_seconds() or 0.0
        if left - delay < MINIMUM_ATTEMPT_SECONDS:
            return False
        if not self._budget.try_retry():
            DEPENDENCY_RETRIES.labels(self.dependency, "refused_by_budget").inc()
            return False
        DEPENDENCY_RETRIES.labels(self.dependency, "made").inc()
        await asyncio.sleep(delay)
        return True

    def _exhausted(self, attempts: int, last: BaseException) -> DependencyUnavailable:
        # Retry-After: until the breaker probes again if these failures opened it, else 1 s.
        return DependencyUnavailable(
            f"{self.dependency}: no usable answer after {attempts} attempt(s) ({last!r}).",
            dependency=self.dependency,
            retry_after_seconds=self._breaker.retry_after_seconds(),
        )

    async def _attempt(self, attempt: Callable[[float], Awaitable[T]]) -> T:
        left = remaining_seconds() or 0.0
        if left < MINIMUM_ATTEMPT_SECONDS:
            self._count("deadline")
            raise DeadlineExceeded(
                f"{self.dependency}: {max(left, 0.0):.3f} s left, too little for a call.",
                dependency=self.dependency,
                retry_after_seconds=1,
            )
        ticket = self._breaker.acquire()
        if ticket is None:
            self._count("rejected_open")
            raise CircuitOpen(
                f"{self.dependency} is failing; calls are paused.",
                dependency=self.dependency,
                retry_after_seconds=self._breaker.retry_after_seconds(),
            )
        if not await self._bulkhead.acquire(min(self.config.queue_seconds, left)):
            self._breaker.release(ticket)
            self._count("rejected_bulkhead")
            raise BulkheadFull(
                f"{self.dependency}: {self._bulkhead.max_concurrent} calls already running.",
                dependency=self.dependency,
                retry_after_seconds=1,
            )
        self._attempts_made += 1
        try:
            return await self._timed(attempt, ticket)
        finally:
            self._bulkhead.release()

    async def _timed(self, attempt: Callable[[float], Awaitable[T]], ticket: Ticket) -> T:
        timeout = min(self.config.attempt_timeout_seconds, remaining_seconds() or 0.0)
        started = self._clock()
        try:
            async with asyncio.timeout(timeout):
                result = await attempt(timeout)
        except (TimeoutError, Transient) as error:
            self._finish(ticket, started, failed=True)
            raise _AttemptFailed from error
        except Exception:
            self._finish(ticket, started, failed=False)  # an answer, e.g. a business error
            raise
        except BaseException:
            self._breaker.release(ticket)  # cancelled: no outcome to count
            raise
        self._finish(ticket, started, failed=False)
        return result

    def _finish(self, ticket: Ticket, started: float, *, failed: bool) -> None:
        seconds = self._clock() - started
        self._breaker.record(ticket, failed=failed, seconds=seconds)
        slow = seconds >= self.config.breaker.slow_call_seconds
        self._count("failure" if failed else "slow" if slow else "success")

    def _count(self, outcome: str) -> None:
        DEPENDENCY_CALLS.labels(self.dependency, outcome).inc()

    def _state_changed(self, state: BreakerState) -> None:
        BREAKER_STATE.labels(self.dependency).set(state)


def _retry_state(number: int) -> RetryCallState:
    """tenacity's wait strategies read only `attempt_number` from the state."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = number
    return state


# -- the process's policies, for /ops/breakers ------------------------------------------------

_POLICIES: dict[str, Policy] = {}
_BREAKER_FIELDS = frozenset(BreakerConfig.__dataclass_fields__)
_POLICY_FIELDS = frozenset(PolicyConfig.__dataclass_fields__) - {"breaker"}
_NOT_POLICY = {"dependencies", "request_deadline_seconds", "route_deadlines"}


def register(policy: Policy) -> Policy:
    """Make `policy` the one /ops/breakers shows for its dependency (the latest one wins)."""
    _POLICIES[policy.dependency] = policy
    return policy


def registered_policies() -> dict[str, Policy]:
    return dict(sorted(_POLICIES.items()))


def config_from(values: Mapping[str, Any]) -> PolicyConfig:
    """A `PolicyConfig` from flat values (the settings' field names); missing ones default."""
    breaker = BreakerConfig(**{k: v for k, v in values.items() if k in _BREAKER_FIELDS})
    return PolicyConfig(**{k: v for k, v in values.items() if k in _POLICY_FIELDS}, breaker=breaker)


def policy_for(
    dependency: str,
    settings: ResilienceSettings,
    *,
    base: Mapping[str, Any] | None = None,
    clock: Clock = time.monotonic,
) -> Policy:
    """The registered policy of `dependency`: the settings' defaults, then `base` (a
    context's own section, e.g. the PSP's timeouts), then `dependencies.<name>` overrides."""
    values: dict[str, Any] = settings.model_dump(exclude=_NOT_POLICY)
    values.update(base or {})
    overrides = settings.dependencies.get(dependency.lower())
    if overrides is not None:
        values.update(overrides.model_dump(exclude_none=True))
    return register(Policy(dependency, config_from(values), clock=clock))
