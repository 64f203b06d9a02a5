"""A paid order shipped, tracked and delivered, over HTTP between real processes.

`ironcart serve` on PostgreSQL (migrated; then `ironcart seed --products 3`: demo accounts
and shipping zones), the sandbox PSP, and `ironcart sandbox-carrier` posting its signed tracking
events to the server's `/api/v1/shipping/webhooks/sandbox`. A customer orders two SKUs;
staff ship one line (the order: partially fulfilled), the carrier reports that shipment's
events duplicated and out of order, staff ship the rest (fulfilled), the carrier delivers
both (delivered). The order moves as ordering consumes shipping's ShipmentCreated /
ShipmentDelivered events from the outbox, asynchronously: each such step is awaited with a
bounded deadline. The customer sees the tracking of their own shipments, another customer
gets 404, and forged, stale and replayed webhooks change nothing.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from ironcart.platform.security.webhooks import sign
from tests.support.carrier import CarrierProcess, running_carrier
from tests.support.catalog import product_payload
from tests.support.psp import running_psp
from tests.support.server import free_port, output_of, run_cli, running_server, server_environment
from tests.support.shop import paid_order

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CUSTOMER = "customer@ironcart.example"
STAFF = "staff@ironcart.example"
DEMO_PASSWORD = "ironcart-demo-password"
CARRIER_SECRET = "whsec_logistics_e2e_carrier"
WEBHOOK = "/api/v1/shipping/webhooks/sandbox"
DEADLINE_SECONDS = 10.0
LABEL = re.compile(r"/v1/shipments/(shp_[0-9A-Z]{26})/label$")


@dataclass
class Stage:
    client: httpx.AsyncClient
    carrier: CarrierProcess


@pytest.fixture
async def stage(postgres_url: str, tmp_path: Path) -> AsyncIterator[Stage]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with (
        running_psp(tmp_path, webhook_url=f"{base}/api/v1/payments/webhooks/sandbox") as psp,
        running_carrier(tmp_path, webhook_url=f"{base}{WEBHOOK}", secret=CARRIER_SECRET) as carrier,
    ):
        env = server_environment(
            postgres_url,
            {
                **psp.shop_env(),
                "IRONCART_SHIPPING__CARRIER_URL": carrier.url,
                "IRONCART_SHIPPING__CARRIER_API_KEY": carrier.api_key,
                "IRONCART_SHIPPING__WEBHOOK_SECRETS": orjson.dumps(
                    {"sandbox": CARRIER_SECRET}
                ).decode(),
            },
        )
        async with (
            running_server(postgres_url, tmp_path, env=env, port=port) as server,  # migrates
            httpx.AsyncClient(base_url=server.base_url, timeout=30) as client,
        ):
            seeded = await run_cli("seed", "--products", "3", env=env, timeout=120)
            assert seeded.returncode == 0, output_of(seeded)
            yield Stage(client, carrier)


async def _token(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    response = await client.post(
        "/api/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": DEMO_PASSWORD},
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def _stranger(client: httpx.AsyncClient) -> dict[str, str]:
    email = f"stranger-{uuid.uuid4().hex[:10]}@example.com"
    registered = await client.post(
        "/api/v1/auth/register", json={"email": email, "password": DEMO_PASSWORD, "name": "S"}
    )
    assert registered.status_code == 201, registered.text
    return await _token(client, email)


async def _stocked_product(client: httpx.AsyncClient, staff: dict[str, str], units: int) -> str:
    sku = f"LOG-{uuid.uuid4().hex[:10]}"
    created = await client.post(
        "/api/v1/products", json=product_payload(f"Parcel {sku}", sku=sku), headers=staff
    )
    assert created.status_code == 201, created.text
    received = await client.post(
        f"/api/v1/inventory/{sku}/adjustments",
        json={"warehouse": "main", "delta": units, "reason": "logistics e2e goods in"},
        headers=staff,
    )
    assert received.status_code == 200, received.text
    return sku


async def _ship(
    client: httpx.AsyncClient, staff: dict[str, str], order_id: str, lines: list[tuple[str, int]]
) -> dict[str, Any]:
    body = {"lines": [{"sku": sku, "quantity": q} for sku, q in lines], "carrier": "sandbox"}
    response = await client.post(f"/api/v1/orders/{order_id}/shipments", json=body, headers=staff)
    assert response.status_code == 201, response.text
    shipment: dict[str, Any] = response.json()
    assert shipment["status"] == "created"
    return shipment


def _carrier_id(shipment: dict[str, Any]) -> str:
    """The carrier's id of our shipment: its label lives at the carrier, under that id."""
    match = LABEL.search(shipment["label_url"] or "")
    assert match is not None, shipment
    return match.group(1)


async def _until(read: Callable[[], Any], done: Callable[[Any], bool], what: str) -> Any:
    """Read until `done(value)`, for at most DEADLINE_SECONDS; the last value read."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        value = await read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {DEADLINE_SECONDS} s; last seen: {value}")
        await anyio.sleep(0.05)


async def _order_status(stage: Stage, buyer: dict[str, str], order_id: str, wanted: str) -> None:
    async def read() -> str:
        response = await stage.client.get(f"/api/v1/orders/{order_id}", headers=buyer)
        assert response.status_code == 200, response.text
        status: str = response.json()["status"]
        return status

    await _until(read, lambda status: status == wanted, f"order {order_id} {wanted}")


async def _tracked(
    stage: Stage, buyer: dict[str, str], shipment_id: str, count: int
) -> dict[str, Any]:
    """The shipment as its owner sees it, once `count` tracking events were recorded."""

    async def read() -> dict[str, Any]:
        response = await stage.client.get(f"/api/v1/shipments/{shipment_id}", headers=buyer)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    tracked: dict[str, Any] = await _until(
        read, lambda body: len(body["tracking"]) >= count, f"{count} events of {shipment_id}"
    )
    return tracked


async def _carrier_webhooks(stage: Stage, carrier_id: str, count: int) -> list[dict[str, Any]]:
    """The carrier's outbox rows for a shipment, once `count` were answered 2xx by the shop."""

    async def read() -> list[dict[str, Any]]:
        async with stage.carrier.client() as client:
            response = await client.get("/_sandbox/webhooks")
        assert response.status_code == 200, response.text
        return [row for row in response.json()["data"] if row["shipment_id"] == carrier_id]

    def delivered(rows: list[dict[str, Any]]) -> bool:
        return len([row for row in rows if row["state"] == "delivered"]) >= count

    rows: list[dict[str, Any]] = await _until(read, delivered, f"webhooks of {carrier_id}")
    return rows


def _statuses(shipment: dict[str, Any]) -> list[tuple[str, bool]]:
    return [(event["status"], event["applied"]) for event in shipment["tracking"]]


async def test_a_paid_order_is_shipped_in_two_parts_tracked_and_delivered(stage: Stage) -> None:
    client = stage.client
    staff, buyer = await _token(client, STAFF), await _token(client, CUSTOMER)
    stranger = await _stranger(client)
    first_sku = await _stocked_product(client, staff, 5)
    second_sku = await _stocked_product(client, staff, 5)
    order = await paid_order(client, buyer, [(first_sku, 2), (second_sku, 1)])
    order_id = order["id"]

    # Partial shipment: the first line only.
    first = await _ship(client, staff, order_id, [(first_sku, 2)])
    await _order_status(stage, buyer, order_id, "partially_fulfilled")
    first_carrier = _carrier_id(first)

    # Tracking: picked_up and in_transit each delivered twice (same event id)...
    twice = await stage.carrier.advance(first_carrier, status="in_transit", duplicate=True)
    assert [e["status"] for e in twice["events"]] == ["picked_up", "in_transit"]
    rows = await _carrier_webhooks(stage, first_carrier, 4)
    assert [row["id"] for row in rows] == [e["id"] for e in twice["events"] for _ in range(2)]
    assert all(row["last_status"] == 200 for row in rows)
    # ...then delivered before out_for_delivery (held back, sent newest first).
    reordered = await stage.carrier.advance(first_carrier, status="delivered", reorder=True)
    assert [e["status"] for e in reordered["events"]] == ["out_for_delivery", "delivered"]
    tracked = await _tracked(stage, buyer, first["id"], 4)
    assert tracked["status"] == "delivered"
    assert [e["event_id"] for e in tracked["tracking"]] == [
        e["id"] for e in [*twice["events"], *reordered["events"]]
    ]
    # The late out_for_delivery is history: it did not move a delivered shipment back. (The
    # carrier sends picked_up and in_transit at once: either may land first, so picked_up
    # may or may not have moved the shipment; in_transit did, being the further of the two.)
    assert _statuses(tracked)[1:] == [
        ("in_transit", True), ("out_for_delivery", False), ("delivered", True),
    ]  # fmt: skip
    detail = await client.get(f"/api/v1/orders/{order_id}", headers=buyer)
    assert detail.json()["status"] == "partially_fulfilled"  # one shipment of two delivered

    # The rest ships: fulfilled; the carrier delivers it: the order is delivered.
    second = await _ship(client, staff, order_id, [(second_sku, 1)])
    await _order_status(stage, buyer, order_id, "fulfilled")
    delivered = await stage.carrier.advance(_carrier_id(second), status="delivered")
    assert len(delivered["events"]) == 4
    await _order_status(stage, buyer, order_id, "delivered")
    history = (await client.get(f"/api/v1/orders/{order_id}", headers=buyer)).json()["history"]
    assert [step["to"] for step in history] == [
        "awaiting_payment", "paid", "partially_fulfilled", "fulfilled", "delivered",
    ]  # fmt: skip

    # The customer tracks their own shipments; a stranger finds nothing.
    listing = await client.get(f"/api/v1/orders/{order_id}/shipments", headers=buyer)
    assert listing.status_code == 200, listing.text
    shipments = listing.json()["data"]
    assert [(s["id"], s["status"]) for s in shipments] == [
        (first["id"], "delivered"), (second["id"], "delivered"),
    ]  # fmt: skip
    assert [s["lines"] for s in shipments] == [
        [{"sku": first_sku, "quantity": 2}],
        [{"sku": second_sku, "quantity": 1}],
    ]
    assert [len(s["tracking"]) for s in shipments] == [4, 4]
    for path in (
        f"/api/v1/shipments/{first['id']}",
        f"/api/v1/shipments/{second['id']}",
        f"/api/v1/orders/{order_id}/shipments",
    ):
        refused = await client.get(path, headers=stranger)
        assert refused.status_code == 404, refused.text
        assert refused.headers["content-type"] == "application/problem+json"

    await _forged_and_replayed_webhooks_change_nothing(stage, buyer, order_id, twice["events"])


async def _forged_and_replayed_webhooks_change_nothing(
    stage: Stage, buyer: dict[str, str], order_id: str, events: list[dict[str, Any]]
) -> None:
    client = stage.client
    before = (await client.get(f"/api/v1/orders/{order_id}/shipments", headers=buyer)).json()
    order_before = (await client.get(f"/api/v1/orders/{order_id}", headers=buyer)).json()
    now = int(time.time())

    def body(event: dict[str, Any], **changes: Any) -> bytes:
        data = {name: value for name, value in event.items() if name != "id"} | changes
        return orjson.dumps(
            {"id": event["id"], "type": "shipment.tracking", "created": now, "data": data}
        )

    async def post(content: bytes, signature: str | None) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Sandbox-Signature"] = signature
        return await client.post(WEBHOOK, content=content, headers=headers)

    fresh = {**events[0], "id": f"evt_{uuid.uuid4().hex}", "status": "exception"}
    forged = await post(body(fresh), sign("not-the-carrier-secret", now, body(fresh)))
    unsigned = await post(body(fresh), None)
    tampered = await post(body(fresh, location="Elsewhere"), sign(CARRIER_SECRET, now, body(fresh)))
    stale = await post(body(fresh), sign(CARRIER_SECRET, now - 3600, body(fresh)))
    stale_replay = await post(body(events[1]), sign(CARRIER_SECRET, now - 3600, body(events[1])))
    for refused in (forged, unsigned, tampered, stale, stale_replay):
        assert refused.status_code == 400, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
    # An event id seen before, correctly signed now, even carrying another status: a no-op.
    replayed = await post(
        body(events[1], status="exception"),
        sign(CARRIER_SECRET, now, body(events[1], status="exception")),
    )
    assert replayed.status_code == 200, replayed.text
    assert replayed.json() == {"received": True, "duplicate": True}

    after = (await client.get(f"/api/v1/orders/{order_id}/shipments", headers=buyer)).json()
    assert after == before
    order_after = (await client.get(f"/api/v1/orders/{order_id}", headers=buyer)).json()
    assert (order_after["status"], order_after["history"]) == (
        "delivered",
        order_before["history"],
    )
