"""The product cache: one rebuild per cold key, consistent across processes, degrades cleanly."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import event

from tests.support.app import running_app, settings_for
from tests.support.catalog import product_payload, staff_headers

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def _count_product_reads(engine: Any) -> list[str]:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM catalog_products" in statement or "FROM catalog_variants" in statement:
            statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    return statements


@pytest.mark.parametrize("with_redis", [False, True], ids=["in-process", "redis"])
async def test_two_hundred_concurrent_requests_for_a_cold_key_read_the_database_once(
    postgres_url: str, redis_url: str, with_redis: bool
) -> None:
    settings = settings_for(
        postgres_url, redis_url=redis_url if with_redis else None, database_pool_size=20
    )
    async with running_app(settings) as (app, client):
        staff = await staff_headers(app, client)
        created = await client.post(
            "/api/v1/products", json=product_payload("Hot Item"), headers=staff
        )
        product_id = created.json()["id"]
        statements = _count_product_reads(app.state.container.engine)
        responses = await asyncio.gather(
            *(client.get(f"/api/v1/products/{product_id}") for _ in range(200))
        )
    assert {response.status_code for response in responses} == {200}
    assert len({response.content for response in responses}) == 1
    # One build: the product with its variants and their availability, in one query.
    assert len(statements) == 1, statements


async def test_price_change_reaches_another_process_within_a_second(
    postgres_url: str, redis_url: str
) -> None:
    settings = settings_for(postgres_url, redis_url=redis_url)
    sku = f"SKU-{uuid.uuid4().hex[:8]}"
    async with running_app(settings) as (app, writer), running_app(settings) as (_b, reader):
        staff = await staff_headers(app, writer)
        created = await writer.post(
            "/api/v1/products",
            json=product_payload("Shared Item", sku=sku, price="10.00"),
            headers=staff,
        )
        url = f"/api/v1/products/{created.json()['id']}"
        for _ in range(3):  # warm the reader's L1 and Redis
            assert (await reader.get(url)).json()["price"]["min"]["amount"] == "10.00"
        changed = await writer.patch(
            f"/api/v1/variants/{sku}",
            json={"price": {"amount": "11.00", "currency": "USD"}},
            headers={**staff, "If-Match": '"v1"'},
        )
        assert changed.status_code == 200
        started = time.monotonic()
        while (await reader.get(url)).json()["price"]["min"]["amount"] != "11.00":
            assert time.monotonic() - started < 1.0, "stale price served for more than 1 s"
            await asyncio.sleep(0.02)


async def test_shop_keeps_answering_when_redis_is_unreachable(sqlite_url: str) -> None:
    settings = settings_for(sqlite_url, redis_url="redis://127.0.0.1:1/0")
    async with running_app(settings) as (app, client):
        staff = await staff_headers(app, client)
        created = await client.post(
            "/api/v1/products", json=product_payload("No Redis Lamp"), headers=staff
        )
        assert created.status_code == 201
        url = f"/api/v1/products/{created.json()['id']}"
        for _ in range(3):
            assert (await client.get(url)).status_code == 200
        assert (await client.get("/api/v1/products")).status_code == 200
        assert (await client.get("/api/v1/categories")).status_code == 200
        assert (await client.get("/readyz")).status_code == 503


def _via(proxy: Any, url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(host=proxy.host, port=proxy.port).render_as_string(hide_password=False)


@pytest.mark.parametrize("with_redis", [False, True], ids=["in-process", "redis"])
async def test_warm_product_pages_are_served_while_postgresql_is_away(
    postgres_url: str, redis_url: str, with_redis: bool
) -> None:
    from urllib.parse import urlsplit

    from tests.support.tcp_proxy import TcpProxy

    target = urlsplit(postgres_url)
    async with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        settings = settings_for(
            _via(proxy, postgres_url), redis_url=redis_url if with_redis else None
        )
        async with running_app(settings) as (app, client):
            staff = await staff_headers(app, client)
            created = await client.post(
                "/api/v1/products", json=product_payload("Outage Lamp"), headers=staff
            )
            url = f"/api/v1/products/{created.json()['id']}"
            warm = await client.get(url)
            assert warm.status_code == 200
            await client.get("/api/v1/products")
            await proxy.cut()
            await asyncio.sleep(1.2)  # past the 1 s L1 lifetime: the cache must revalidate
            during = [await client.get(url) for _ in range(5)]
            listing = await client.get("/api/v1/products")
            uncached = await client.get("/api/v1/products?q=anything")
            await proxy.restore()
            after = await client.get(url)
    assert [response.status_code for response in during] == [200] * 5
    assert all(response.content == warm.content for response in during)
    assert listing.status_code == 200
    assert uncached.status_code == 503  # never cached: a clean problem, not a hang or a 500
    assert uncached.headers["content-type"] == "application/problem+json"
    assert after.status_code == 200


async def test_l1_is_trusted_past_its_ttl_only_while_invalidations_are_in_sync(
    redis_url: str,
) -> None:
    from redis.asyncio import Redis

    from ironcart.platform.cache import Built, ResponseCache

    namespace = f"test:{uuid.uuid4().hex[:8]}"
    writer_redis, reader_redis = Redis.from_url(redis_url), Redis.from_url(redis_url)
    writer = ResponseCache(writer_redis, namespace=namespace)
    reader = ResponseCache(reader_redis, namespace=namespace)
    await writer.start()
    await reader.start()
    builds = 0

    async def build() -> Built:
        nonlocal builds
        builds += 1
        return Built(b'{"n":%d}' % builds)

    try:
        await asyncio.sleep(0.6)  # both listeners answered a PING
        await reader.get_or_build("k", tags=("product:k",), build=build, cache_name="test")
        await asyncio.sleep(2.0)  # past the 1 s L1 lifetime
        assert reader.peek("k") is not None  # still trusted: the channel is in sync
        await writer.invalidate(["product:k"])
        started = time.monotonic()
        while reader.peek("k") is not None:
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.01)
        rebuilt = await reader.get_or_build(
            "k", tags=("product:k",), build=build, cache_name="test"
        )
        assert rebuilt.body == b'{"n":2}'
    finally:
        await writer.stop()
        await reader.stop()
        await writer_redis.aclose()
        await reader_redis.aclose()
