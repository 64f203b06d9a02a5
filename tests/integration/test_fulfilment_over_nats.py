"""With NATS JetStream as the bus, ordering consumes shipping's events from the stream: a paid
order follows its shipments (fulfilled, then delivered), once, whatever the redeliveries.

The app runs its background jobs (the relay to JetStream and the durable consumer) as a
server does; the shipping events are published the way shipping's relay publishes them.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import nats
import nats.js.errors
import pytest
from fastapi import FastAPI

from ironcart.contracts.shipping import ShipmentCreated, ShipmentDelivered
from ironcart.platform.nats import JetStreamPublisher
from ironcart.platform.outbox import encode_event
from ironcart.platform.relay import OutboxMessage
from tests.support.app import running_app, settings_for
from tests.support.psp import running_psp
from tests.support.shop import customer, paid_order, staffer, stocked_product

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
async def shop_on_nats(
    postgres_url: str, nats_url: str, tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, JetStreamPublisher]]:
    token = uuid.uuid4().hex[:12]
    stream, prefix = f"TEST_{token}", f"test{token}"
    async with running_psp(tmp_path) as psp:
        settings = settings_for(
            postgres_url,
            bus_url=nats_url,
            relay={"stream": stream, "subject_prefix": prefix, "poll_interval_seconds": 0.2},
            payments={
                "psp_url": psp.url,
                "psp_api_key": psp.api_key,
                "webhook_secret": psp.secret,
            },
        )
        publisher = JetStreamPublisher(nats_url, stream=stream, subject_prefix=prefix)
        try:
            async with running_app(settings, shipping_zones=True) as (app, client):
                yield app, client, publisher
        finally:
            await publisher.close()
            connection = await nats.connect(nats_url)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await connection.jetstream().delete_stream(stream)
            await connection.close()


def _message(event: object, event_id: str) -> OutboxMessage:
    name = type(event).__name__
    return OutboxMessage(
        seq=1,
        event_id=event_id,
        event_type=name,
        subject=f"shipping.{name}",
        payload=encode_event(event).decode(),
        created_at=datetime.now(UTC),
        outbox="shipping_outbox",
    )


async def _status_becomes(
    client: httpx.AsyncClient, buyer: dict[str, str], order_id: str, status: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        response = await client.get(f"/api/v1/orders/{order_id}", headers=buyer)
        order: dict[str, Any] = response.json()
        if order["status"] == status:
            return order
        assert time.monotonic() < deadline, f"still {order['status']}, not {status}"
        await anyio.sleep(0.1)


async def test_an_order_follows_its_shipments_through_jetstream_once(
    shop_on_nats: tuple[FastAPI, httpx.AsyncClient, JetStreamPublisher],
) -> None:
    app, client, publisher = shop_on_nats
    staff = await staffer(app, client)
    sku = await stocked_product(app, client, staff, units=5)
    buyer = await customer(client)
    order = await paid_order(client, buyer, [(sku, 2)])
    customer_id = (await client.get("/api/v1/me", headers=buyer)).json()["id"]
    created = ShipmentCreated(
        shipment_id=str(uuid.uuid4()),
        order_id=order["id"],
        customer_id=customer_id,
        carrier="sandbox",
        tracking_number="SBX123",
        lines=((sku, 2),),
        order_fully_shipped=True,
    )

    # The relay publishes at least once: the same event again, and the same change again
    # under another id (a replayed outbox row) -- the order moves once.
    first = str(uuid.uuid4())
    for event_id in (first, first, str(uuid.uuid4())):
        await publisher.publish(_message(created, event_id))
    fulfilled = await _status_becomes(client, buyer, order["id"], "fulfilled")
    delivered = ShipmentDelivered(
        shipment_id=created.shipment_id,
        order_id=order["id"],
        customer_id=customer_id,
        all_delivered=True,
    )
    await publisher.publish(_message(delivered, str(uuid.uuid4())))
    final = await _status_becomes(client, buyer, order["id"], "delivered")

    assert [move["to"] for move in fulfilled["history"]] == [
        "awaiting_payment",
        "paid",
        "fulfilled",
    ]
    await anyio.sleep(0.5)  # a late redelivery would show up here
    again = (await client.get(f"/api/v1/orders/{order['id']}", headers=buyer)).json()
    assert [move["to"] for move in again["history"]] == [
        "awaiting_payment",
        "paid",
        "fulfilled",
        "delivered",
    ]
    assert again["history"][-1]["actor"] == "system:shipping"
    assert final["status"] == "delivered"


async def test_a_delivery_heard_before_its_shipment_still_ends_delivered(
    shop_on_nats: tuple[FastAPI, httpx.AsyncClient, JetStreamPublisher],
) -> None:
    # A redelivered (delayed) ShipmentCreated may reach ordering after the ShipmentDelivered.
    app, client, publisher = shop_on_nats
    staff = await staffer(app, client)
    sku = await stocked_product(app, client, staff, units=5)
    buyer = await customer(client)
    order = await paid_order(client, buyer, [(sku, 1)])
    customer_id = (await client.get("/api/v1/me", headers=buyer)).json()["id"]
    shipment_id = str(uuid.uuid4())

    delivered = ShipmentDelivered(shipment_id, order["id"], customer_id, all_delivered=True)
    await publisher.publish(_message(delivered, str(uuid.uuid4())))
    final = await _status_becomes(client, buyer, order["id"], "delivered")
    created = ShipmentCreated(
        shipment_id, order["id"], customer_id, "sandbox", "SBX9", ((sku, 1),), True
    )
    await publisher.publish(_message(created, str(uuid.uuid4())))  # late: changes nothing
    await anyio.sleep(0.5)

    again = (await client.get(f"/api/v1/orders/{order['id']}", headers=buyer)).json()
    assert [move["to"] for move in again["history"]] == [
        "awaiting_payment",
        "paid",
        "fulfilled",
        "delivered",
    ]
    assert final["status"] == "delivered"
