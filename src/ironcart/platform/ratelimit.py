"""Rate limits with the `limits` library: in-process by default, shared through Redis."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from ironcart.platform.errors import RateLimited


@dataclass(frozen=True, slots=True)
class Limit:
    """A named limit such as `Limit("login-ip", "30/minute")`."""

    name: str
    rate: str

    @property
    def item(self) -> RateLimitItem:
        return parse(self.rate)


class RateLimiter:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._strategy = MovingWindowRateLimiter(storage)

    @classmethod
    def in_process(cls) -> RateLimiter:
        return cls(MemoryStorage())

    @classmethod
    def redis(cls, url: str) -> RateLimiter:
        scheme, _, rest = url.partition("://")
        return cls(RedisStorage(f"async+{scheme}://{rest}", implementation="redispy"))

    async def hit(self, limit: Limit, key: str, *, detail: str | None = None) -> None:
        """Count one event; raise `RateLimited` (with Retry-After) if the limit is exceeded."""
        if not await self._strategy.hit(limit.item, limit.name, key):
            raise RateLimited(detail, retry_after_seconds=await self._retry_after(limit, key))

    async def check(self, limit: Limit, key: str, *, detail: str | None = None) -> None:
        """Raise `RateLimited` if one more event would exceed the limit, without counting it."""
        if not await self._strategy.test(limit.item, limit.name, key):
            raise RateLimited(detail, retry_after_seconds=await self._retry_after(limit, key))

    async def clear(self, limit: Limit, key: str) -> None:
        await self._strategy.clear(limit.item, limit.name, key)

    async def _retry_after(self, limit: Limit, key: str) -> int:
        stats = await self._strategy.get_window_stats(limit.item, limit.name, key)
        return max(1, math.ceil(stats.reset_time - time.time()))
