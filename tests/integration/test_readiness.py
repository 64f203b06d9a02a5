"""Readiness follows the real dependencies; liveness does not; metrics count what happened.

PostgreSQL and Redis are reached through a `TcpProxy` that the tests cut (open connections
aborted, new ones refused) and restore, as when a database fails over or a network drops.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from tests.support.app import running_app, settings_for
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

PROBLEM = "application/problem+json"
DEADLINE_SECONDS = 5.0
POLL_SECONDS = 0.2


def _through(proxy: TcpProxy, url: str) -> str:
    """`url` with its host and port replaced by the proxy's."""
    if url.startswith("redis"):
        parts = urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@" if credentials else ""
        return parts._replace(netloc=f"{netloc}{proxy.host}:{proxy.port}").geturl()
    proxied = make_url(url).set(host=proxy.host, port=proxy.port)
    return proxied.render_as_string(hide_password=False)


def _target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = 6379 if parts.scheme.startswith("redis") else 5432
    return parts.hostname or "127.0.0.1", parts.port or default


async def _poll_until(
    client: httpx.AsyncClient, path: str, done: Callable[[httpx.Response], bool]
) -> tuple[httpx.Response, float]:
    """GET `path` every POLL_SECONDS until `done`; the answer and the seconds it took."""
    started = time.monotonic()
    while True:
        response = await client.get(path)
        elapsed = time.monotonic() - started
        if done(response) or elapsed > DEADLINE_SECONDS:
            return response, elapsed
        await anyio.sleep(POLL_SECONDS)


def _assert_ready(response: httpx.Response, dependencies: set[str]) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "ok", "checks": dict.fromkeys(dependencies, "ok")}


def _assert_not_ready(response: httpx.Response, failing: str, dependencies: set[str]) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["retry-after"] == "5"
    body = response.json()
    assert body["type"] == "urn:ironcart:problem:not_ready"
    assert body["status"] == 503
    assert failing in body["detail"]
    assert set(body["checks"]) == dependencies
    assert body["checks"][failing] != "ok"
    for other in dependencies - {failing}:
        assert body["checks"][other] == "ok", body


async def _assert_alive(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readiness_follows_postgresql_away_and_back(postgres_url: str) -> None:
    async with TcpProxy(*_target(postgres_url)) as proxy:
        settings = settings_for(_through(proxy, postgres_url))
        async with running_app(settings) as (_app, client):
            _assert_ready(await client.get("/readyz"), {"database"})

            await proxy.cut()
            response, took = await _poll_until(client, "/readyz", lambda r: r.status_code == 503)
            _assert_not_ready(response, "database", {"database"})
            assert took < DEADLINE_SECONDS, f"still ready {took:.1f} s after the database went"
            await _assert_alive(client)  # liveness must not follow a dependency
            _assert_not_ready(await client.get("/readyz"), "database", {"database"})
            await _assert_alive(client)

            await proxy.restore()
            response, took = await _poll_until(client, "/readyz", lambda r: r.status_code == 200)
            _assert_ready(response, {"database"})
            assert took < DEADLINE_SECONDS, f"not ready {took:.1f} s after the database returned"
            await _assert_alive(client)


async def test_readiness_answers_in_time_when_postgresql_hangs(postgres_url: str) -> None:
    """A black hole (no resets, no answers) must cost the probe its timeout, not hang it."""
    async with TcpProxy(*_target(postgres_url)) as proxy:
        settings = settings_for(
            _through(proxy, postgres_url), server={"readiness_timeout_seconds": 1.0}
        )
        async with running_app(settings) as (_app, client):
            _assert_ready(await client.get("/readyz"), {"database"})

            proxy.stall()
            response, took = await _poll_until(client, "/readyz", lambda r: r.status_code == 503)
            _assert_not_ready(response, "database", {"database"})
            assert took < DEADLINE_SECONDS, f"no answer {took:.1f} s into the stall"
            with anyio.fail_after(1):  # the event loop is not blocked by the stuck I/O
                await _assert_alive(client)

            await proxy.restore()
            response, took = await _poll_until(client, "/readyz", lambda r: r.status_code == 200)
            _assert_ready(response, {"database"})
            assert took < DEADLINE_SECONDS, f"not ready {took:.1f} s after the stall ended"


async def test_readiness_follows_redis_away_and_back(postgres_url: str, redis_url: str) -> None:
    async with TcpProxy(*_target(redis_url)) as proxy:
        settings = settings_for(postgres_url, redis_url=_through(proxy, redis_url))
        dependencies = {"database", "redis"}
        async with running_app(settings) as (_app, client):
            _assert_ready(await client.get("/readyz"), dependencies)

            await proxy.cut()
            response, took = await _poll_until(client, "/readyz", lambda r: r.status_code == 503)
            _assert_not_ready(response, "redis", dependencies)
            assert took < DEADLINE_SECONDS, f"still ready {took:.1f} s after Redis went"
            await _assert_alive(client)

            await proxy.restore()
            response, took = await _poll_until(client, "/readyz", lambda r: r.status_code == 200)
            _assert_ready(response, dependencies)
            assert took < DEADLINE_SECONDS, f"not ready {took:.1f} s after Redis returned"


def _sample(metrics: str, name: str, labels: dict[str, str]) -> float:
    """The value of the sample `name` whose labels include `labels` (0 when absent)."""
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


async def test_metrics_count_requests_by_route_and_status(sqlite_url: str) -> None:
    requests_total = "ironcart_http_requests_total"
    duration = "ironcart_http_request_duration_seconds"
    healthz = {"method": "GET", "route": "/healthz", "status": "200"}
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    async with running_app(settings_for(sqlite_url)) as (_app, client):
        before = (await client.get("/metrics")).text
        for _ in range(3):
            assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/no/such/route")).status_code == 404
        response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text
    assert f'{requests_total}{{method="GET",route="/healthz",status="200"}}' in after
    assert _sample(after, requests_total, healthz) - _sample(before, requests_total, healthz) == 3
    assert (
        _sample(after, requests_total, unmatched) - _sample(before, requests_total, unmatched) == 1
    )
    # The 404 has no route template: it must not be counted under the path it asked for.
    assert 'route="/no/such/route"' not in after

    route = {"method": "GET", "route": "/healthz"}
    bucket_line = re.compile(rf'^{duration}_bucket\{{[^}}]*route="/healthz"[^}}]*\}} ', re.M)
    assert bucket_line.findall(after)
    everything = {**route, "le": "+Inf"}
    assert (
        _sample(after, f"{duration}_bucket", everything)
        - _sample(before, f"{duration}_bucket", everything)
        == 3
    )
    assert (
        _sample(after, f"{duration}_count", route) - _sample(before, f"{duration}_count", route)
        == 3
    )
    assert _sample(after, f"{duration}_sum", route) >= _sample(before, f"{duration}_sum", route)


async def test_database_routes_answer_503_while_postgresql_is_away(postgres_url: str) -> None:
    """asyncpg raises a bare ConnectionRefusedError, which SQLAlchemy does not wrap."""
    async with (
        TcpProxy(*_target(postgres_url)) as proxy,
        running_app(settings_for(_through(proxy, postgres_url))) as (_app, client),
    ):
        # A route that reads the database on every call (the JWKS is kept for a few seconds).
        body = {"email": "away@example.com", "password": "a-long-enough-passphrase", "name": "A"}
        assert (await client.post("/api/v1/auth/register", json=body)).status_code == 201
        await proxy.cut()
        response = await client.post(
            "/api/v1/auth/register", json={**body, "email": "away2@example.com"}
        )
        await proxy.restore()
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "urn:ironcart:problem:database_unavailable"
    assert response.headers["retry-after"] == "5"
