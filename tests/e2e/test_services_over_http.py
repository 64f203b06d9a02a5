"""Every context as its own `ironcart serve --service <context>` process, talking over HTTP.

Seven processes on one PostgreSQL database and Redis, each told where the six others are
(`IRONCART_SERVICES__<CONTEXT>__URL`) and which service client it is (client-credentials
tokens from the identity service), with the sandbox PSP and carrier. A customer registers
(identity), staff list a product with stock (catalog, inventory), the customer fills a cart
(cart -> catalog + inventory), checks out (ordering -> cart, catalog, inventory, shipping,
payments) and the order is paid; staff ship it (shipping -> ordering); the customer's
cancel of a second paid order refunds it (ordering -> payments) and restocks it (ordering
-> inventory). The inventory and payments services' request logs show the internal calls
under the request id of the checkout that made them: the calls really crossed processes.
Every process is traced (spans appended to one jsonl file): the checkout is one trace, from
the caller's `traceparent` through ordering, cart, catalog, inventory, shipping and payments
to the PSP, and every service logs its part of it under the one request id.
A checkout short of stock (inventory's 409) and one with a declined card (payments' 402,
raised in the TCC try) reach the customer as they do with every context in one process.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ironcart.bootstrap import bootstrap
from ironcart.shipping.seed import seed_zones
from tests.support.app import settings_for
from tests.support.carrier import running_carrier
from tests.support.catalog import product_payload
from tests.support.psp import running_psp
from tests.support.server import ServerProcess, free_port, server_environment
from tests.support.services import CONTEXTS, running_services
from tests.support.shop import address
from tests.support.tracing import Span, by_trace, descends_from, load_spans, tracing_env

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

STAFF = "staff@services-e2e.example"
DEMO_PASSWORD = "ironcart-demo-password"
CARRIER_SECRET = "whsec_services_e2e_carrier"
DEADLINE_SECONDS = 10.0


@dataclass
class Shop:
    services: dict[str, ServerProcess]
    http: dict[str, httpx.AsyncClient]
    spans_path: Path

    def __getitem__(self, context: str) -> httpx.AsyncClient:
        return self.http[context]


async def _prepared(database_url: str) -> dict[str, str]:
    """A staff account, a warehouse, shipping zones; this deployment's service client (what
    `ironcart user create` / `seed` / `client create` do, without three more processes)."""
    container = bootstrap(settings_for(database_url))
    try:
        await container.identity.create_user(
            email=STAFF, password=DEMO_PASSWORD, name="Staff", roles=("staff",)
        )
        await container.inventory.create_warehouse(code="main", name="Main", priority=1)
        await seed_zones(container.shipping, currency=container.settings.catalog.currency)
        scopes = frozenset(f"service:{name}" for name in CONTEXTS)
        client_id, secret = await container.identity.create_client(name="e2e", scopes=scopes)
    finally:
        await container.aclose()
    return {"IRONCART_SERVICE_CLIENT_ID": client_id, "IRONCART_SERVICE_CLIENT_SECRET": secret}


@pytest.fixture
async def shop(postgres_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Shop]:
    credentials = await _prepared(postgres_url)
    ports = {"payments": free_port(), "shipping": free_port()}
    psp_hook = f"http://127.0.0.1:{ports['payments']}/api/v1/payments/webhooks/sandbox"
    carrier_hook = f"http://127.0.0.1:{ports['shipping']}/api/v1/shipping/webhooks/sandbox"
    spans_path = tmp_path / "spans.jsonl"  # every process's spans, one JSON object a line
    async with (
        running_psp(
            tmp_path, webhook_url=psp_hook, env=tracing_env(spans_path), log_level="info"
        ) as psp,
        running_carrier(tmp_path, webhook_url=carrier_hook, secret=CARRIER_SECRET) as carrier,
    ):
        env = server_environment(
            postgres_url,
            {
                "IRONCART_REDIS_URL": redis_url,
                "IRONCART_SERVER__GRACEFUL_SHUTDOWN_SECONDS": "3",
                **psp.shop_env(),
                "IRONCART_SHIPPING__CARRIER_URL": carrier.url,
                "IRONCART_SHIPPING__CARRIER_API_KEY": carrier.api_key,
                "IRONCART_SHIPPING__WEBHOOK_SECRETS": orjson.dumps(
                    {"sandbox": CARRIER_SECRET}
                ).decode(),
            },
        )
        env.update(credentials)
        env.update(tracing_env(spans_path))
        async with running_services(postgres_url, tmp_path, env=env, ports=ports) as services:
            clients = {
                name: httpx.AsyncClient(base_url=server.base_url, timeout=30)
                for name, server in services.items()
            }
            try:
                yield Shop(services, clients, spans_path)
            finally:
                for client in clients.values():
                    await client.aclose()


async def _token(shop: Shop, email: str, password: str) -> dict[str, str]:
    response = await shop["identity"].post(
        "/api/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": password},
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def _customer(shop: Shop) -> dict[str, str]:
    email = f"buyer-{uuid.uuid4().hex[:10]}@example.com"
    registered = await shop["identity"].post(
        "/api/v1/auth/register", json={"email": email, "password": DEMO_PASSWORD, "name": "B"}
    )
    assert registered.status_code == 201, registered.text
    return await _token(shop, email, DEMO_PASSWORD)


async def _stocked_product(shop: Shop, staff: dict[str, str], units: int) -> str:
    sku = f"SVC-{uuid.uuid4().hex[:10]}"
    created = await shop["catalog"].post(
        "/api/v1/products", json=product_payload(f"Service {sku}", sku=sku), headers=staff
    )
    assert created.status_code == 201, created.text
    received = await shop["inventory"].post(
        f"/api/v1/inventory/{sku}/adjustments",
        json={"warehouse": "main", "delta": units, "reason": "services e2e goods in"},
        headers=staff,
    )
    assert received.status_code == 200, received.text
    return sku


async def _filled_cart(shop: Shop, buyer: dict[str, str], sku: str, quantity: int) -> str:
    opened = await shop["cart"].post("/api/v1/carts", headers=buyer)
    assert opened.status_code in {200, 201}, opened.text
    cart_id: str = opened.json()["id"]
    added = await shop["cart"].post(
        f"/api/v1/carts/{cart_id}/items", json={"sku": sku, "quantity": quantity}, headers=buyer
    )
    assert added.status_code == 200, added.text
    return cart_id


async def _checkout(
    shop: Shop,
    buyer: dict[str, str],
    body: dict[str, Any],
    request_id: str,
    traceparent: str | None = None,
) -> dict[str, Any]:
    headers = {**buyer, "Idempotency-Key": str(uuid.uuid4()), "X-Request-ID": request_id}
    if traceparent is not None:
        headers["traceparent"] = traceparent
    body = {
        "shipping_address": address(),
        "shipping_method": "standard",
        "payment": {"card_token": "tok_visa"},
        **body,
    }
    response = await shop["ordering"].post("/api/v1/orders", json=body, headers=headers)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    assert order["status"] == "paid", order
    return order


async def _refused_checkout(
    shop: Shop, buyer: dict[str, str], lines: list[tuple[str, int]], card_token: str
) -> tuple[int, str]:
    body = {
        "lines": [{"sku": sku, "quantity": quantity} for sku, quantity in lines],
        "shipping_address": address(),
        "shipping_method": "standard",
        "payment": {"card_token": card_token},
    }
    headers = {**buyer, "Idempotency-Key": str(uuid.uuid4())}
    response = await shop["ordering"].post("/api/v1/orders", json=body, headers=headers)
    assert response.headers["content-type"] == "application/problem+json", response.text
    problem_type: str = response.json()["type"]
    return response.status_code, problem_type.removeprefix("urn:ironcart:problem:")


async def _until(read: Callable[[], Any], done: Callable[[Any], bool], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        value = await read()
        if done(value) or time.monotonic() > deadline:
            assert done(value), f"{what}: not within {DEADLINE_SECONDS} s; last seen {value}"
            return value
        await asyncio.sleep(0.1)


async def _available(shop: Shop, staff: dict[str, str], sku: str) -> int:
    response = await shop["inventory"].get(f"/api/v1/inventory/{sku}", headers=staff)
    assert response.status_code == 200, response.text
    available: int = response.json()["available"]
    return available


def _internal_calls(server: ServerProcess, request_id: str) -> list[str]:
    return sorted(
        f"{record['method']} {record['route']} {record['status']}"
        for record in server.log_records()
        if record.get("event") == "request"
        and record.get("request_id") == request_id
        and str(record.get("path", "")).startswith("/internal/v1/")
    )


async def _assert_refusals_reach_the_customer_as_in_one_process(
    shop: Shop, staff: dict[str, str], buyer: dict[str, str]
) -> None:
    sku = await _stocked_product(shop, staff, 2)

    short = await _refused_checkout(shop, buyer, [(sku, 3)], "tok_visa")
    declined = await _refused_checkout(shop, buyer, [(sku, 1)], "tok_decline")

    assert short == (409, "inventory.insufficient_stock")  # inventory's error, via ordering
    assert declined == (402, "payments.declined")  # payments' error through the TCC try
    assert await _available(shop, staff, sku) == 2  # the declined try's hold was released


async def test_checkout_ship_cancel_and_refusals_across_seven_services(shop: Shop) -> None:
    staff = await _token(shop, STAFF, DEMO_PASSWORD)
    buyer = await _customer(shop)
    sku = await _stocked_product(shop, staff, 10)
    cart_id = await _filled_cart(shop, buyer, sku, 2)
    checkout_id = f"e2e-checkout-{uuid.uuid4().hex[:12]}"
    trace_id, caller_span_id = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{caller_span_id}-01"

    order = await _checkout(shop, buyer, {"cart_id": cart_id}, checkout_id, traceparent)
    shipped = await shop["shipping"].post(
        f"/api/v1/orders/{order['id']}/shipments",
        json={"lines": [{"sku": sku, "quantity": 2}], "carrier": "sandbox"},
        headers={**staff, "X-Request-ID": f"{checkout_id}-ship"},
    )
    second = await _checkout(shop, buyer, {"lines": [{"sku": sku, "quantity": 3}]}, "e2e-second")
    cancelled = await shop["ordering"].post(
        f"/api/v1/orders/{second['id']}/cancel",
        json={"reason": "changed my mind"},
        headers={**buyer, "X-Request-ID": f"{checkout_id}-cancel"},
    )

    assert shipped.status_code == 201, shipped.text
    assert cancelled.status_code == 200, cancelled.text
    assert await _available(shop, staff, sku) == 8  # 10 - 2 shipped; the 3 came back
    await _until(
        lambda: shop["ordering"].get(f"/api/v1/orders/{order['id']}", headers=buyer),
        lambda response: response.json()["status"] == "fulfilled",
        "the shipped order fulfilled (shipping's event, relayed to ordering)",
    )
    refunded = await shop["ordering"].get(f"/api/v1/orders/{second['id']}", headers=buyer)
    assert refunded.json()["status"] in {"cancelled", "refunded"}, refunded.text
    assert _internal_calls(shop.services["inventory"], checkout_id) == [
        "POST /internal/v1/inventory/availability/check 204",
        "PUT /internal/v1/inventory/transactions/{xid}/confirm 204",
        "PUT /internal/v1/inventory/transactions/{xid}/try 200",
    ]
    assert _internal_calls(shop.services["payments"], checkout_id) == [
        "PUT /internal/v1/payments/transactions/{xid}/confirm 200",
        "PUT /internal/v1/payments/transactions/{xid}/try 200",
    ]
    assert "GET /internal/v1/cart/carts/{cart_id} 200" in _internal_calls(
        shop.services["cart"], checkout_id
    )
    assert _internal_calls(shop.services["ordering"], f"{checkout_id}-ship") == [
        "GET /internal/v1/ordering/orders/{order_id}/fulfilment 200",
        "POST /internal/v1/ordering/orders/{order_id}/fulfilment 200",
    ]
    assert "POST /internal/v1/payments/orders/{order_id}/refunds 201" in _internal_calls(
        shop.services["payments"], f"{checkout_id}-cancel"
    )
    assert _internal_calls(shop.services["inventory"], f"{checkout_id}-cancel") == [
        "PUT /internal/v1/inventory/transactions/{xid}/return 204"
    ]
    await _assert_one_trace_and_one_request_id(shop, trace_id, caller_span_id, checkout_id)
    _assert_each_service_relays_its_own_outbox(shop)
    await _assert_refusals_reach_the_customer_as_in_one_process(shop, staff, buyer)


def _assert_each_service_relays_its_own_outbox(shop: Shop) -> None:
    """Each service runs its own context's background jobs and relay, not everyone's."""
    relayed = {
        name: [
            record["outboxes"]
            for record in server.log_records()
            if record.get("event") == "outbox_relay_started"
        ]
        for name, server in shop.services.items()
    }
    assert relayed == {
        "identity": [],
        "catalog": [],
        "inventory": [["inventory_outbox"]],
        "cart": [],
        "ordering": [["ordering_outbox"]],
        "payments": [["payments_outbox"]],
        "shipping": [["shipping_outbox"]],
    }


TRACED_SERVICES = {
    "ordering",
    "cart",
    "catalog",
    "inventory",
    "shipping",
    "payments",
    "sandbox-psp",
}


async def _checkout_trace(shop: Shop, trace_id: str) -> list[Span]:
    """The checkout's spans, once every service in TRACED_SERVICES has exported its part
    (each exports a batch every 0.1 s)."""

    async def read() -> list[Span]:
        return by_trace(load_spans(shop.spans_path)).get(trace_id, [])

    def complete(spans: list[Span]) -> bool:
        serving = {s["service"] for s in spans if s["kind"] == "SERVER"}
        return serving >= {f"ironcart-{name}" for name in TRACED_SERVICES}

    spans: list[Span] = await _until(read, complete, "every service's spans of the checkout")
    return spans


async def _assert_one_trace_and_one_request_id(
    shop: Shop, trace_id: str, caller_span_id: str, request_id: str
) -> None:
    spans = await _checkout_trace(shop, trace_id)
    [root] = [s for s in spans if s["name"] == "POST /api/v1/orders"]
    by_id = {span["span_id"]: span for span in spans}

    assert (root["service"], root["kind"], root["parent_id"]) == (
        "ironcart-ordering",
        "SERVER",
        caller_span_id,  # ordering continued the caller's trace
    )
    assert all(descends_from(span, root, spans) for span in spans if span is not root)
    others = [s for s in spans if s["kind"] == "SERVER" and s is not root]
    # Every other service's span was opened by a client span of the process that called it.
    assert {by_id[s["parent_id"]]["kind"] for s in others} == {"CLIENT"}
    assert all(by_id[s["parent_id"]]["service"] != s["service"] for s in others)
    for name in TRACED_SERVICES - {"sandbox-psp"}:
        lines = [r for r in shop.services[name].log_records() if r.get("trace_id") == trace_id]
        assert lines, f"{name} logged nothing in the checkout's trace"
        assert {line.get("request_id") for line in lines} == {request_id}, name
