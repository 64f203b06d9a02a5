"""Load shedding on the real app: requests held in flight, and a blocked event loop.

A request is held in flight by a body that does not end until the test says so: the
framework waits for it, so the request counts as in flight for the whole time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from tests.support.app import running_app, settings_for

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def _shed_count(priority: str) -> float:
    value = REGISTRY.get_sample_value("ironcart_requests_shed_total", {"priority": priority})
    return value or 0.0


HELD_HEADERS = {"X-Cart-Token": "t", "Content-Type": "application/json"}


class Held:
    """Requests whose bodies stay open until `release()`."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.gate = asyncio.Event()
        self.tasks: list[asyncio.Task[httpx.Response]] = []

    async def _body(self) -> AsyncIterator[bytes]:
        yield b'{"sku": "HELD-1",'
        await self.gate.wait()
        yield b' "quantity": 1}'

    async def hold(self, path: str) -> None:
        request = self.client.post(path, content=self._body(), headers=HELD_HEADERS)
        self.tasks.append(asyncio.create_task(request))
        await asyncio.sleep(0.05)  # the request is inside the app, waiting for its body

    async def release(self) -> list[int]:
        self.gate.set()
        return [response.status_code for response in await asyncio.gather(*self.tasks)]


def _assert_shed(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "2"
    assert response.json()["type"] == "urn:ironcart:problem:overloaded"


async def _status(client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> int:
    return (await client.request(method, path, **kw)).status_code


async def test_in_flight_bounds_shed_low_then_normal_then_everything(sqlite_url: str) -> None:
    admission = {
        "max_in_flight_low": 1,
        "max_in_flight_normal": 2,
        "max_in_flight_high": 3,
        "shed_retry_after_seconds": 2,
    }
    async with running_app(settings_for(sqlite_url, admission=admission)) as (_app, client):
        held = Held(client)
        before = {p: _shed_count(p) for p in ("low", "normal", "high")}
        await held.hold("/api/v1/carts/held-1/items")  # 1 in flight
        listing = await client.get("/api/v1/products")
        assert await _status(client, "GET", "/api/v1/carts/nope") == 404  # normal: admitted
        await held.hold("/api/v1/carts/held-2/items")  # 2 in flight
        normal = await client.get("/api/v1/carts/nope")
        checkout = await client.post("/api/v1/orders", json={})  # high: admitted (401)
        await held.hold("/api/v1/orders")  # 3 in flight: the hard cap
        high = await client.post("/api/v1/orders", json={})
        health = await client.get("/healthz")
        released = await held.release()
        after = [await _status(client, "GET", "/api/v1/products") for _ in range(2)]
    _assert_shed(listing)
    _assert_shed(normal)
    _assert_shed(high)
    assert checkout.status_code == 401
    assert health.status_code == 200
    # The held requests were served in full once their bodies came (cart unknown, no token).
    assert released == [404, 404, 401]
    assert after == [200, 200]
    assert {p: _shed_count(p) - before[p] for p in before} == {"low": 1, "normal": 1, "high": 1}


async def test_a_lagging_event_loop_sheds_listings_but_not_checkout(sqlite_url: str) -> None:
    admission = {"max_lag_low_ms": 60, "max_lag_normal_ms": 5000, "lag_sample_ms": 20}
    async with running_app(settings_for(sqlite_url, admission=admission)) as (_app, client):
        assert await _status(client, "GET", "/api/v1/products") == 200  # starts the sampler
        for _ in range(8):  # the app and this test share the loop: block it, repeatedly
            time.sleep(0.2)
            await asyncio.sleep(0.005)
        lagging = await client.get("/api/v1/products")
        others = [
            await _status(client, "GET", "/api/v1/products/none"),
            await _status(client, "POST", "/api/v1/orders", json={}),
        ]
        started = time.monotonic()
        while await _status(client, "GET", "/api/v1/products") == 503:
            assert time.monotonic() - started < 5, "still shedding 5 s after the lag ended"
            await asyncio.sleep(0.05)
    _assert_shed_lag(lagging)
    assert others == [404, 401]


def _assert_shed_lag(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
