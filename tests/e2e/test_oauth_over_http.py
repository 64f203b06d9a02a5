"""OAuth2 and bearer-token checks against the real `ironcart serve` process, over TCP.

SQLite and PostgreSQL. Token expiry is not covered here: a real expiry needs either the
server's private key or a wait of at least the minimum TTL (60 s); the verifier's unit
tests cover it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.app import DEMO_PASSWORD
from tests.support.server import ServerProcess, running_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

PROBLEM = "application/problem+json"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest) -> str:
    """A fresh, migrated database (the conftest fixtures), on each backend in turn."""
    fixture = {"sqlite": "sqlite_url", "postgresql": "postgres_url"}[request.param]
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
async def server(backend_url: str, tmp_path: Path) -> AsyncIterator[ServerProcess]:
    async with running_server(backend_url, tmp_path) as process:
        yield process


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as client:
        yield client


def _email() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}@example.com"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _register_and_login(http: httpx.AsyncClient) -> dict[str, Any]:
    email = _email()
    registered = await http.post(
        "/api/v1/auth/register",
        json={"email": email, "password": DEMO_PASSWORD, "name": "E2E User"},
    )
    assert registered.status_code == 201, registered.text
    token = await http.post(
        "/api/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": DEMO_PASSWORD},
    )
    assert token.status_code == 200, token.text
    assert token.headers["cache-control"] == "no-store"
    body: dict[str, Any] = token.json()
    body["email"] = email
    return body


async def _refresh(http: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await http.post(
        "/api/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token}
    )


# -- the OAuth2 flow -----------------------------------------------------------------------------


async def test_password_grant_refresh_rotation_and_replay_revokes_family(
    http: httpx.AsyncClient,
) -> None:
    first = await _register_and_login(http)
    assert first["token_type"] == "Bearer"
    assert first["scope"] == "customer"

    me = await http.get("/api/v1/me", headers=_bearer(first["access_token"]))
    assert me.status_code == 200, me.text
    assert me.json()["email"] == first["email"]
    assert me.json()["roles"] == ["customer"]

    rotated_response = await _refresh(http, first["refresh_token"])
    assert rotated_response.status_code == 200, rotated_response.text
    rotated = rotated_response.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert (await http.get("/api/v1/me", headers=_bearer(rotated["access_token"]))).is_success

    replay = await _refresh(http, first["refresh_token"])
    assert replay.status_code == 400
    assert replay.headers["content-type"] == PROBLEM
    assert replay.json()["error"] == "invalid_grant"

    # The replay revoked the whole family: the newest refresh token is refused as well.
    newest = await _refresh(http, rotated["refresh_token"])
    assert newest.status_code == 400
    assert newest.json()["error"] == "invalid_grant"


# -- attacks on the bearer token -------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _segment(value: dict[str, Any]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode())


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return json.loads(_b64url_decode(header)), json.loads(_b64url_decode(payload)), signature


def _tampered(token: str) -> str:
    """The genuine token with one claim changed (more scope) and the original signature."""
    header, claims, signature = token.split(".")
    payload = json.loads(_b64url_decode(claims))
    payload["scope"] = "admin customer staff"
    return f"{header}.{_segment(payload)}.{signature}"


def _signed_by_foreign_key(claims: dict[str, Any], kid: str) -> str:
    """Valid claims, the server's real `kid`, but a signature by a key the server never had."""
    return jwt.encode(
        claims,
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": kid, "typ": "at+jwt"},
    )


def _alg_none(claims: dict[str, Any], kid: str) -> str:
    header = {"alg": "none", "typ": "at+jwt", "kid": kid}
    return f"{_segment(header)}.{_segment(claims)}."


def _hs256_with_public_key(claims: dict[str, Any], kid: str, public_key: bytes) -> str:
    """Key confusion: HMAC-SHA256 keyed with the server's published public key."""
    signing_input = f"{_segment({'alg': 'HS256', 'typ': 'at+jwt', 'kid': kid})}.{_segment(claims)}"
    mac = hmac.new(public_key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(mac)}"


async def _assert_refused(http: httpx.AsyncClient, token: str, detail_fragment: str) -> None:
    response = await http.get("/api/v1/me", headers=_bearer(token))
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert "Bearer" in challenge
    assert 'error="invalid_token"' in challenge
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == 401
    assert problem["type"] == "urn:ironcart:problem:auth.invalid_token"
    assert detail_fragment in problem["detail"]


async def test_forged_and_tampered_access_tokens_are_refused(http: httpx.AsyncClient) -> None:
    tokens = await _register_and_login(http)
    genuine = tokens["access_token"]
    header, claims, _signature = _parts(genuine)
    kid = header["kid"]
    assert (await http.get("/api/v1/me", headers=_bearer(genuine))).status_code == 200

    jwks = (await http.get("/.well-known/jwks.json")).json()["keys"]
    published = {key["kid"]: key for key in jwks}
    assert kid in published
    public_key = _b64url_decode(published[kid]["x"])
    assert len(public_key) == 32

    forged_claims = {**claims, "scope": "admin customer staff", "jti": uuid.uuid4().hex}
    await _assert_refused(http, _tampered(genuine), "The token is invalid.")
    await _assert_refused(http, _signed_by_foreign_key(forged_claims, kid), "The token is invalid.")
    await _assert_refused(
        http, _signed_by_foreign_key(forged_claims, uuid.uuid4().hex), "unknown key"
    )
    await _assert_refused(http, _alg_none(forged_claims, kid), "unaccepted algorithm")
    await _assert_refused(
        http, _hs256_with_public_key(forged_claims, kid, public_key), "unaccepted algorithm"
    )
    await _assert_refused(http, "not-a-jwt", "malformed")

    anonymous = await http.get("/api/v1/me")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert anonymous.headers["content-type"] == PROBLEM

    # None of the attempts disturbed the genuine token.
    assert (await http.get("/api/v1/me", headers=_bearer(genuine))).status_code == 200


# -- request ids ---------------------------------------------------------------------------------


async def test_request_id_is_echoed_and_logged(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    request_id = f"e2e-{uuid.uuid4().hex}"
    response = await http.get("/api/v1/me", headers={"X-Request-ID": request_id})
    assert response.status_code == 401
    assert response.headers["x-request-id"] == request_id
    assert response.json()["request_id"] == request_id

    logged = await server.wait_for_log(lambda record: record.get("request_id") == request_id)
    assert logged, f"no log line carries {request_id}:\n{server.stderr_text()}"
    access = [record for record in logged if record.get("event") == "request"]
    assert len(access) == 1
    assert access[0]["path"] == "/api/v1/me"
    assert access[0]["status"] == 401

    # An unacceptable id is replaced, not echoed (log injection).
    bad = await http.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert bad.headers["x-request-id"] != "bad id\twith spaces"
    assert len(bad.headers["x-request-id"]) == 32
