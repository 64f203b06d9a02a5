"""Redis behind the "redis" dependency's circuit breaker.

The response cache and the rate limits already degrade when Redis fails (they fall through
to the database and to per-process counters). A Redis that accepts connections and never
answers (frozen, partitioned) is the worse case: every command would wait for its socket
timeout, so every request that touches Redis would take that long. With the breaker, a
few timed-out commands open it and later commands fail at once with `RedisUnavailable`
(a `redis.exceptions.ConnectionError`, so every existing fallback applies) until a probe
passes again. The breaker is `policy_for("redis", ...)`'s, so it is configured like every
other dependency (`IRONCART_RESILIENCE__DEPENDENCIES__REDIS__*`), exported as
`ironcart_circuit_breaker_state{dependency="redis"}` and listed on `/ops/breakers`.

`GuardedRedis` guards every command (`execute_command`) and, through `guarded`, whatever
else a caller runs on the connection (a pipeline's `execute`, a `limits` storage call).
A Redis error reply (`ResponseError`) is an answer: it counts as a success.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from limits.errors import StorageError
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ironcart.platform.resilience.breaker import CircuitBreaker
from ironcart.platform.resilience.policy import Policy

T = TypeVar("T")
# A dependency that did not answer: what the breaker counts as a failure.
UNANSWERED = (RedisConnectionError, RedisTimeoutError, StorageError, TimeoutError, OSError)


class RedisUnavailable(RedisConnectionError):
    """The breaker refused the command: Redis failed recently and is not probed yet."""


class GuardedRedis(Redis):
    """A redis-py asyncio client whose commands go through a circuit breaker.

    Build it with `guarded_redis(url, policy)`; `policy.config.attempt_timeout_seconds`
    becomes the socket timeout, so one command never waits longer than that.
    """

    breaker: CircuitBreaker

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        command: Callable[..., Awaitable[Any]] = super().execute_command
        return await self.guarded(lambda: command(*args, **options))

    async def guarded(self, run: Callable[[], Awaitable[T]]) -> T:
        """Run one call on this Redis under the breaker."""
        ticket = self.breaker.acquire()
        if ticket is None:
            raise RedisUnavailable("redis: circuit open")
        started = time.monotonic()
        try:
            result = await run()
        except UNANSWERED:
            self.breaker.record(ticket, failed=True, seconds=time.monotonic() - started)
            raise
        except BaseException:
            self.breaker.release(ticket)  # cancelled, or an error of the caller's own
            raise
        self.breaker.record(ticket, failed=False, seconds=time.monotonic() - started)
        return result


def guarded_redis(url: str, policy: Policy) -> GuardedRedis:
    """A client for `url` guarded by `policy`'s breaker and timed by its attempt timeout."""
    timeout = policy.config.attempt_timeout_seconds
    pool = ConnectionPool.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    client = cast(GuardedRedis, GuardedRedis.from_pool(pool))  # the pool closes with it
    client.breaker = policy.breaker
    return client


async def guarded(redis: Redis, run: Callable[[], Awaitable[T]]) -> T:
    """`run` under `redis`'s breaker when it has one (a plain client runs it as it is)."""
    if isinstance(redis, GuardedRedis):
        return await redis.guarded(run)
    return await run()
