"""Identity over HTTP on SQLite, PostgreSQL and MariaDB: registration, OAuth2 grants, profile."""

from __future__ import annotations

import asyncio
import base64
import uuid

import httpx
import pytest
from sqlalchemy import func, select

from ironcart.identity.repository import refresh_tokens, users
from tests.support.app import DEMO_PASSWORD, register_and_login, running_app, settings_for

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def _email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@Example.COM"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": token}
    )


async def test_register_login_me_and_profile(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (_app, client):
        email = _email()
        registered = await client.post(
            "/api/v1/auth/register",
            json={"email": email, "password": DEMO_PASSWORD, "name": "Grace Hopper"},
        )
        assert registered.status_code == 201
        body = registered.json()
        assert set(body) == {"id", "email", "name", "roles", "created_at"}
        assert body["email"] == email.lower()
        assert body["roles"] == ["customer"]

        token = await client.post(
            "/api/v1/auth/token",
            data={"grant_type": "password", "username": email.upper(), "password": DEMO_PASSWORD},
        )
        assert token.status_code == 200
        assert token.headers["cache-control"] == "no-store"
        tokens = token.json()
        assert tokens["token_type"] == "Bearer"
        assert tokens["scope"] == "customer"
        assert tokens["expires_in"] == 900

        me = await client.get("/api/v1/me", headers=_bearer(tokens["access_token"]))
        assert me.status_code == 200
        assert me.json() == {**body, "name": "Grace Hopper"}

        patched = await client.patch(
            "/api/v1/me",
            json={"name": "Rear Admiral Hopper"},
            headers=_bearer(tokens["access_token"]),
        )
        assert patched.status_code == 200
        assert patched.json()["name"] == "Rear Admiral Hopper"


async def test_refresh_rotates_and_reuse_revokes_the_family(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        first = await register_and_login(client, _email())
        second = await _refresh(client, first["refresh_token"])
        assert second.status_code == 200
        rotated = second.json()
        assert rotated["refresh_token"] != first["refresh_token"]

        replay = await _refresh(client, first["refresh_token"])
        assert replay.status_code == 400
        assert replay.json()["error"] == "invalid_grant"
        assert replay.headers["content-type"] == "application/problem+json"

        # The replay revoked the whole family: the newest token is dead too.
        after = await _refresh(client, rotated["refresh_token"])
        assert after.status_code == 400
        assert after.json()["error"] == "invalid_grant"
        engine = app.state.container.engine
        async with engine.connect() as connection:
            live = await connection.scalar(
                select(func.count())
                .select_from(refresh_tokens)
                .where(refresh_tokens.c.revoked_at.is_(None))
            )
        assert live == 0


async def test_concurrent_refreshes_of_one_token_issue_at_most_one(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (_app, client):
        tokens = await register_and_login(client, _email())
        results = await asyncio.gather(
            *(_refresh(client, tokens["refresh_token"]) for _ in range(10))
        )
        statuses = sorted(response.status_code for response in results)
        assert statuses.count(200) <= 1
        assert statuses.count(400) >= 9
        for response in results:
            if response.status_code == 200:
                # A concurrent replay was seen, so even the winner's new token is revoked.
                follow_up = await _refresh(client, response.json()["refresh_token"])
                assert follow_up.status_code == 400


async def test_password_change_checks_current_and_revokes_sessions(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (_app, client):
        email = _email()
        tokens = await register_and_login(client, email)
        wrong = await client.post(
            "/api/v1/me/password",
            json={
                "current_password": "not-the-password!",
                "new_password": "another-long-passphrase",
            },
            headers=_bearer(tokens["access_token"]),
        )
        assert wrong.status_code == 422
        assert wrong.json()["type"] == "urn:ironcart:problem:identity.wrong_password"

        changed = await client.post(
            "/api/v1/me/password",
            json={"current_password": DEMO_PASSWORD, "new_password": "another-long-passphrase"},
            headers=_bearer(tokens["access_token"]),
        )
        assert changed.status_code == 204
        assert (await _refresh(client, tokens["refresh_token"])).status_code == 400
        old = await client.post(
            "/api/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": DEMO_PASSWORD},
        )
        assert old.status_code == 400
        new = await client.post(
            "/api/v1/auth/token",
            data={
                "grant_type": "password",
                "username": email,
                "password": "another-long-passphrase",
            },
        )
        assert new.status_code == 200


async def test_duplicate_registration_is_indistinguishable_and_stores_nothing(
    database_url: str,
) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        email = _email()
        payload = {"email": email, "password": DEMO_PASSWORD, "name": "First"}
        first = await client.post("/api/v1/auth/register", json=payload)
        again = await client.post(
            "/api/v1/auth/register",
            json={**payload, "email": email.swapcase(), "password": "a-different-passphrase"},
        )
        assert first.status_code == again.status_code == 201
        assert set(first.json()) == set(again.json())
        engine = app.state.container.engine
        async with engine.connect() as connection:
            count = await connection.scalar(
                select(func.count()).select_from(users).where(users.c.email == email.lower())
            )
        assert count == 1
        # The original password still works; the second one was never stored.
        login = await client.post(
            "/api/v1/auth/token",
            data={
                "grant_type": "password",
                "username": email,
                "password": "a-different-passphrase",
            },
        )
        assert login.status_code == 400


async def test_concurrent_registrations_of_one_email_create_one_account(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        email = _email()
        responses = await asyncio.gather(
            *(
                client.post(
                    "/api/v1/auth/register",
                    json={"email": email, "password": DEMO_PASSWORD, "name": f"n{i}"},
                )
                for i in range(8)
            )
        )
        assert {response.status_code for response in responses} == {201}
        engine = app.state.container.engine
        async with engine.connect() as connection:
            count = await connection.scalar(
                select(func.count()).select_from(users).where(users.c.email == email.lower())
            )
        assert count == 1


async def test_unknown_and_wrong_password_get_the_same_answer(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (_app, client):
        email = _email()
        await register_and_login(client, email)
        wrong = await client.post(
            "/api/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": "wrong-password-123"},
        )
        unknown = await client.post(
            "/api/v1/auth/token",
            data={"grant_type": "password", "username": _email(), "password": "wrong-password-123"},
        )
        assert wrong.status_code == unknown.status_code == 400
        strip = {"request_id"}
        assert {k: v for k, v in wrong.json().items() if k not in strip} == {
            k: v for k, v in unknown.json().items() if k not in strip
        }


async def test_login_failures_are_throttled_per_account(database_url: str) -> None:
    settings = settings_for(
        database_url,
        identity={
            "login_failures_per_account_per_hour": 3,
            "login_attempts_per_ip_per_minute": 100,
        },
    )
    async with running_app(settings) as (_app, client):
        email = _email()
        await register_and_login(client, email)
        bad = {"grant_type": "password", "username": email, "password": "wrong-password-123"}
        statuses = [
            (await client.post("/api/v1/auth/token", data=bad)).status_code for _ in range(3)
        ]
        assert statuses == [400, 400, 400]
        throttled = await client.post(
            "/api/v1/auth/token",
            data={**bad, "password": DEMO_PASSWORD},  # even the right password, once locked
        )
        assert throttled.status_code == 429
        assert int(throttled.headers["retry-after"]) > 0
        assert throttled.headers["content-type"] == "application/problem+json"


async def test_client_credentials_grant_and_scopes(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        identity = app.state.container.identity
        client_id, secret = await identity.create_client(
            name="inventory-service", scopes=frozenset({"inventory:reserve", "catalog:read"})
        )
        basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        granted = await client.post(
            "/api/v1/auth/token",
            data={"grant_type": "client_credentials", "scope": "catalog:read"},
            headers={"Authorization": f"Basic {basic}"},
        )
        assert granted.status_code == 200
        assert granted.json()["scope"] == "catalog:read"
        assert "refresh_token" not in granted.json()

        too_much = await client.post(
            "/api/v1/auth/token",
            data={
                "grant_type": "client_credentials",
                "scope": "admin",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
        assert too_much.status_code == 400
        assert too_much.json()["error"] == "invalid_scope"

        wrong = await client.post(
            "/api/v1/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret + "x",
            },
        )
        assert wrong.status_code == 401
        assert wrong.json()["error"] == "invalid_client"

        # A service token is not a person: /me is forbidden (403), not unauthenticated (401).
        me = await client.get("/api/v1/me", headers=_bearer(granted.json()["access_token"]))
        assert me.status_code == 403
        assert 'error="insufficient_scope"' in me.headers["www-authenticate"]


async def test_revoke_ends_the_refresh_family(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (_app, client):
        tokens = await register_and_login(client, _email())
        revoked = await client.post("/api/v1/auth/revoke", data={"token": tokens["refresh_token"]})
        assert revoked.status_code == 200
        assert (await _refresh(client, tokens["refresh_token"])).status_code == 400
        unknown = await client.post("/api/v1/auth/revoke", data={"token": "never-issued"})
        assert unknown.status_code == 200


async def test_key_rotation_keeps_old_tokens_valid(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        tokens = await register_and_login(client, _email())
        identity = app.state.container.identity
        new_kid = await identity.rotate_signing_key()
        jwks = (await client.get("/.well-known/jwks.json")).json()["keys"]
        assert new_kid in {key["kid"] for key in jwks}
        assert len(jwks) == 2
        assert all(set(key) >= {"kty", "crv", "x", "kid", "alg"} and "d" not in key for key in jwks)
        old = await client.get("/api/v1/me", headers=_bearer(tokens["access_token"]))
        assert old.status_code == 200
        fresh = await _refresh(client, tokens["refresh_token"])
        import jwt

        assert jwt.get_unverified_header(fresh.json()["access_token"])["kid"] == new_kid
