"""A frozen Redis costs the shop a few slow requests, not one slow request per request.

The app reaches the real Redis through a TCP proxy. Once the proxy stalls (connections stay
open, no byte goes through: a frozen or partitioned Redis), the first commands time out
after the "redis" policy's 1 s attempt timeout; the breaker then opens and every later
command fails at once, so requests fall back (cache to the database, the per-user limit to
this process's counters) and answer quickly. When Redis answers again, a probe after
`open_seconds` closes the breaker and commands reach Redis again.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from ironcart.platform.resilience.breaker import BreakerState
from tests.support.app import running_app, settings_for
from tests.support.catalog import product_payload, staff_headers
from tests.support.shop import customer
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

OPEN_SECONDS = 1.0
STALLED_SECONDS = 6.0
FAST_SECONDS = 0.25  # an answer that waited for no Redis timeout
SLOW_REQUESTS_AT_MOST = 5  # the breaker opens after 5 failed commands in a row


def _via(proxy: TcpProxy, redis_url: str) -> str:
    parts = urlsplit(redis_url)
    return f"redis://127.0.0.1:{proxy.port}{parts.path}"


async def _timed_get(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> float:
    started = time.monotonic()
    response = await client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    return time.monotonic() - started


async def test_a_frozen_redis_opens_its_breaker_and_requests_stay_fast(
    postgres_url: str, redis_url: str
) -> None:
    host, port = urlsplit(redis_url).hostname, urlsplit(redis_url).port
    async with TcpProxy(host or "127.0.0.1", port or 6379) as proxy:
        resilience = {"dependencies": {"redis": {"open_seconds": OPEN_SECONDS}}}
        settings = settings_for(
            postgres_url, redis_url=_via(proxy, redis_url), resilience=resilience
        )
        async with running_app(settings) as (app, client):
            staff = await staff_headers(app, client)
            created = await client.post(
                "/api/v1/products", json=product_payload("Frozen Redis Lamp"), headers=staff
            )
            page = f"/api/v1/products/{created.json()['id']}"
            buyer = await customer(client)  # a bearer token: a per-user counter in Redis
            await _timed_get(client, page, buyer)
            breaker = app.state.container.redis.breaker
            assert breaker.state is BreakerState.CLOSED

            proxy.stall()
            took: list[float] = []
            until = time.monotonic() + STALLED_SECONDS
            while time.monotonic() < until:
                took.append(await _timed_get(client, page, buyer))
            seen_open = (await client.get("/ops/breakers")).json()["dependencies"]["redis"]

            await proxy.restore()
            closed_after = time.monotonic()
            while breaker.state is not BreakerState.CLOSED:
                assert time.monotonic() - closed_after < OPEN_SECONDS + 3, breaker.snapshot()
                await _timed_get(client, page, buyer)  # traffic: the probes that close it
                await anyio.sleep(0.05)
            closed_after = time.monotonic() - closed_after
            await _timed_get(client, page, buyer)
            assert await app.state.container.redis.ping()  # through the proxy, and the breaker

    slow = [seconds for seconds in took if seconds >= FAST_SECONDS]
    assert len(slow) <= SLOW_REQUESTS_AT_MOST, took[:10]
    assert len(took) > 50  # the rest answered without waiting for Redis
    assert all(seconds < FAST_SECONDS for seconds in took[len(slow) + 1 :]), took
    assert seen_open["state"] in {"open", "half_open"}
    assert closed_after < OPEN_SECONDS + 3
