"""A burst against a real `ironcart serve`: the excess is refused, the rest served, then calm.

One address (sent as `X-Forwarded-For`, which the server trusts from 127.0.0.1 as it would
from nginx) fires far more listing requests at once than its limit and the shedding bounds
allow. `make bench` (the burst case) measures the same with an open-loop load at 5x capacity.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.server import running_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

BURST = 240
PER_IP = 100


def _address() -> str:
    raw = uuid.uuid4().bytes
    return f"10.{raw[0]}.{raw[1]}.{raw[2] or 1}"


async def test_a_burst_is_refused_beyond_the_limits_and_the_server_recovers(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = {
        "IRONCART_REDIS_URL": redis_url,
        "IRONCART_ADMISSION__PER_IP": f"{PER_IP}/hour",
        "IRONCART_ADMISSION__MAX_IN_FLIGHT_LOW": "16",
    }
    async with running_server(postgres_url, tmp_path, env=env) as server:
        limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
        async with httpx.AsyncClient(
            base_url=server.base_url, limits=limits, timeout=10.0
        ) as client:
            burster = {"X-Forwarded-For": _address()}
            answers = await asyncio.gather(
                *(client.get("/api/v1/products", headers=burster) for _ in range(BURST))
            )
            started = time.monotonic()
            after = await client.get("/api/v1/products", headers={"X-Forwarded-For": _address()})
            after_seconds = time.monotonic() - started
            still_limited = await client.get("/api/v1/products", headers=burster)
            health = await client.get("/healthz")
    statuses = Counter(answer.status_code for answer in answers)
    # Every request was answered: served, or refused by the rate limit or load shedding.
    assert set(statuses) <= {200, 429, 503}, statuses
    assert 0 < statuses[200] <= PER_IP
    assert statuses[429] + statuses[503] >= BURST - PER_IP
    for refused in (a for a in answers if a.status_code != 200):
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["retry-after"]) >= 1
    for served in (a for a in answers if a.status_code == 200):
        assert "items" in served.json()
        assert int(served.headers["ratelimit-limit"]) == PER_IP
    # After the burst: another client is served at once.
    assert after.status_code == 200
    assert after_seconds < 1.0
    # The burster's quota counted exactly the requests that got past shedding.
    counted = statuses[200] + statuses[429]
    if counted >= PER_IP:
        assert still_limited.status_code == 429
    else:
        assert still_limited.status_code == 200
        assert int(still_limited.headers["ratelimit-remaining"]) == PER_IP - counted - 1
    assert health.status_code == 200
