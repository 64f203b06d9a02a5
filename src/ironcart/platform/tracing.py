"""OpenTelemetry traces across services: W3C `traceparent` in and out, one trace per checkout.

Off by default (`IRONCART_TRACING__ENABLED=true` turns it on). Off, no middleware is added
and no client gets spans, so no request pays for tracing. On:

- `configure_tracing` builds this process's `TracerProvider`: resource
  `service.name=ironcart-<service>`, head sampling `ParentBased(TraceIdRatioBased(ratio))`
  (a request that arrives with a sampled `traceparent` stays sampled), spans batched to
  the configured exporter; log lines then carry `trace_id` and `span_id`.
- `add_tracing_middleware` wraps the app in `OpenTelemetryMiddleware`: it reads an incoming
  `traceparent` and opens the server span, named by route template. The probes (/healthz,
  /readyz, /metrics) are not traced.
- `instrument_httpx_client` makes an outbound client pass the request id on (`X-Request-ID`,
  tracing on or off) and, tracing on, open a client span and send `traceparent`, so the
  next service continues the same trace.
- `JsonLinesSpanExporter` appends one JSON object per span to a file. Several processes
  may share the file (one `O_APPEND` write per batch); tests/support/tracing.py reads it.

The provider is handed around explicitly instead of being installed as OpenTelemetry's
process-global one, which can be set only once per process: several apps in one test
process each keep their own. `instrument_httpx_client` uses the provider that
`configure_tracing` made most recently (clients are built after it, in the lifespan).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.util.http import ExcludeList
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ironcart.platform.http.middleware import RequestContextMiddleware
from ironcart.platform.observability import (
    configure_logging,
    current_request_id,
    include_trace_ids_in_logs,
)
from ironcart.platform.settings import Settings, TracingSettings

# Matched against scheme://host/path: the probes are polled every few seconds, never traced.
UNTRACED_PATHS = ExcludeList([r"^[a-z]+://[^/]+/(healthz|readyz|metrics)/?$"])
_ENV_PREFIX = "IRONCART_TRACING__"
_active: TracerProvider | None = None


def configure_tracing(settings: Settings, *, service: str) -> TracerProvider | None:
    """This process's tracer provider for `service` ("all", "catalog", ...), None when off."""
    provider = build_tracer_provider(settings.tracing, service=service)
    if provider is not None:
        _activate(provider)
    return provider


def build_tracer_provider(tracing: TracingSettings, *, service: str) -> TracerProvider | None:
    """A provider for `ironcart-<service>` exporting as `tracing` says; None when off."""
    if not tracing.enabled:
        return None
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: f"ironcart-{service}"}),
        sampler=ParentBased(TraceIdRatioBased(tracing.sample_ratio)),
    )
    exporter = _exporter(tracing)
    if exporter is not None:
        delay_ms = int(tracing.export_interval_seconds * 1000)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=delay_ms))
    return provider


def shutdown_tracing(provider: TracerProvider | None) -> None:
    """Export what is pending and stop `provider` (a no-op for None: tracing off)."""
    global _active  # the provider of the process, as `configure_tracing` set it
    if provider is None:
        return
    provider.shutdown()
    if _active is provider:
        _active = None


def add_tracing_middleware(app: Starlette, provider: TracerProvider) -> None:
    """Trace every request but the probes; add it last, so that its span is the outermost."""
    app.add_middleware(_NameSpanByRoute)
    app.add_middleware(
        OpenTelemetryMiddleware,
        tracer_provider=provider,
        excluded_urls=UNTRACED_PATHS,
        exclude_spans=["receive", "send"],  # one span a request, not one per ASGI message
    )


def instrument_httpx_client(client: httpx.AsyncClient) -> None:
    """Pass the request id on and, when tracing, the trace context with a client span."""
    hooks = client.event_hooks
    client.event_hooks = {**hooks, "request": [*hooks.get("request", []), _send_request_id]}
    if _active is not None:
        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=_active)


def trace_sandbox(app: Starlette, *, service: str) -> Starlette:
    """A sandbox app, traced and logging request ids when `IRONCART_TRACING__*` asks for it."""
    tracing = tracing_settings_from_env(os.environ)
    provider = build_tracer_provider(tracing, service=service)
    if provider is None:
        return app
    _activate(provider)
    # JSON lines with the request id and trace id of every call, as IronCart's own logs.
    configure_logging(level="info", json=True)
    app.add_middleware(RequestContextMiddleware)
    add_tracing_middleware(app, provider)
    return app


def tracing_settings_from_env(environ: Mapping[str, str]) -> TracingSettings:
    """`TracingSettings` from `IRONCART_TRACING__<FIELD>` variables (for the sandboxes)."""
    values = {
        name.removeprefix(_ENV_PREFIX).lower(): value
        for name, value in environ.items()
        if name.startswith(_ENV_PREFIX)
    }
    return TracingSettings.model_validate(values)


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as a flat JSON-able dict, ids in hex as in `traceparent`."""
    context = span.get_span_context()
    if context is None:  # pragma: no cover - the SDK's spans always have one
        raise ValueError("a span without a context")
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get(SERVICE_NAME),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends each span to `path` as one JSON object a line (`span_record`)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = b"".join(orjson.dumps(span_record(span)) + b"\n" for span in spans)
        with self._lock:
            if self._fd is None:
                return SpanExportResult.FAILURE
            try:
                os.write(self._fd, data)  # one append: lines of processes never interleave
            except OSError:
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # every export is written through


class _NameSpanByRoute:
    """Names the server span `METHOD /route/{template}` once routing has matched: at the
    response's start, since the span ends with the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        span = trace.get_current_span()
        named = False

        async def send_named(message: Message) -> None:
            nonlocal named
            if not named and message["type"] == "http.response.start":
                named = _name_span(span, scope)
            await send(message)

        try:
            await self.app(scope, receive, send_named)
        finally:
            if not named:
                _name_span(span, scope)


def _name_span(span: trace.Span, scope: Scope) -> bool:
    template = scope.get("ironcart.route") or getattr(scope.get("route"), "path", None)
    if template:
        span.update_name(f"{scope['method']} {template}")
        span.set_attribute("http.route", template)
    return True


async def _send_request_id(request: httpx.Request) -> None:
    request_id = current_request_id()
    if request_id is not None and "x-request-id" not in request.headers:
        request.headers["X-Request-ID"] = request_id


def _exporter(tracing: TracingSettings) -> SpanExporter | None:
    if tracing.exporter == "jsonl" and tracing.jsonl_path is not None:
        return JsonLinesSpanExporter(tracing.jsonl_path)
    if tracing.exporter == "console":
        return ConsoleSpanExporter(
            formatter=lambda span: orjson.dumps(span_record(span)).decode() + "\n"
        )
    return None


def _activate(provider: TracerProvider) -> None:
    global _active  # the provider of the process, for clients built after it
    _active = provider
    include_trace_ids_in_logs()
