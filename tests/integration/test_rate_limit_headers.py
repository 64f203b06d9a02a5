"""Rate limits on the real app: per IP, per user, per service client, per hot SKU; headers.

Limits here are per day: the windows are aligned to the clock, and a test crossing a window
boundary mid-way would see its counters reset (a minute window would make that likely).
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest

from tests.support.app import running_app, settings_for
from tests.support.shop import customer, staffer, stocked_product

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def _admission(**limits: Any) -> dict[str, Any]:
    return {"admission": {"per_ip": "1000/day", **limits}}


def _quota(response: httpx.Response) -> tuple[int, int, int]:
    headers = response.headers
    return (
        int(headers["ratelimit-limit"]),
        int(headers["ratelimit-remaining"]),
        int(headers["ratelimit-reset"]),
    )


def _assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:ironcart:problem:ironcart.rate_limited"
    assert 0 < int(response.headers["retry-after"]) <= 86400
    assert response.headers["ratelimit-remaining"] == "0"


async def test_per_ip_limit_counts_down_then_refuses(postgres_url: str, redis_url: str) -> None:
    settings = settings_for(postgres_url, redis_url=redis_url, **_admission(per_ip="3/day"))
    async with running_app(settings) as (_app, client):
        answers = [await client.get("/api/v1/categories") for _ in range(4)]
        health = [await client.get(path) for path in ("/healthz", "/metrics", "/readyz")]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [_quota(a)[:2] for a in answers[:3]] == [(3, 2), (3, 1), (3, 0)]
    assert all(0 < _quota(a)[2] <= 86400 for a in answers)
    _assert_refused(answers[3])
    # Operations endpoints are never limited, and carry no quota.
    assert [h.status_code for h in health] == [200, 200, 200]
    assert all("ratelimit-limit" not in h.headers for h in health)


async def test_per_user_limit_is_the_tightest_and_per_person(
    postgres_url: str, redis_url: str
) -> None:
    settings = settings_for(postgres_url, redis_url=redis_url, **_admission(per_user="2/day"))
    async with running_app(settings) as (_app, client):
        first, second = await customer(client), await customer(client)
        mine = [await client.get("/api/v1/me", headers=first) for _ in range(3)]
        theirs = await client.get("/api/v1/me", headers=second)
        anonymous = await client.get("/api/v1/categories")
    assert [a.status_code for a in mine] == [200, 200, 429]
    # The user's limit (2) is tighter than the address's (1000): its quota is the one shown.
    assert [_quota(a)[:2] for a in mine[:2]] == [(2, 1), (2, 0)]
    _assert_refused(mine[2])
    assert theirs.status_code == 200
    assert _quota(theirs)[:2] == (2, 1)
    assert anonymous.status_code == 200
    assert _quota(anonymous)[0] == 1000


async def test_a_bad_token_is_counted_per_address_and_answered_401(sqlite_url: str) -> None:
    settings = settings_for(sqlite_url, **_admission(per_ip="2/day", per_user="1/day"))
    async with running_app(settings) as (_app, client):
        bad = {"Authorization": "Bearer not-a-token"}
        answers = [await client.get("/api/v1/me", headers=bad) for _ in range(3)]
    assert [a.status_code for a in answers] == [401, 401, 429]
    assert [_quota(a)[:2] for a in answers] == [(2, 1), (2, 0), (2, 0)]


async def _service_token(app: Any, client: httpx.AsyncClient) -> dict[str, str]:
    client_id, secret = await app.state.container.identity.create_client(
        name=f"svc-{uuid.uuid4().hex[:8]}", scopes=frozenset({"catalog:read"})
    )
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    granted = await client.post(
        "/api/v1/auth/token",
        data={"grant_type": "client_credentials", "scope": "catalog:read"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert granted.status_code == 200, granted.text
    return {"Authorization": f"Bearer {granted.json()['access_token']}"}


async def test_service_clients_have_their_own_larger_limit(
    postgres_url: str, redis_url: str
) -> None:
    settings = settings_for(
        postgres_url, redis_url=redis_url, **_admission(per_ip="3/day", per_client="4/day")
    )
    async with running_app(settings) as (app, client):
        service = await _service_token(app, client)  # the token request is the IP's first
        calls = [await client.get("/api/v1/categories", headers=service) for _ in range(5)]
        people = [await client.get("/api/v1/categories") for _ in range(3)]
    # The service is counted against its own 4, not the address's 3 ...
    assert [c.status_code for c in calls] == [200, 200, 200, 200, 429]
    assert [_quota(c)[:2] for c in calls[:4]] == [(4, 3), (4, 2), (4, 1), (4, 0)]
    _assert_refused(calls[4])
    # ... and did not use up the address's quota: the token request took one of the 3.
    assert [p.status_code for p in people] == [200, 200, 429]


async def _add(client: httpx.AsyncClient, sku: str) -> httpx.Response:
    cart = await client.post("/api/v1/carts")
    assert cart.status_code == 201, cart.text
    body = cart.json()
    return await client.post(
        f"/api/v1/carts/{body['id']}/items",
        json={"sku": sku, "quantity": 1},
        headers={"X-Cart-Token": body["token"]},
    )


async def test_a_hot_sku_is_limited_across_buyers_and_processes(
    postgres_url: str, redis_url: str
) -> None:
    settings = settings_for(
        postgres_url, redis_url=redis_url, **_admission(per_hot_resource="3/day")
    )
    async with running_app(settings) as (app, first), running_app(settings) as (_other, second):
        staff = await staffer(app, first)
        hot = await stocked_product(app, first, staff, units=100)
        cold = await stocked_product(app, first, staff, units=100)
        adds = [await _add(client, hot) for client in (first, second, first, second)]
        other = await _add(second, cold)
        orders = await first.post(
            "/api/v1/orders",
            json={"lines": [{"sku": hot, "quantity": 1}]},
            headers={**await customer(first), "Idempotency-Key": uuid.uuid4().hex},
        )
    # Three adds of the hot SKU in all, whichever process served them; then 429.
    assert [a.status_code for a in adds] == [200, 200, 200, 429]
    assert [_quota(a)[:2] for a in adds[:3]] == [(3, 2), (3, 1), (3, 0)]
    _assert_refused(adds[3])
    assert other.status_code == 200
    assert _quota(other)[:2] == (3, 2)
    # Checking the hot SKU out is refused before the order is even validated.
    _assert_refused(orders)
    assert orders.json()["status"] == 429


async def test_limits_can_be_switched_off(sqlite_url: str) -> None:
    settings = settings_for(sqlite_url, admission={"per_ip": "1/day", "rate_limits_enabled": False})
    async with running_app(settings) as (_app, client):
        answers = [await client.get("/api/v1/categories") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all("ratelimit-limit" not in a.headers for a in answers)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-in-redis", "per-process"])
async def test_the_per_ip_limit_is_shared_by_processes_only_when_asked(
    postgres_url: str, redis_url: str, shared: bool
) -> None:
    settings = settings_for(
        postgres_url, redis_url=redis_url, **_admission(per_ip="2/day", per_ip_shared=shared)
    )
    address = (f"ip-{uuid.uuid4().hex[:12]}", 50000)
    async with running_app(settings) as (one, _), running_app(settings) as (two, _):
        answers = []
        for app in (one, one, two):
            transport = httpx.ASGITransport(app=app, client=address)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                answers.append(await client.get("/api/v1/categories"))
    assert [a.status_code for a in answers[:2]] == [200, 200]
    if shared:
        _assert_refused(answers[2])
    else:  # the other process has its own count: nginx's limit_req is the shared one
        assert (answers[2].status_code, _quota(answers[2])[:2]) == (200, (2, 1))
