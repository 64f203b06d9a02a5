"""Request deadlines: the context variable, nesting, the header in and out, the middleware,
and the 503 problem a refused dependency call becomes."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from ironcart.platform.http.problems import install_problem_handlers
from ironcart.platform.resilience import (
    DEADLINE_HEADER,
    CircuitOpen,
    DeadlineMiddleware,
    deadline_scope,
    outbound_deadline_headers,
    remaining_seconds,
)
from ironcart.platform.resilience.deadline import parse_deadline_ms

pytestmark = pytest.mark.anyio


def test_without_a_deadline_nothing_is_left_to_count_or_send() -> None:
    assert remaining_seconds() is None
    assert outbound_deadline_headers() == {}


def test_a_nested_scope_keeps_the_earlier_deadline() -> None:
    with deadline_scope(1.0):
        with deadline_scope(60.0):
            outer_wins = remaining_seconds()
        with deadline_scope(0.2):
            inner_wins = remaining_seconds()
        after = remaining_seconds()
    assert outer_wins is not None
    assert inner_wins is not None
    assert after is not None

    assert 0.9 < outer_wins <= 1.0
    assert 0.1 < inner_wins <= 0.2
    assert 0.9 < after <= 1.0
    assert remaining_seconds() is None


def test_the_outbound_header_carries_the_remaining_milliseconds() -> None:
    with deadline_scope(2.5):
        sent = int(outbound_deadline_headers()[DEADLINE_HEADER])

    assert 2400 < sent <= 2500


async def test_the_deadline_passes_and_the_header_never_goes_negative() -> None:
    with deadline_scope(0.01):
        await asyncio.sleep(0.03)
        left = remaining_seconds()
        header = outbound_deadline_headers()

    assert left is not None
    assert left < 0
    assert header == {DEADLINE_HEADER: "0"}


async def test_each_task_sees_its_own_deadline() -> None:
    async def left_in(seconds: float) -> float | None:
        with deadline_scope(seconds):
            await asyncio.sleep(0.01)
            return remaining_seconds()

    short, long = await asyncio.gather(left_in(0.5), left_in(5.0))
    assert short is not None
    assert long is not None

    assert short < 0.5 < 4.9 < long


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        pytest.param(b"1500", 1.5, id="milliseconds"),
        pytest.param(b" 250 ", 0.25, id="spaces"),
        pytest.param(b"0", 0.0, id="none-left"),
        pytest.param(b"99999999999", None, id="too-long"),
        pytest.param(b"-5", None, id="negative"),
        pytest.param(b"1.5", None, id="fraction"),
        pytest.param(b"soon", None, id="text"),
        pytest.param(None, None, id="absent"),
        pytest.param(b"9000000000", 3600.0, id="capped-at-an-hour"),
    ],
)
def test_the_header_value_is_parsed_strictly(raw: bytes | None, seconds: float | None) -> None:
    assert parse_deadline_ms(raw) == seconds


def _app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/left")
    async def left(_request: Request) -> Response:
        return Response(orjson.dumps({"left": remaining_seconds()}))

    @app.get("/refused")
    async def refused() -> Response:
        raise CircuitOpen("psp is failing", dependency="psp", retry_after_seconds=4)

    @app.post("/api/v1/orders")
    async def checkout() -> Response:
        return Response(orjson.dumps({"left": remaining_seconds()}))

    app.add_middleware(
        DeadlineMiddleware, default_seconds=30.0, routes={"POST /api/v1/orders": 1.5}
    )
    return app


async def _get(
    path: str, headers: dict[str, str] | None = None, *, method: str = "GET"
) -> httpx.Response:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
        return await client.request(method, path, headers=headers)


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        pytest.param({}, 29.0, 30.0, id="server-bound"),
        pytest.param({DEADLINE_HEADER: "2000"}, 1.9, 2.0, id="caller-asks-less"),
        pytest.param({DEADLINE_HEADER: "90000"}, 29.0, 30.0, id="caller-asks-more"),
        pytest.param({DEADLINE_HEADER: "garbage"}, 29.0, 30.0, id="garbage-ignored"),
    ],
)
async def test_the_middleware_gives_each_request_the_smaller_deadline(
    headers: dict[str, str], low: float, high: float
) -> None:
    response = await _get("/left", headers)

    assert response.status_code == 200
    assert low < response.json()["left"] <= high


async def test_a_refused_dependency_call_is_a_503_problem_with_retry_after() -> None:
    response = await _get("/refused")

    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "4"
    body = response.json()
    assert body["type"] == "urn:ironcart:problem:resilience.circuit_open"
    assert body["dependency"] == "psp"
    assert body["detail"] == "psp is failing"


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        pytest.param({}, 1.4, 1.5, id="route-bound"),
        pytest.param({DEADLINE_HEADER: "800"}, 0.7, 0.8, id="caller-asks-less"),
        pytest.param({DEADLINE_HEADER: "5000"}, 1.4, 1.5, id="caller-asks-more"),
    ],
)
async def test_a_route_may_have_a_tighter_deadline(
    headers: dict[str, str], low: float, high: float
) -> None:
    response = await _get("/api/v1/orders", headers, method="POST")

    assert response.status_code == 200
    assert low < response.json()["left"] <= high


def test_route_deadlines_are_validated_and_normalised() -> None:
    from pydantic import ValidationError

    from ironcart.platform.settings import ResilienceSettings

    assert ResilienceSettings(route_deadlines={"post /api/v1/orders": 2.0}).route_deadlines == {
        "POST /api/v1/orders": 2.0
    }
    with pytest.raises(ValidationError, match="METHOD /path"):
        ResilienceSettings(route_deadlines={"/api/v1/orders": 2.0})
