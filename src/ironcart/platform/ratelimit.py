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


class LocalWindows:
    """Fixed-window counters of this process for `RateLimiter.consume`: key -> (window, count).

    `limits`' in-memory storage schedules an expiry task on every increment, which on the
    cached read path (one count per request) cost more than the count; the moving windows of
    `hit`/`check` (logins) stay on it. Past MAX_KEYS keys, the counts of earlier windows are
    dropped, so memory and the time per count stay bounded under many client addresses.
    """

    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, int]] = {}

    def incr(self, key: str, window: int) -> int:
        current = self._counts.get(key)
        count = current[1] + 1 if current is not None and current[0] == window else 1
        self._counts[key] = (window, count)
        if len(self._counts) > self.MAX_KEYS:
            # Keep this window's counts unless they alone fill half the room: then start over
            # (a flood of addresses weakens the limit for one window, never memory or time).
            kept = {k: v for k, v in self._counts.items() if v[0] >= window}
            self._counts = kept if len(kept) <= self.MAX_KEYS // 2 else {}
        return count

    def __len__(self) -> int:
        return len(self._counts)


class RateLimiter:
    def __init__(self, storage: Storage, client: Redis | None = None) -> None:
        self._client = client  # the Redis behind `storage`, whose breaker guards its calls
        self._storage = storage
        self._windows = LocalWindows()  # `consume` in this process (and when Redis fails)
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
        if self._client is None:  # this process's own counters
            count = self._windows.incr(item.key_for(limit.name, key), window)
        else:
            counter = item.key_for(limit.name, key, str(window))
            try:
                count = await self._shared(lambda: self._storage.incr(counter, period))
            except StorageError:
                _log.warning("rate_limit_storage_unavailable", limit=limit.name)
                count = self._windows.incr(item.key_for(limit.name, key), window)
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
