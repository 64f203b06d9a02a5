"""`ServiceClient` against a small real HTTP service (uvicorn on a free port) that fails on
purpose: transient failures are retried only for idempotent calls, a domain 503 is the
target's answer (re-raised at once, not retried), and every call carries the token, the
request id and the deadline."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ironcart.payments.domain import PaymentProviderUnavailable
from ironcart.platform.http.service import ClientCredentialsTokens, ServiceClient
from ironcart.platform.observability import bind_request_id
from ironcart.platform.resilience import DependencyUnavailable, Policy, PolicyConfig
from ironcart.platform.settings import ServiceEndpoint
from tests.support.services import serving

pytestmark = pytest.mark.anyio

FAILURES_BEFORE_SUCCESS = 2


@dataclass
class Flaky:
    """Answers 503 to the first FAILURES_BEFORE_SUCCESS calls of each path, then 200."""

    calls: dict[str, int] = field(default_factory=dict)
    headers: list[dict[str, str]] = field(default_factory=list)

    async def flaky(self, request: Request) -> Response:
        path = request.url.path
        self.calls[path] = self.calls.get(path, 0) + 1
        self.headers.append(dict(request.headers))
        if self.calls[path] <= FAILURES_BEFORE_SUCCESS:
            return Response("upstream hiccup", status_code=503)
        return JSONResponse({"ok": True, "calls": self.calls[path]})

    async def provider_down(self, request: Request) -> Response:
        path = request.url.path
        self.calls[path] = self.calls.get(path, 0) + 1
        body = {
            "type": "urn:ironcart:problem:payments.provider_unavailable",
            "title": "The payment provider is unavailable",
            "status": 503,
            "detail": "The payment provider cannot be reached; retry.",
        }
        return Response(
            orjson.dumps(body),
            status_code=503,
            media_type="application/problem+json",
            headers={"Retry-After": "5"},
        )


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[Flaky, ServiceClient]]:
    state = Flaky()
    app = Starlette(
        routes=[
            Route("/flaky/{name}", state.flaky, methods=["GET", "POST", "PUT"]),
            Route("/down", state.provider_down, methods=["PUT"]),
        ]
    )

    async def fixed_token() -> tuple[str, int]:
        return "service-token", 900

    async with serving(app) as url:
        policy = Policy(f"flaky-{uuid.uuid4().hex[:6]}", PolicyConfig(max_attempts=3))
        client = ServiceClient(
            "flaky",
            ServiceEndpoint(url=url),
            tokens=ClientCredentialsTokens(fixed_token),
            policy=policy,
        )
        try:
            yield state, client
        finally:
            await client.aclose()


@pytest.mark.parametrize(
    ("method", "key"),
    [
        pytest.param("GET", None, id="GET"),
        pytest.param("PUT", None, id="PUT"),
        pytest.param("POST", "order-1-refund", id="POST-with-idempotency-key"),
    ],
)
async def test_idempotent_calls_are_retried_through_transient_failures(
    flaky: tuple[Flaky, ServiceClient], method: str, key: str | None
) -> None:
    state, client = flaky

    answer = await client.request(method, "/flaky/a", idempotency_key=key)

    assert answer == {"ok": True, "calls": FAILURES_BEFORE_SUCCESS + 1}
    assert state.calls == {"/flaky/a": FAILURES_BEFORE_SUCCESS + 1}


async def test_a_post_without_idempotency_key_is_tried_once(
    flaky: tuple[Flaky, ServiceClient],
) -> None:
    state, client = flaky

    with pytest.raises(DependencyUnavailable):
        await client.request("POST", "/flaky/b", json={"sku": "A"})

    assert state.calls == {"/flaky/b": 1}


async def test_a_domain_503_is_the_targets_answer_not_retried(
    flaky: tuple[Flaky, ServiceClient],
) -> None:
    state, client = flaky

    with pytest.raises(PaymentProviderUnavailable) as raised:
        await client.request("PUT", "/down")

    assert state.calls == {"/down": 1}
    assert raised.value.detail == "The payment provider cannot be reached; retry."
    assert raised.value.headers == {"Retry-After": "5"}


async def test_every_call_carries_token_request_id_and_deadline(
    flaky: tuple[Flaky, ServiceClient],
) -> None:
    state, client = flaky
    bind_request_id("req-service-client-1")

    try:
        await client.request("PUT", "/flaky/c")
    finally:
        bind_request_id(None)

    assert len(state.headers) == FAILURES_BEFORE_SUCCESS + 1
    for headers in state.headers:
        assert headers["authorization"] == "Bearer service-token"
        assert headers["x-request-id"] == "req-service-client-1"
        assert 0 < int(headers["x-request-deadline-ms"]) <= 5000
