"""One checkout is one trace and one request id, across the shop and the PSP process.

The shop runs in this process (its spans in an `InMemorySpanExporter`), the sandbox PSP as
its own process writing its spans to a jsonl file and its logs to stderr. The client sends
a `traceparent` and an `X-Request-ID`, as a caller upstream (nginx, another service) would.
"""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.app import running_app, settings_for
from tests.support.http_wiring import IN_PROCESSES, OVER_HTTP
from tests.support.shop import customer, key, order_payload, staffer, stocked_product
from tests.support.tracing import (
    Span,
    by_trace,
    descends_from,
    load_spans,
    running_traced_psp,
    spans_of,
)

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

# Who calls the PSP: the shop's one app, or (IRONCART_TEST_WIRING=http) its payments service,
# whose server span the checkout's call to it opened.
PSP_CALLER = "ironcart-payments" if OVER_HTTP else "ironcart-all"
BETWEEN_SERVICES = ("/internal/", "/.well-known/jwks.json", "/api/v1/auth/token")


class Checkout:
    """What one traced checkout left behind in both processes."""

    def __init__(self, trace_id: str, caller_span_id: str, request_id: str) -> None:
        self.trace_id = trace_id
        self.caller_span_id = caller_span_id
        self.request_id = request_id
        self.status = 0
        self.shop_spans: list[Span] = []
        self.psp_spans: list[Span] = []
        self.shop_logs: list[dict[str, Any]] = []
        self.psp_logs: list[dict[str, Any]] = []

    @property
    def trace(self) -> list[Span]:
        return by_trace(self.shop_spans + self.psp_spans).get(self.trace_id, [])

    @property
    def server_span(self) -> Span:
        [span] = [s for s in self.shop_spans if s["name"] == "POST /api/v1/orders"]
        return span

    def spans(self, kind: str, service: str) -> list[Span]:
        return [s for s in self.trace if s["kind"] == kind and s["service"] == service]


@pytest.fixture
async def checkout(postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Checkout:
    done = Checkout(secrets.token_hex(16), secrets.token_hex(8), f"checkout-{uuid.uuid4().hex}")
    exporter = InMemorySpanExporter()
    services_spans = tmp_path / "services-spans.jsonl"
    async with running_traced_psp(tmp_path, tmp_path / "psp-spans.jsonl") as psp:
        payments = {"psp_url": psp.url, "psp_api_key": psp.api_key, "webhook_secret": psp.secret}
        # With IRONCART_TEST_WIRING=processes the contexts' processes append their spans here.
        tracing = {
            "enabled": True,
            "exporter": "jsonl",
            "jsonl_path": str(services_spans),
            "export_interval_seconds": 0.1,
        }
        settings = settings_for(postgres_url, payments=payments, tracing=tracing)
        async with running_app(settings, shipping_zones=True) as (app, client):
            # With IRONCART_TEST_WIRING=http each context is an app of its own: its spans too.
            for traced in (app, *app.state.contexts.values()):
                traced.state.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
            staff = await staffer(app, client)
            sku = await stocked_product(app, client, staff, units=3)
            buyer = await customer(client)
            exporter.clear()
            caplog.clear()
            headers = {
                **buyer,
                **key(),
                "traceparent": f"00-{done.trace_id}-{done.caller_span_id}-01",
                "X-Request-ID": done.request_id,
            }
            response = await client.post(
                "/api/v1/orders", json=order_payload([(sku, 1)]), headers=headers
            )
            assert response.status_code == 201, response.text
            assert response.headers["x-request-id"] == done.request_id
            done.shop_spans = spans_of(exporter)
            done.shop_logs = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    if IN_PROCESSES:  # the services have stopped: their last spans are exported
        # The file holds this process's spans too (the same settings): one of each span.
        everyone = done.shop_spans + load_spans(services_spans)
        done.shop_spans = list({span["span_id"]: span for span in everyone}.values())
    # The PSP has stopped: its last spans are exported and its log is complete.
    done.psp_spans = load_spans(tmp_path / "psp-spans.jsonl")
    done.psp_logs = psp.server.log_records()
    return done


async def test_one_checkout_is_one_trace_and_one_request_id_in_both_processes(
    checkout: Checkout,
) -> None:
    # One process's run takes ~8 s (a PSP process, an app, a checkout): one test, four claims.
    _the_shop_continues_the_callers_trace(checkout)
    _the_calls_to_the_psp_are_children_of_the_checkout(checkout)
    _the_psp_serves_those_calls_in_the_same_trace(checkout)
    _both_processes_log_the_one_request_id(checkout)


def _the_shop_continues_the_callers_trace(checkout: Checkout) -> None:
    server = checkout.server_span

    assert server["kind"] == "SERVER"
    assert server["service"] == "ironcart-all"
    assert server["trace_id"] == checkout.trace_id
    assert server["parent_id"] == checkout.caller_span_id
    assert server["attributes"]["http.route"] == "/api/v1/orders"


def _the_calls_to_the_psp_are_children_of_the_checkout(checkout: Checkout) -> None:
    server = checkout.server_span
    calls = checkout.spans("CLIENT", PSP_CALLER)

    assert len(calls) >= 2  # authorize, then capture
    assert all(descends_from(call, server, checkout.trace) for call in calls)
    assert {call["name"] for call in calls} == {"POST"}


def _the_psp_serves_those_calls_in_the_same_trace(checkout: Checkout) -> None:
    calls = checkout.spans("CLIENT", PSP_CALLER)
    served = checkout.spans("SERVER", "ironcart-sandbox-psp")

    assert sorted(span["parent_id"] for span in served) == sorted(c["span_id"] for c in calls)
    assert {span["name"] for span in served} >= {
        "POST /v1/payments",
        "POST /v1/payments/{payment_id}/capture",
    }
    # Every span of the PSP in this trace is one of those calls: nothing came loose.
    psp_in_trace = [s for s in checkout.trace if s["service"] == "ironcart-sandbox-psp"]
    assert psp_in_trace == served


def _both_processes_log_the_one_request_id(checkout: Checkout) -> None:
    served = checkout.spans("SERVER", "ironcart-sandbox-psp")
    psp_lines = [r for r in checkout.psp_logs if r.get("request_id") == checkout.request_id]
    shop_lines = [r for r in checkout.shop_logs if r.get("trace_id") == checkout.trace_id]

    assert len(psp_lines) == len(served)
    assert {line["span_id"] for line in psp_lines} == {span["span_id"] for span in served}
    assert {line["trace_id"] for line in psp_lines} == {checkout.trace_id}
    # One request from outside; with IRONCART_TEST_WIRING=http the services also log what they
    # serve each other in this trace: internal calls, the keys and a client-credentials token.
    outside = [r for r in shop_lines if not r.get("path", "").startswith(BETWEEN_SERVICES)]
    assert [r["event"] for r in outside if r["event"] == "request"] == ["request"]
    assert {line.get("request_id") for line in shop_lines} == {checkout.request_id}
