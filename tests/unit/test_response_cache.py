"""ResponseCache without Redis: single flight, tag invalidation, stale-while-error."""

from __future__ import annotations

import asyncio

import pytest

from ironcart.platform.cache import Built, ResponseCache

pytestmark = pytest.mark.anyio


class DatabaseDown(Exception):
    pass


class CountingBuilder:
    def __init__(self, body: bytes = b'{"v":1}', delay: float = 0.0) -> None:
        self.calls = 0
        self.body = body
        self.delay = delay
        self.fail = False

    async def __call__(self) -> Built:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise DatabaseDown
        return Built(self.body, etag_prefix="v1")


async def test_concurrent_misses_build_once() -> None:
    cache = ResponseCache(None)
    build = CountingBuilder(delay=0.05)
    entries = await asyncio.gather(
        *(cache.get_or_build("k", tags=("t",), build=build, cache_name="test") for _ in range(200))
    )
    assert build.calls == 1
    assert {entry.body for entry in entries} == {b'{"v":1}'}
    assert entries[0].etag.startswith('"v1-')


async def test_invalidating_a_tag_rebuilds_only_its_entries() -> None:
    cache = ResponseCache(None)
    first, second = CountingBuilder(), CountingBuilder()
    await cache.get_or_build("a", tags=("product:a",), build=first, cache_name="test")
    await cache.get_or_build("b", tags=("product:b",), build=second, cache_name="test")
    await cache.invalidate(["product:a"])
    assert cache.peek("a") is None
    assert cache.peek("b") is not None
    first.body = b'{"v":2}'
    entry = await cache.get_or_build("a", tags=("product:a",), build=first, cache_name="test")
    assert entry.body == b'{"v":2}'
    await cache.get_or_build("b", tags=("product:b",), build=second, cache_name="test")
    assert (first.calls, second.calls) == (2, 1)


async def test_a_failing_rebuild_serves_the_last_known_entry() -> None:
    cache = ResponseCache(None, stale_on=(DatabaseDown,))
    build = CountingBuilder()
    fresh = await cache.get_or_build("k", tags=("t",), build=build, cache_name="test")
    await cache.invalidate(["t"])
    build.fail = True
    stale = await cache.get_or_build("k", tags=("t",), build=build, cache_name="test")
    assert stale.stale is True
    assert stale.body == fresh.body


async def test_a_failing_build_without_any_copy_raises() -> None:
    cache = ResponseCache(None, stale_on=(DatabaseDown,))
    build = CountingBuilder()
    build.fail = True
    with pytest.raises(DatabaseDown):
        await cache.get_or_build("k", tags=("t",), build=build, cache_name="test")
    build.fail = False
    entry = await cache.get_or_build("k", tags=("t",), build=build, cache_name="test")
    assert entry.stale is False


async def test_an_invalidation_during_a_build_leaves_the_entry_stale() -> None:
    cache = ResponseCache(None)
    build = CountingBuilder(delay=0.05)
    building = asyncio.create_task(
        cache.get_or_build("k", tags=("t",), build=build, cache_name="test")
    )
    await asyncio.sleep(0.01)
    await cache.invalidate(["t"])  # a write committed while the builder was reading
    await building
    assert cache.peek("k") is None  # the racing build's result is not trusted


async def test_l1_is_bounded() -> None:
    cache = ResponseCache(None, l1_max_entries=10)
    build = CountingBuilder()
    for index in range(50):
        await cache.get_or_build(f"k{index}", tags=("t",), build=build, cache_name="test")
    assert sum(cache.peek(f"k{index}") is not None for index in range(50)) == 10


async def test_a_disabled_cache_always_builds() -> None:
    cache = ResponseCache(None, enabled=False)
    build = CountingBuilder()
    for _ in range(3):
        await cache.get_or_build("k", tags=("t",), build=build, cache_name="test")
    assert build.calls == 3
    assert cache.peek("k") is None
