"""Tracing: settings, the jsonl exporter, the server span, and what outbound calls carry."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.http import ExcludeList
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ironcart.app import create_app
from ironcart.platform import tracing
from ironcart.platform.observability import add_trace_ids, bind_request_id
from ironcart.platform.settings import Settings, TracingSettings, load_settings
from ironcart.platform.tracing import (
    JsonLinesSpanExporter,
    add_tracing_middleware,
    build_tracer_provider,
    configure_tracing,
    instrument_httpx_client,
    shutdown_tracing,
    tracing_settings_from_env,
)
from tests.support.tracing import by_trace, descends_from, load_spans, spans_of

pytestmark = pytest.mark.anyio


def _settings(**tracing_settings: Any) -> Settings:
    return load_settings(
        database_url="sqlite:///unused.db", environment="test", tracing=tracing_settings
    )


@pytest.fixture
def traced() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """Tracing on for this process (as `configure_tracing` does it), spans kept in memory."""
    provider = configure_tracing(_settings(enabled=True), service="test")
    assert provider is not None
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    shutdown_tracing(provider)


async def _echo_headers(request: Request) -> JSONResponse:
    return JSONResponse(dict(request.headers.items()))


def _echo_client() -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/echo", _echo_headers)])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://peer")


# settings


def test_tracing_is_off_by_default_and_then_adds_no_middleware() -> None:
    settings = _settings()

    assert settings.tracing.enabled is False
    assert configure_tracing(settings, service="catalog") is None
    app = create_app(settings, service="catalog")
    assert app.state.tracer_provider is None
    assert "OpenTelemetryMiddleware" not in {m.cls.__name__ for m in app.user_middleware}


def test_the_jsonl_exporter_needs_a_path() -> None:
    with pytest.raises(ValueError, match="jsonl_path"):
        TracingSettings(enabled=True, exporter="jsonl")


def test_sandboxes_read_their_tracing_from_the_environment(tmp_path: Path) -> None:
    environ = {
        "IRONCART_TRACING__ENABLED": "true",
        "IRONCART_TRACING__EXPORTER": "jsonl",
        "IRONCART_TRACING__JSONL_PATH": str(tmp_path / "spans.jsonl"),
        "IRONCART_TRACING__SAMPLE_RATIO": "0.25",
        "IRONCART_LOG_LEVEL": "debug",
    }

    tracing_settings = tracing_settings_from_env(environ)

    assert tracing_settings == TracingSettings(
        enabled=True, exporter="jsonl", jsonl_path=tmp_path / "spans.jsonl", sample_ratio=0.25
    )
    assert tracing_settings_from_env({}) == TracingSettings()


# the jsonl exporter


def test_the_jsonl_exporter_writes_one_json_span_a_line(tmp_path: Path) -> None:
    path = tmp_path / "spans" / "all.jsonl"
    settings = TracingSettings(enabled=True, exporter="jsonl", jsonl_path=path)
    provider = build_tracer_provider(settings, service="ordering")
    assert provider is not None
    tracer = provider.get_tracer("test")

    with (
        tracer.start_as_current_span("checkout") as parent,
        tracer.start_as_current_span("reserve"),
    ):
        pass
    provider.shutdown()  # exports the batch

    child, root = load_spans(path)
    assert (root["name"], child["name"]) == ("checkout", "reserve")
    assert (
        root["trace_id"] == child["trace_id"] == format(parent.get_span_context().trace_id, "032x")
    )
    assert len(root["span_id"]) == 16
    assert (root["parent_id"], child["parent_id"]) == (None, root["span_id"])
    assert {root["service"], child["service"]} == {"ironcart-ordering"}
    assert root["kind"] == "INTERNAL"
    assert root["end_ns"] >= child["end_ns"] >= child["start_ns"] >= root["start_ns"]


def test_processes_sharing_a_file_append_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    providers = [TracerProvider(), TracerProvider()]
    for provider in providers:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))

    for index in range(50):
        providers[index % 2].get_tracer("test").start_span(f"span-{index}").end()
    for provider in providers:
        provider.shutdown()

    assert sorted(span["name"] for span in load_spans(path)) == sorted(
        f"span-{index}" for index in range(50)
    )


def test_an_exporter_shut_down_exports_nothing_more(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    exporter = JsonLinesSpanExporter(path)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.get_tracer("test").start_span("before").end()

    exporter.shutdown()
    provider.get_tracer("test").start_span("after").end()

    assert [span["name"] for span in load_spans(path)] == ["before"]


# the server span


def _traced_app(provider: TracerProvider) -> Starlette:
    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"]})

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/items/{item_id}", item), Route("/healthz", healthz)])
    add_tracing_middleware(app, provider)
    return app


async def test_the_server_span_continues_an_incoming_traceparent(
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = traced
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    transport = httpx.ASGITransport(app=_traced_app(provider))

    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        response = await client.get(
            "/items/42", headers={"traceparent": f"00-{trace_id}-{caller}-01"}
        )

    assert response.status_code == 200
    [span] = spans_of(exporter)
    assert (span["trace_id"], span["parent_id"]) == (trace_id, caller)
    assert (span["name"], span["kind"]) == ("GET /items/{item_id}", "SERVER")
    assert span["attributes"]["http.route"] == "/items/{item_id}"


async def test_a_request_without_traceparent_starts_a_trace_and_probes_start_none(
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = traced
    transport = httpx.ASGITransport(app=_traced_app(provider))

    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/items/7")).status_code == 200

    [span] = spans_of(exporter)
    assert (span["name"], span["parent_id"]) == ("GET /items/{item_id}", None)


async def test_sampling_keeps_what_the_caller_sampled_and_samples_new_traces_by_ratio() -> None:
    provider = build_tracer_provider(TracingSettings(enabled=True, sample_ratio=0), service="t")
    assert provider is not None
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    transport = httpx.ASGITransport(app=_traced_app(provider))

    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        await client.get("/items/1")  # a new trace, ratio 0: not sampled
        await client.get("/items/2", headers={"traceparent": f"00-{trace_id}-{caller}-01"})
        await client.get("/items/3", headers={"traceparent": f"00-{trace_id}-{caller}-00"})
    provider.shutdown()

    assert [(s["trace_id"], s["parent_id"]) for s in spans_of(exporter)] == [(trace_id, caller)]


@pytest.mark.parametrize(
    ("url", "untraced"),
    [
        ("http://shop/healthz", True),
        ("http://10.0.0.1:8000/readyz", True),
        ("https://shop/metrics", True),
        ("http://shop/api/v1/products/metrics", False),
        ("http://shop/api/v1/orders", False),
    ],
    ids=["healthz", "readyz", "metrics", "product-named-metrics", "orders"],
)
def test_only_the_probes_are_untraced(url: str, untraced: bool) -> None:
    assert isinstance(tracing.UNTRACED_PATHS, ExcludeList)
    assert tracing.UNTRACED_PATHS.url_disabled(url) is untraced


# outbound calls


async def test_an_outbound_call_carries_the_trace_and_the_request_id(
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = traced
    client = _echo_client()
    instrument_httpx_client(client)

    bind_request_id("req-123")
    try:
        with provider.get_tracer("test").start_as_current_span("handler"):
            echoed = (await client.get("/echo")).json()
    finally:
        bind_request_id(None)
        await client.aclose()

    spans = spans_of(exporter)
    [handler] = [s for s in spans if s["name"] == "handler"]
    [call] = [s for s in spans if s["kind"] == "CLIENT"]
    version, trace_id, parent_id, flags = echoed["traceparent"].split("-")
    assert (version, trace_id, parent_id) == ("00", handler["trace_id"], call["span_id"])
    assert int(flags, 16) & 1  # sampled
    assert echoed["x-request-id"] == "req-123"
    assert descends_from(call, handler, spans)
    assert list(by_trace(spans)) == [handler["trace_id"]]


async def test_an_explicit_request_id_is_kept_and_none_is_invented() -> None:
    client = _echo_client()
    instrument_httpx_client(client)

    try:
        outside_a_request = (await client.get("/echo")).json()
        bind_request_id("req-456")
        explicit = (await client.get("/echo", headers={"X-Request-ID": "mine"})).json()
    finally:
        bind_request_id(None)
        await client.aclose()

    assert "x-request-id" not in outside_a_request
    assert explicit["x-request-id"] == "mine"


async def test_with_tracing_off_only_the_request_id_travels() -> None:
    assert tracing._active is None  # no traced app or fixture left tracing on
    client = _echo_client()
    instrument_httpx_client(client)

    bind_request_id("req-789")
    try:
        echoed = (await client.get("/echo")).json()
    finally:
        bind_request_id(None)
        await client.aclose()

    assert echoed["x-request-id"] == "req-789"
    assert "traceparent" not in echoed


# logs


def test_log_lines_carry_the_current_trace_and_span_ids(
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, _ = traced
    outside = add_trace_ids(None, "info", {"event": "outside"})

    with provider.get_tracer("test").start_as_current_span("work") as span:
        inside = add_trace_ids(None, "info", {"event": "inside"})

    context = span.get_span_context()
    assert outside == {"event": "outside"}
    assert inside == {
        "event": "inside",
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }


def test_the_log_processor_is_configured() -> None:
    assert add_trace_ids in structlog.get_config()["processors"]
