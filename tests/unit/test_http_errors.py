"""Every error is RFC 9457 problem+json with a stable type; nothing leaks; sizes are bounded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.app import DEMO_PASSWORD, running_app, settings_for

pytestmark = pytest.mark.anyio
PROBLEM = "application/problem+json"


@pytest.fixture
async def client(sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(sqlite_url, server={"max_body_bytes": 4096})
    async with running_app(settings) as (_app, http):
        yield http


def _assert_problem(response: httpx.Response, status: int, problem_type: str) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, object] = response.json()
    assert body["type"] == f"urn:ironcart:problem:{problem_type}"
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert isinstance(body["detail"], str)
    return body


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    _assert_problem(await client.get("/api/v1/nowhere"), 404, "not_found")


async def test_wrong_method_is_a_405_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/auth/register")
    _assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


async def test_unknown_fields_are_rejected_with_their_path(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": "a@example.com", "password": DEMO_PASSWORD, "name": "A", "role": "admin"},
    )
    body = _assert_problem(response, 422, "validation_error")
    assert body["errors"] == [
        {
            "field": "body.role",
            "message": "Extra inputs are not permitted",
            "code": "extra_forbidden",
        }
    ]


async def test_missing_and_oversized_fields_are_listed(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register", json={"email": "not-an-email", "name": "x" * 201}
    )
    body = _assert_problem(response, 422, "validation_error")
    fields = {error["field"] for error in body["errors"]}  # type: ignore[attr-defined]
    assert fields == {"body.email", "body.password", "body.name"}


async def test_malformed_json_is_a_validation_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register", content=b'{"email": ', headers={"content-type": "application/json"}
    )
    _assert_problem(response, 422, "validation_error")


async def test_weak_password_is_a_domain_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": "weak@example.com", "password": "short", "name": "Weak"},
    )
    _assert_problem(response, 422, "identity.weak_password")


async def test_declared_oversize_body_gets_413(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register", content=b"x" * 5000, headers={"content-type": "application/json"}
    )
    _assert_problem(response, 413, "content_too_large")


async def test_streamed_oversize_body_gets_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    response = await client.post(
        "/api/v1/auth/register", content=chunks(), headers={"content-type": "application/json"}
    )
    _assert_problem(response, 413, "content_too_large")


@pytest.mark.parametrize(
    ("data", "headers", "error"),
    [
        ({"grant_type": "magic"}, {}, "unsupported_grant_type"),
        ({"grant_type": "password"}, {}, "invalid_request"),
        (
            {"grant_type": "password", "username": "u@example.com", "password": "p"},
            {"content-type": "application/json"},
            "invalid_request",
        ),
        ({"grant_type": "refresh_token", "refresh_token": "nope"}, {}, "invalid_grant"),
        (
            {"grant_type": "client_credentials", "client_id": "x", "client_secret": "y"},
            {},
            "invalid_client",
        ),
        ({"grant_type": "client_credentials"}, {"authorization": "Basic !!!"}, "invalid_request"),
        (
            {
                "grant_type": "password",
                "username": "u@example.com",
                "password": "p",
                "scope": "BAD SCOPE",
            },
            {},
            "invalid_scope",
        ),
    ],
    ids=[
        "unsupported",
        "missing-params",
        "json-body",
        "bad-refresh",
        "bad-client",
        "bad-basic",
        "bad-scope",
    ],
)
async def test_token_endpoint_errors_follow_rfc_6749(
    client: httpx.AsyncClient, data: dict[str, str], headers: dict[str, str], error: str
) -> None:
    if headers.get("content-type") == "application/json":
        response = await client.post("/api/v1/auth/token", json=data, headers=headers)
    else:
        response = await client.post("/api/v1/auth/token", data=data, headers=headers)
    assert response.status_code == (401 if error == "invalid_client" else 400)
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["error"] == error
    assert response.json()["error_description"]


@pytest.mark.parametrize(
    ("authorization", "status"),
    [(None, 401), ("Basic abc", 401), ("Bearer ", 401), ("Bearer x.y.z", 401)],
    ids=["none", "basic", "empty", "garbage"],
)
async def test_protected_routes_say_how_to_authenticate(
    client: httpx.AsyncClient, authorization: str | None, status: int
) -> None:
    headers = {"authorization": authorization} if authorization else {}
    response = await client.get("/api/v1/me", headers=headers)
    assert response.status_code == status
    assert response.headers["www-authenticate"].startswith('Bearer realm="ironcart"')
    assert response.headers["content-type"] == PROBLEM


async def test_request_id_is_taken_or_made_and_echoed(client: httpx.AsyncClient) -> None:
    given = await client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    hostile = await client.get("/healthz", headers={"x-request-id": "<script>" + "x" * 300})
    assert hostile.headers["x-request-id"] != "<script>"
    assert len(hostile.headers["x-request-id"]) == 32
    problem = await client.get("/nowhere", headers={"x-request-id": "trace-me"})
    assert problem.json()["request_id"] == "trace-me"


async def test_unexpected_errors_are_a_bare_500(sqlite_url: str) -> None:
    async with running_app(settings_for(sqlite_url)) as (app, client):

        @app.get("/boom")
        async def boom() -> None:
            raise RuntimeError("secret internals: password=hunter2")

        response = await client.get("/boom")
    body = _assert_problem(response, 500, "internal_error")
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    assert body["request_id"] == response.headers["x-request-id"]


async def test_database_failures_are_a_503_without_details(tmp_path: Path) -> None:
    unmigrated = f"sqlite:///{tmp_path / 'empty.db'}"
    async with running_app(settings_for(unmigrated)) as (_app, client):
        response = await client.post(
            "/api/v1/auth/register",
            json={"email": "a@example.com", "password": DEMO_PASSWORD, "name": "A"},
        )
    _assert_problem(response, 503, "database_unavailable")
    assert response.headers["retry-after"] == "5"
    assert "identity_users" not in response.text
