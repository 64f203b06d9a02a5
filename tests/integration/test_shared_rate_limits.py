"""Login throttling is shared by every server process through Redis."""

from __future__ import annotations

import uuid

import pytest

from tests.support.app import DEMO_PASSWORD, register_and_login, running_app, settings_for

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_account_lockout_is_shared_across_processes(
    postgres_url: str, redis_url: str
) -> None:
    settings = settings_for(
        postgres_url,
        redis_url=redis_url,
        identity={
            "login_failures_per_account_per_hour": 4,
            "login_attempts_per_ip_per_minute": 1000,
        },
    )
    email = f"shared-{uuid.uuid4().hex[:10]}@example.com"
    bad = {"grant_type": "password", "username": email, "password": "wrong-password-123"}
    async with running_app(settings) as (_a, first), running_app(settings) as (_b, second):
        await register_and_login(first, email)
        for client in (first, second, first, second):
            assert (await client.post("/api/v1/auth/token", data=bad)).status_code == 400
        for client in (first, second):
            locked = await client.post(
                "/api/v1/auth/token", data={**bad, "password": DEMO_PASSWORD}
            )
            assert locked.status_code == 429
            assert int(locked.headers["retry-after"]) > 0


async def test_ip_limit_refuses_a_login_flood(sqlite_url: str, redis_url: str) -> None:
    settings = settings_for(
        sqlite_url, redis_url=redis_url, identity={"login_attempts_per_ip_per_minute": 5}
    )
    async with running_app(settings) as (_app, client):
        # Every request comes from one address; a random email each time avoids account limits.
        statuses = []
        for _ in range(7):
            response = await client.post(
                "/api/v1/auth/token",
                data={
                    "grant_type": "password",
                    "username": f"{uuid.uuid4().hex}@example.com",
                    "password": "wrong-password-123",
                },
            )
            statuses.append(response.status_code)
    assert statuses[:5] == [400] * 5
    assert statuses[5:] == [429, 429]


async def test_logins_keep_working_when_redis_is_unreachable(sqlite_url: str) -> None:
    # Nothing listens on port 1: every Redis call fails at once.
    settings = settings_for(
        sqlite_url,
        redis_url="redis://127.0.0.1:1/0",
        identity={"login_failures_per_account_per_hour": 2},
    )
    email = f"no-redis-{uuid.uuid4().hex[:10]}@example.com"
    async with running_app(settings) as (_app, client):
        tokens = await register_and_login(client, email)
        assert tokens["access_token"]
        bad = {"grant_type": "password", "username": email, "password": "wrong-password-123"}
        statuses = [
            (await client.post("/api/v1/auth/token", data=bad)).status_code for _ in range(3)
        ]
        ready = await client.get("/readyz")
    # Throttling still holds, per process, and readiness says Redis is down.
    assert statuses == [400, 400, 429]
    assert ready.status_code == 503
    assert "redis" in ready.json()["detail"]
