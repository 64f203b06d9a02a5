"""Rate limits with the `limits` library: in-process by default, shared through Redis.

If Redis cannot be reached, limits fall back to this process's own counters (logged),
so throttling weakens to per-process instead of failing open or taking logins down. Calls
to a shared Redis go through its circuit breaker (`platform.resilience.guarded_redis`): a
frozen Redis costs a few timed-out calls, then none until it answers again.

`hit`/`check` use a moving window (exact, for logins). `consume` (admission control on every
API request) uses a fixed window aligned to the clock: one counter increment, one round trip,
and its answer gives the remaining quota and the reset time for the `RateLimit-*` headers.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis

from ironcart.platform.errors import RateLimited
from ironcart.platform.resilience.guarded_redis import RedisUnavailable, guarded

T = TypeVar("T")

_log = structlog.get_logger("ironcart.ratelimit")


@dataclass(frozen=True, slots=True)
class Limit:
    """A named limit such as `Limit("login-ip", "30/minute")`."""

    name: str
    rate: str

    @property
    def item(self) -> RateLimitItem:
        return _parsed(self.rate)


@functools.lru_cache(maxsize=256)
def _parsed(rate: str) -> RateLimitItem:
    """`limits.parse` runs a regex: once per rate, not once per request."""
    return parse(rate)


@dataclass(frozen=True, slots=True)
class Usage:
    """One limit's state after a request was counted against it."""

    limit: int
    remaining: int
    reset_seconds: int
    allowed: bool


class RateLimiter:
    def __init__(self, storage: Storage, client: Redis | None = None) -> None:
        self._client = client  # the Redis behind `storage`, whose breaker guards its calls
        self._storage = storage
        self._fallback_storage = MemoryStorage()
        self._strategy = MovingWindowRateLimiter(storage)
        self._fallback = MovingWindowRateLimiter(self._fallback_storage)

    @classmethod
    def in_process(cls) -> RateLimiter:
        return cls(MemoryStorage())

    @classmethod
    def redis(cls, client: Redis) -> RateLimiter:
        """Share the process's Redis connection pool (closed with that client)."""
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            wrap_exceptions=True,
            # `limits` types its options as scalars, but redis-py's Redis takes a pool.
            connection_pool=client.connection_pool,  # type: ignore[arg-type]
        )
        return cls(storage, client)

    async def hit(self, limit: Limit, key: str, *, detail: str | None = None) -> None:
        """Count one event; raise `RateLimited` (with Retry-After) if the limit is exceeded."""
        try:
            allowed = await self._shared(lambda: self._strategy.hit(limit.item, limit.name, key))
            strategy = self._strategy
        except StorageError:
            _log.warning("rate_limit_storage_unavailable", limit=limit.name)
            allowed = await self._fallback.hit(limit.item, limit.name, key)
            strategy = self._fallback
        if not allowed:
            raise RateLimited(detail, retry_after_seconds=await _retry_after(strategy, limit, key))

    async def check(self, limit: Limit, key: str, *, detail: str | None = None) -> None:
        """Raise `RateLimited` if one more event would exceed the limit, without counting it."""
        try:
            allowed = await self._shared(lambda: self._strategy.test(limit.item, limit.name, key))
            strategy = self._strategy
        except StorageError:
            _log.warning("rate_limit_storage_unavailable", limit=limit.name)
            allowed = await self._fallback.test(limit.item, limit.name, key)
            strategy = self._fallback
        if not allowed:
            raise RateLimited(detail, retry_after_seconds=await _retry_after(strategy, limit, key))

    async def consume(self, limit: Limit, key: str, *, now: float | None = None) -> Usage:
        """Count one request in the current fixed window of `limit`; never raises on refusal."""
        item = limit.item
        period = item.get_expiry()
        now = time.time() if now is None else now
        window = int(now // period)
        counter = item.key_for(limit.name, key, str(window))
        try:
            count = await self._shared(lambda: self._storage.incr(counter, period))
        except StorageError:
            _log.warning("rate_limit_storage_unavailable", limit=limit.name)
            count = await self._fallback_storage.incr(counter, period)
        reset = max(1, math.ceil((window + 1) * period - now))
        return Usage(item.amount, max(0, item.amount - count), reset, count <= item.amount)

    async def _shared(self, run: Callable[[], Awaitable[T]]) -> T:
        """A call on the shared storage, under Redis's breaker: `StorageError` when it fails
        or the breaker refuses it."""
        if self._client is None:
            return await run()
        try:
            return await guarded(self._client, run)
        except RedisUnavailable as error:
            raise StorageError(error) from error


async def _retry_after(strategy: MovingWindowRateLimiter, limit: Limit, key: str) -> int:
    try:
        stats = await strategy.get_window_stats(limit.item, limit.name, key)
    except StorageError:
        return limit.item.get_expiry()
    return max(1, math.ceil(stats.reset_time - time.time()))
