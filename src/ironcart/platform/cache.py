"""Response cache: encoded JSON bytes in an in-process L1 over Redis (L2) over the database.

Consistency by tag generations. Each entry records the generation of every tag it
depends on (`product:<id>`, `listing`...). `invalidate(tags)` bumps those generations in
Redis and announces them on a pub/sub channel; every process updates its local copy at
once. An entry whose recorded generations are not current is stale. L1 entries and local
generations live `l1_seconds` / `generation_ttl` (1 s) and are then re-read from Redis,
except while the channel is provably in sync: the listener PINGs every 0.25 s, and since
Redis answers a PING after every message published before it, a PONG proves that every
invalidation up to that PING has been applied. Within SYNC_WINDOW of such proof an entry is
served from L1 without touching Redis; a silent or broken channel falls back to expiry.

Stampedes: one rebuild per key per process (single flight) and, with Redis, a short
cross-process lock; the others wait for the rebuilt entry. Stale-while-error: when a
rebuild fails with a database error, the last known entry is served instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import orjson
import structlog
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ironcart.platform.resilience.guarded_redis import guarded

_log = structlog.get_logger("ironcart.cache")
CHANNEL = "ironcart:cache:invalidate"
PING_INTERVAL = 0.25
PONG_TIMEOUT = 2.0
# An L1 entry older than its TTL is still served while the channel proved itself in sync
# this recently: consistency comes from the invalidations, not from expiry.
SYNC_WINDOW = 0.75
CACHE_LOOKUPS = Counter(
    "ironcart_cache_lookups_total",
    "Response cache lookups by cache name and outcome.",
    ["cache", "outcome"],
)


@dataclass(frozen=True, slots=True)
class CachedResponse:
    body: bytes
    etag: str
    tags: dict[str, int]
    created_at: float
    stale: bool = False

    def encode(self) -> bytes:
        meta = orjson.dumps({"etag": self.etag, "tags": self.tags, "created_at": self.created_at})
        return meta + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> CachedResponse:
        meta, _, body = raw.partition(b"\n")
        fields = orjson.loads(meta)
        return cls(
            body=body, etag=fields["etag"], tags=fields["tags"], created_at=fields["created_at"]
        )


@dataclass(frozen=True, slots=True)
class Built:
    """What a builder returns: the encoded body, and an optional ETag prefix (e.g. a version)."""

    body: bytes
    etag_prefix: str = ""


Builder = Callable[[], Awaitable[Built]]


class ResponseCache:
    def __init__(
        self,
        redis: Redis | None,
        *,
        namespace: str = "ironcart:cache",
        fresh_seconds: float = 300.0,
        keep_seconds: float = 3600.0,
        l1_seconds: float = 1.0,
        l1_max_entries: int = 20_000,
        generation_ttl: float = 1.0,
        stale_on: tuple[type[BaseException], ...] = (),
        enabled: bool = True,
    ) -> None:
        self._enabled = enabled
        self._redis = redis
        self._namespace = namespace
        self._fresh = fresh_seconds
        self._keep = keep_seconds
        self._l1_seconds = l1_seconds
        self._l1_max = l1_max_entries
        self._generation_ttl = generation_ttl
        self._stale_on = stale_on
        self._l1: OrderedDict[str, tuple[CachedResponse, float]] = OrderedDict()
        self._generations: dict[str, tuple[int, float]] = {}
        self._inflight: dict[str, asyncio.Future[CachedResponse]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._synced_at = float("-inf")

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for other processes' invalidations (a no-op without Redis)."""
        if self._redis is not None and self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="cache-invalidations")

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None

    # -- reads ----------------------------------------------------------------------------

    def peek(self, key: str) -> CachedResponse | None:
        """The L1 entry if it is fresh and valid right now: no I/O (for the raw ASGI fast path)."""
        if not self._enabled:
            return None
        held = self._l1.get(key)
        if held is None:
            return None
        now = time.monotonic()
        if held[1] < now and not self._in_sync(now):
            return None
        entry = held[0]
        if not self._locally_current(entry):
            return None
        return entry

    def _in_sync(self, now: float) -> bool:
        """True while the invalidation channel has proven, within SYNC_WINDOW, that every
        invalidation published up to then has been applied here (a PING answered in order)."""
        return now - self._synced_at < SYNC_WINDOW

    async def get_or_build(
        self, key: str, *, tags: tuple[str, ...], build: Builder, cache_name: str
    ) -> CachedResponse:
        """The cached response for `key`, rebuilt once (per process) when missing or stale.

        `tags` must be known before building: their generations are read first, so a change
        committed while the builder reads the database leaves the new entry already stale.
        """
        if not self._enabled:  # measurement mode: every read goes to the database
            return _entry(await build(), {})
        entry = self.peek(key)
        if entry is not None:
            CACHE_LOOKUPS.labels(cache_name, "l1_hit").inc()
            return entry
        remote = await self._read_l2(key)
        if remote is not None and await self._current(remote):
            CACHE_LOOKUPS.labels(cache_name, "l2_hit").inc()
            self._remember(key, remote)
            return remote
        CACHE_LOOKUPS.labels(cache_name, "miss").inc()
        return await self._single_flight(key, tags, build, fallback=remote)

    async def _single_flight(
        self, key: str, tags: tuple[str, ...], build: Builder, *, fallback: CachedResponse | None
    ) -> CachedResponse:
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[CachedResponse] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            entry = await self._rebuild(key, tags, build, fallback=fallback)
            future.set_result(entry)
            return entry
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        finally:
            del self._inflight[key]

    async def _rebuild(
        self, key: str, tags: tuple[str, ...], build: Builder, *, fallback: CachedResponse | None
    ) -> CachedResponse:
        locked = await self._lock(key)
        if not locked:
            waited = await self._wait_for_peer(key)
            if waited is not None:
                self._remember(key, waited)
                return waited
        try:
            generations = await self._generations_of(tags)
            try:
                built = await build()
            except self._stale_on:
                stale = fallback or self._l1_stale(key)
                if stale is None:
                    raise
                _log.warning("cache_serving_stale", key=key)
                return CachedResponse(stale.body, stale.etag, stale.tags, stale.created_at, True)
            entry = _entry(built, generations)
            self._remember(key, entry)
            await self._write_l2(key, entry)
            return entry
        finally:
            if locked:
                await self._unlock(key)

    # -- invalidation ---------------------------------------------------------------------

    async def invalidate(self, tags: Iterable[str]) -> None:
        """Make every entry that depends on one of `tags` stale, in every process."""
        tags = list(dict.fromkeys(tags))
        if not tags:
            return
        if self._redis is None:
            for tag in tags:
                generation = self._generations.get(tag, (0, 0.0))[0] + 1
                self._generations[tag] = (generation, float("inf"))
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for tag in tags:
                    pipe.incr(self._tag_key(tag))
                generations = await guarded(self._redis, pipe.execute)
            now = time.monotonic()
            for tag, generation in zip(tags, generations, strict=True):
                self._generations[tag] = (int(generation), now + self._generation_ttl)
            await self._redis.publish(
                CHANNEL, orjson.dumps(dict(zip(tags, generations, strict=True)))
            )
        except RedisError:
            # Redis is down: nothing can be served from it either; drop local state.
            _log.warning("cache_invalidation_failed", tags=tags)
            self._l1.clear()
            self._generations.clear()

    # -- internals ------------------------------------------------------------------------

    def _locally_current(self, entry: CachedResponse) -> bool:
        now = time.monotonic()
        in_sync = self._in_sync(now)
        for tag, generation in entry.tags.items():
            known = self._generations.get(tag)
            if known is None or known[0] != generation or (known[1] < now and not in_sync):
                return False
        return True

    async def _current(self, entry: CachedResponse) -> bool:
        if time.time() - entry.created_at > self._fresh:
            return False
        generations = await self._generations_of(tuple(entry.tags))
        return all(generations[tag] == generation for tag, generation in entry.tags.items())

    async def _generations_of(self, tags: tuple[str, ...]) -> dict[str, int]:
        now = time.monotonic()
        in_sync = self._in_sync(now)
        missing = [
            t
            for t in tags
            if (g := self._generations.get(t)) is None or (g[1] < now and not in_sync)
        ]
        if missing and self._redis is not None:
            try:
                values = await self._redis.mget([self._tag_key(tag) for tag in missing])
            except RedisError:
                values = [None] * len(missing)
                self._l1.clear()
            expiry = now + self._generation_ttl
            for tag, value in zip(missing, values, strict=True):
                # max: a newer generation may have arrived by pub/sub while MGET was in flight.
                known = self._generations.get(tag, (0, 0.0))[0]
                self._generations[tag] = (max(known, int(value or 0)), expiry)
        elif missing:
            for tag in missing:
                self._generations[tag] = (self._generations.get(tag, (0, 0.0))[0], float("inf"))
        return {tag: self._generations[tag][0] for tag in tags}

    def _remember(self, key: str, entry: CachedResponse) -> None:
        self._l1[key] = (entry, time.monotonic() + self._l1_seconds)
        self._l1.move_to_end(key)
        while len(self._l1) > self._l1_max:
            self._l1.popitem(last=False)

    def _l1_stale(self, key: str) -> CachedResponse | None:
        held = self._l1.get(key)
        return held[0] if held else None

    async def _read_l2(self, key: str) -> CachedResponse | None:
        if self._redis is None:
            return self._l1_stale(key)
        try:
            raw = await self._redis.get(self._entry_key(key))
        except RedisError:
            return self._l1_stale(key)
        if isinstance(raw, bytes) and raw:
            return CachedResponse.decode(raw)
        return self._l1_stale(key)

    async def _write_l2(self, key: str, entry: CachedResponse) -> None:
        if self._redis is None:
            return
        try:
            await self._redis.set(self._entry_key(key), entry.encode(), px=int(self._keep * 1000))
        except RedisError:
            _log.warning("cache_write_failed", key=key)

    async def _lock(self, key: str) -> bool:
        if self._redis is None:
            return True
        try:
            return bool(await self._redis.set(self._lock_key(key), b"1", nx=True, px=5000))
        except RedisError:
            return True

    async def _unlock(self, key: str) -> None:
        if self._redis is not None:
            try:
                await self._redis.delete(self._lock_key(key))
            except RedisError:
                _log.warning("cache_unlock_failed", key=key)

    async def _wait_for_peer(self, key: str, *, seconds: float = 2.0) -> CachedResponse | None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            entry = await self._read_l2(key)
            if entry is not None and await self._current(entry):
                return entry
        return None

    async def _listen(self) -> None:
        assert self._redis is not None  # noqa: S101 - only started with Redis
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    await self._follow(pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ValueError):
                _log.warning("cache_listener_reconnecting")
                self._synced_at = float("-inf")
                self._generations.clear()
                await asyncio.sleep(0.5)

    async def _follow(self, pubsub: PubSub) -> None:
        """Apply invalidations; PING every PING_INTERVAL. Redis answers a PING after every
        message published before it, so each PONG proves we are in sync as of its PING."""
        ping_sent_at: float | None = None
        next_ping = 0.0
        while True:
            now = time.monotonic()
            if ping_sent_at is None and now >= next_ping:
                ping_sent_at, next_ping = now, now + PING_INTERVAL
                await pubsub.ping()
            elif ping_sent_at is not None and now - ping_sent_at > PONG_TIMEOUT:
                raise RedisConnectionError("no PONG on the invalidation channel")
            message = await pubsub.get_message(timeout=PING_INTERVAL / 2)
            if message is None:
                continue
            if message.get("type") == "message":
                self._apply(orjson.loads(message["data"]))
            elif message.get("type") == "pong" and ping_sent_at is not None:
                self._synced_at, ping_sent_at = ping_sent_at, None

    def _apply(self, generations: dict[str, int]) -> None:
        expiry = time.monotonic() + self._generation_ttl
        for tag, generation in generations.items():
            known = self._generations.get(tag, (0, 0.0))[0]
            self._generations[tag] = (max(known, int(generation)), expiry)

    def _entry_key(self, key: str) -> str:
        return f"{self._namespace}:entry:{key}"

    def _lock_key(self, key: str) -> str:
        return f"{self._namespace}:lock:{key}"

    def _tag_key(self, tag: str) -> str:
        return f"{self._namespace}:tag:{tag}"


def _entry(built: Built, generations: dict[str, int]) -> CachedResponse:
    digest = hashlib.blake2b(built.body, digest_size=8).hexdigest()
    etag = f'"{built.etag_prefix}-{digest}"' if built.etag_prefix else f'"{digest}"'
    return CachedResponse(body=built.body, etag=etag, tags=generations, created_at=time.time())
