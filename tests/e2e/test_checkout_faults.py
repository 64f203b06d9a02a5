"""Checkout against a misbehaving PSP, over real processes, with events going out through NATS.

The sandbox PSP answers 30 % of calls with a 500 and delays 20 % of them by 2 s; its
webhooks are duplicated and held back to arrive out of order. Every checkout must end
within the stated deadline — paid (201), declined (402) or a clean 503 — and after the
recovery loop has run, the books must balance: each paid order has exactly one capture,
every other order has none and holds no stock, and the late, duplicated, reordered
webhooks change nothing. Each order's events reach a JetStream consumer once in effect.

Deadline: the PSP adapter bounds each call by `call_deadline_seconds` (here 6 s); a
checkout makes at most an authorize and a capture inside the request, so it answers in
under 2 x 6 s + 3 s of database work: 15 s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import nats
import pytest

from ironcart.platform.nats import JetStreamConsumer
from tests.support.psp import running_psp
from tests.support.server import free_port, migrate_and_seed, running_server, server_environment

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

DEADLINE_SECONDS = 15.0
CUSTOMER = "customer@ironcart.example"
DEMO_PASSWORD = "ironcart-demo-password"
ADDRESS = {
    "name": "Alan Turing",
    "line1": "Bletchley Park",
    "city": "Milton Keynes",
    "postal_code": "MK3 6EB",
    "country": "GB",
}


@dataclass
class Stage:
    base_url: str
    psp: Any
    env: dict[str, str]
    stream: str
    prefix: str


@pytest.fixture
async def stage(postgres_url: str, nats_url: str, tmp_path: Path) -> AsyncIterator[Stage]:
    port = free_port()
    token = uuid.uuid4().hex[:10]
    stream, prefix = f"FAULTS{token}", f"faults{token}"
    webhook = f"http://127.0.0.1:{port}/api/v1/payments/webhooks/sandbox"
    async with running_psp(tmp_path, webhook_url=webhook) as psp:
        env = server_environment(
            postgres_url,
            {
                **psp.shop_env(),
                "IRONCART_PAYMENTS__REQUEST_TIMEOUT_SECONDS": "3",
                "IRONCART_PAYMENTS__CALL_DEADLINE_SECONDS": "6",
                "IRONCART_PAYMENTS__RECONCILE_AFTER_SECONDS": "8",
                "IRONCART_ORDERING__TXN_IN_DOUBT_SECONDS": "20",
                "IRONCART_ORDERING__RECOVERY_INTERVAL_SECONDS": "0.5",
                "IRONCART_BUS_URL": nats_url,
                "IRONCART_RELAY__STREAM": stream,
                "IRONCART_RELAY__SUBJECT_PREFIX": prefix,
            },
        )
        await migrate_and_seed(env)
        async with running_server(postgres_url, tmp_path, env=env, port=port) as server:
            try:
                yield Stage(server.base_url, psp, env, stream, prefix)
            finally:
                connection = await nats.connect(nats_url)
                try:
                    await connection.jetstream().delete_stream(stream)
                finally:
                    await connection.close()


async def _psp(stage: Stage, method: str, path: str, **kwargs: Any) -> Any:
    async with httpx.AsyncClient(base_url=stage.psp.url) as client:
        response = await client.request(
            method, path, headers={"Authorization": f"Bearer {stage.psp.api_key}"}, **kwargs
        )
    assert response.is_success, response.text
    return response.json()


async def _checkout(
    client: httpx.AsyncClient, headers: dict[str, str], sku: str
) -> tuple[httpx.Response, float]:
    body = {
        "lines": [{"sku": sku, "quantity": 1}],
        "shipping_address": ADDRESS,
        "shipping_method": "standard",
        "payment": {"card_token": "tok_visa"},
    }
    started = time.monotonic()
    response = await client.post(
        "/api/v1/orders", json=body, headers={**headers, "Idempotency-Key": str(uuid.uuid4())}
    )
    return response, time.monotonic() - started


async def _orders(client: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    orders: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/orders", params=params, headers=headers)).json()
        orders += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return orders


async def _events(
    stage: Stage, nats_url: str, expected: set[tuple[str, str]]
) -> Counter[tuple[str, str]]:
    """(event type, order id) -> times the effect was applied, as a deduplicating consumer."""
    seen: set[str] = set()
    effects: Counter[tuple[str, str]] = Counter()

    async def handler(event: object, event_id: str) -> None:
        if event_id in seen:  # the inbox of this consumer: effects once per event id
            return
        seen.add(event_id)
        order_id = getattr(event, "order_id", "")
        effects[(type(event).__name__, order_id)] += 1

    consumer = JetStreamConsumer(
        nats_url,
        durable=f"faults-{uuid.uuid4().hex[:8]}",
        handler=handler,
        subjects=("ordering.>",),
        stream=stage.stream,
        subject_prefix=stage.prefix,
        fetch_wait=0.5,
    )
    await consumer.start()
    try:
        with anyio.move_on_after(30):
            while not expected <= set(effects):
                await consumer.process_batch()
    finally:
        await consumer.close()
    return effects


async def test_a_flaky_slow_psp_ends_every_checkout_cleanly(stage: Stage, nats_url: str) -> None:
    # No keep-alive: an idle pooled connection closed by the server at the moment it is
    # reused is a client-side ReadError, not what this test is about.
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=stage.base_url, timeout=60, limits=no_reuse) as client:
        login = await client.post(
            "/api/v1/auth/token",
            data={"grant_type": "password", "username": CUSTOMER, "password": DEMO_PASSWORD},
        )
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        page = await client.get("/api/v1/products", params={"limit": 1})
        product = (await client.get(f"/api/v1/products/{page.json()['items'][0]['id']}")).json()
        sku = product["variants"][0]["sku"]
        await _psp(
            stage,
            "PUT",
            "/_sandbox/faults",
            json={
                "error_rate": 0.3,
                "latency_ms": 2000,
                "latency_rate": 0.2,
                "webhook_duplicate_rate": 0.5,
                "webhook_reorder": True,
                "seed": 7,
            },
        )

        answers = await asyncio.gather(*(_checkout(client, headers, sku) for _ in range(24)))

        statuses = Counter(response.status_code for response, _ in answers)
        assert set(statuses) <= {201, 402, 503}, statuses
        assert statuses[201] > 0, statuses
        slowest = max(elapsed for _, elapsed in answers)
        assert slowest < DEADLINE_SECONDS, f"a checkout took {slowest:.1f} s"
        for response, _ in answers:
            if response.status_code != 201:
                assert response.headers["content-type"] == "application/problem+json"

        # The PSP down altogether: a clean 503 within the deadline, nothing left held.
        await _psp(stage, "PUT", "/_sandbox/faults", json={"error_rate": 1.0})
        down = await asyncio.gather(*(_checkout(client, headers, sku) for _ in range(4)))
        for response, elapsed in down:
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert "retry-after" in response.headers
            assert elapsed < DEADLINE_SECONDS

        await _psp(stage, "DELETE", "/_sandbox/faults")
        await _psp(stage, "POST", "/_sandbox/webhooks/flush")
        # Recovery finishes what the faults left open: captures deferred, tries in doubt.
        with anyio.fail_after(60):
            while any(
                o["status"] in {"pending", "awaiting_payment"}
                for o in await _orders(client, headers)
            ):
                await anyio.sleep(0.5)
        await anyio.sleep(2)  # late, duplicated webhooks land now; they must change nothing
        orders = await _orders(client, headers)

    ledger = (await _psp(stage, "GET", "/_sandbox/ledger"))["data"]
    payments = {p["id"]: p for p in (await _psp(stage, "GET", "/_sandbox/payments"))["data"]}
    for order in orders:
        mine = [e for e in ledger if e["idempotency_key"].startswith(order["id"])]
        captures = [e for e in mine if e["operation"] == "capture"]
        if order["status"] == "paid":
            assert len(captures) == 1, (order["id"], mine)
        else:
            assert order["status"] == "cancelled", order
            assert captures == [], (order["id"], mine)
            held = {e["payment_id"] for e in mine if e["operation"] == "authorize"}
            assert all(payments[p]["status"] == "voided" for p in held), (order["id"], held)
    paid = [o for o in orders if o["status"] == "paid"]
    # An order answered 201 was decided: recovery may have finished its capture, never undone it.
    accepted = {response.json()["id"] for response, _ in answers if response.status_code == 201}
    assert accepted <= {o["id"] for o in paid}

    expected = {("OrderPlaced", o["id"]) for o in orders} | {("OrderPaid", o["id"]) for o in paid}
    effects = await _events(stage, nats_url, expected)
    for order in orders:
        assert effects[("OrderPlaced", order["id"])] == 1
    for order in paid:
        assert effects[("OrderPaid", order["id"])] == 1
    once_per_order = {"OrderPlaced", "OrderPaid", "OrderCancelled"}
    assert all(n == 1 for (kind, _), n in effects.items() if kind in once_per_order), effects
