"""Shipping over HTTP: zone CRUD with If-Match, quotes, shipments of real paid orders against
the real sandbox carrier (partial, full, over-ship, six staff on the last unit), carrier
webhooks (forged, stale, replayed, duplicated, out of order) and owner-only reads.

Every order is a real one: a customer checks out through `POST /api/v1/orders`, paid
through the real sandbox PSP process. One PSP and one carrier process serve the module, and
one app on PostgreSQL; the concurrency claim is checked on PostgreSQL and on MariaDB. The
carrier posts no webhooks here (the app has no port): a test advances a shipment through the
carrier's control API and posts the events it reports, signed as the carrier signs them.
A carrier that answers late, refuses or cannot be reached is the real one behind a switch
(`SwitchedCarrier`), in a second shipping service over the app's database.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import anyio
import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import event as db_events
from sqlalchemy import select

from ironcart.ordering.client import InProcessOrderingClient
from ironcart.platform.database import session_factory
from ironcart.platform.migrations import upgrade_async
from ironcart.platform.security.webhooks import sign
from ironcart.shipping.carrier import CarrierDown, CarrierLabel, CarrierRefused
from ironcart.shipping.domain import CarrierRejected, CarrierUnavailable, ShipmentStatus
from ironcart.shipping.repository import ShippingUnitOfWork, shipping_outbox
from ironcart.shipping.sandbox_carrier import HttpSandboxCarrier
from ironcart.shipping.service import ShippingService
from tests.conftest import unavailable
from tests.support.app import running_app, settings_for
from tests.support.carrier import CarrierProcess, running_carrier
from tests.support.databases import ServerUnavailable, fresh_mysql, fresh_postgres
from tests.support.psp import PspProcess, running_psp
from tests.support.shop import customer, paid_order, staffer, stocked_product

pytestmark = [pytest.mark.anyio, pytest.mark.integration]
PROBLEM = "application/problem+json"
WEBHOOK = "/api/v1/shipping/webhooks/sandbox"
SECRET = "whsec_shipping_test_secret"
ORDER_MOVE_SECONDS = 10.0
S = ShipmentStatus
# Header bytes the server decodes as latin-1: "t=²" ("²".isdigit(), yet int() refuses it),
# "v1=é" (compare_digest refuses non-ASCII text), 64 non-hex characters.
MALFORMED_SIGNATURES = {
    "superscript-digit": b"t=\xb2,v1=ab",
    "non-ascii-signature": b"t=1,v1=\xe9",
    "non-ascii-64": b"t=1700000000,v1=" + b"\xe9" * 64,
    "not-hex": b"t=1700000000,v1=" + b"g" * 64,
}


@dataclass
class Sandboxes:
    psp: PspProcess
    carrier: CarrierProcess


@dataclass
class Shop:
    app: FastAPI
    client: httpx.AsyncClient
    carrier: CarrierProcess
    staff: dict[str, str]

    @property
    def shipping(self) -> ShippingService:
        service: ShippingService = self.app.state.container.shipping
        return service

    async def product(self, units: int) -> str:
        return await stocked_product(self.app, self.client, self.staff, units=units)

    async def order(self, buyer: dict[str, str], lines: list[tuple[str, int]]) -> str:
        order_id: str = (await paid_order(self.client, buyer, lines))["id"]
        return order_id

    async def ship(
        self, order_id: str, lines: list[tuple[str, int]], staff: dict[str, str] | None = None
    ) -> httpx.Response:
        body = {"lines": [{"sku": sku, "quantity": q} for sku, q in lines], "carrier": "sandbox"}
        return await self.client.post(
            f"/api/v1/orders/{order_id}/shipments", json=body, headers=staff or self.staff
        )

    async def post_webhook(self, body: bytes, signature: str | bytes | None) -> httpx.Response:
        headers: dict[str, str | bytes] = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Sandbox-Signature"] = signature
        return await self.client.post(WEBHOOK, content=body, headers=headers)

    async def forward(self, events: list[dict[str, Any]]) -> list[httpx.Response]:
        """Post carrier events as the carrier signs them (what its webhooks deliver)."""
        answers = []
        for event in events:
            body = _event_body(event)
            answers.append(await self.post_webhook(body, sign(SECRET, int(time.time()), body)))
        return answers


class SwitchedCarrier:
    """The module's real sandbox carrier behind a switch: `down` (it cannot be reached),
    `answer_lost` (it makes the label, its answer never arrives), `refused` (references it
    refuses, 422), `held` (every call waits for `answer`, then is refused). Records the
    idempotency key of every call."""

    def __init__(self, carrier: CarrierProcess) -> None:
        self._real = HttpSandboxCarrier(base_url=carrier.url, api_key=carrier.api_key)
        self.down = False
        self.answer_lost = False
        self.held = False
        self.refused: set[str] = set()
        self.keys: list[str] = []
        self.lost: list[CarrierLabel] = []  # labels made whose answer never arrived
        self.called = asyncio.Event()
        self.answer = asyncio.Event()

    async def create_shipment(self, **call: Any) -> CarrierLabel:
        self.keys.append(call["idempotency_key"])
        self.called.set()
        if self.held:
            await self.answer.wait()
            raise CarrierRefused(422, "undeliverable")
        if self.down:
            raise CarrierDown("switched off")
        if call["reference"] in self.refused:
            raise CarrierRefused(422, "undeliverable")
        label = await self._real.create_shipment(**call)
        if self.answer_lost:
            self.lost.append(label)
            raise CarrierDown("switched off after the carrier answered")
        return label

    async def aclose(self) -> None:
        await self._real.aclose()


@contextlib.asynccontextmanager
async def switched_service(shop: Shop) -> AsyncIterator[tuple[ShippingService, SwitchedCarrier]]:
    """A second shipping service over the app's database and orders, its carrier switched."""
    container = shop.app.state.container
    sessions = session_factory(container.engine)
    carrier = SwitchedCarrier(shop.carrier)
    service = ShippingService(
        uow_factory=lambda: ShippingUnitOfWork(sessions),
        ordering=InProcessOrderingClient(container.ordering),
        carriers={"sandbox": carrier},
        verifiers={},
    )
    try:
        yield service, carrier
    finally:
        await service.aclose()


def _event_body(event: dict[str, Any]) -> bytes:
    data = {name: value for name, value in event.items() if name != "id"}
    return orjson.dumps(
        {"id": event["id"], "type": "shipment.tracking", "created": int(time.time()), "data": data}
    )


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def sandboxes(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sandboxes]:
    directory = tmp_path_factory.mktemp("shipping-sandboxes")
    async with running_psp(directory) as psp, running_carrier(directory, secret=SECRET) as carrier:
        yield Sandboxes(psp, carrier)


@contextlib.asynccontextmanager
async def _opened_shop(backend: str, sandboxes: Sandboxes) -> AsyncIterator[Shop]:
    """A migrated, empty database on `backend`, the app on it (demo shipping zones), a staffer."""
    fresh = fresh_postgres if backend == "postgresql" else fresh_mysql
    async with contextlib.AsyncExitStack() as stack:
        try:
            url = await stack.enter_async_context(fresh())
        except ServerUnavailable as error:
            unavailable(error)
        await upgrade_async(url)
        psp, carrier = sandboxes.psp, sandboxes.carrier
        settings = settings_for(
            url,
            database_pool_size=20,
            payments={"psp_url": psp.url, "psp_api_key": psp.api_key, "webhook_secret": psp.secret},
            shipping={
                "carrier_url": carrier.url,
                "carrier_api_key": carrier.api_key,
                "webhook_secrets": {"sandbox": SECRET},
            },
            # These tests take the carrier down on purpose and then prove what the next call
            # (a resume, a retry with the same key) does; the carrier's circuit breaker, which
            # would refuse those calls for a while, is tested in tests/unit/test_resilience_*.
            resilience={
                "dependencies": {"carrier": {"consecutive_failures": 0, "minimum_calls": 100_000}}
            },
        )
        app, client = await stack.enter_async_context(running_app(settings, shipping_zones=True))
        yield Shop(app, client, carrier, await staffer(app, client))


@pytest.fixture(scope="module")
async def shop(sandboxes: Sandboxes) -> AsyncIterator[Shop]:
    """The module's app on PostgreSQL: tests use their own products, customers and zones."""
    async with _opened_shop("postgresql", sandboxes) as opened:
        yield opened


@pytest.fixture(params=["postgresql", "mysql"])
async def server_shop(
    request: pytest.FixtureRequest, shop: Shop, sandboxes: Sandboxes
) -> AsyncIterator[Shop]:
    """The concurrency claims hold on both production databases: PostgreSQL, then MariaDB."""
    if request.param == "postgresql":
        yield shop
        return
    async with _opened_shop(request.param, sandboxes) as opened:
        yield opened


def _name(prefix: str) -> str:
    return f"{prefix} {uuid.uuid4().hex[:8]}"


def _zone(name: str, countries: list[str], price: str = "5.00", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "countries": countries,
        "methods": [
            {
                "code": "standard",
                "name": "Standard",
                "currency": "GBP",
                "bands": [
                    {"up_to_grams": 2000, "price": price},
                    {"up_to_grams": 10000, "price": "9.00"},
                ],
                "free_over": "50.00",
            }
        ],
        **extra,
    }


async def _zone_names(shop: Shop) -> set[str]:
    listing = await shop.client.get("/api/v1/shipping/zones", headers=shop.staff)
    assert listing.status_code == 200, listing.text
    return {zone["name"] for zone in listing.json()["data"]}


async def test_zone_crud_is_versioned_and_writes_need_if_match(shop: Shop) -> None:
    client, staff, name = shop.client, shop.staff, _name("Swiss")
    created = await client.post("/api/v1/shipping/zones", json=_zone(name, ["CH"]), headers=staff)
    assert created.status_code == 201, created.text
    zone_id, etag = created.json()["id"], created.headers["ETag"]
    assert etag == '"v1"'
    path = f"/api/v1/shipping/zones/{zone_id}"

    missing = await client.put(path, json=_zone(name, ["CH"], "6.00"), headers=staff)
    assert (missing.status_code, missing.headers["content-type"]) == (428, PROBLEM)
    updated = await client.put(
        path, json=_zone(name, ["CH"], "6.00"), headers={**staff, "If-Match": etag}
    )
    assert updated.status_code == 200, updated.text
    assert updated.headers["ETag"] == '"v2"'
    stale = await client.put(
        path, json=_zone(name, ["CH"], "7.00"), headers={**staff, "If-Match": etag}
    )
    assert stale.status_code == 412
    stale_delete = await client.delete(path, headers={**staff, "If-Match": etag})
    assert stale_delete.status_code == 412
    read = await client.get(path, headers=staff)
    assert read.json()["methods"][0]["bands"][0]["price"] == {"amount": "6.00", "currency": "GBP"}

    duplicate = await client.post("/api/v1/shipping/zones", json=_zone(name, ["LI"]), headers=staff)
    assert duplicate.status_code == 409
    deleted = await client.delete(path, headers={**staff, "If-Match": '"v2"'})
    assert deleted.status_code == 204
    assert (await client.get(path, headers=staff)).status_code == 404
    assert name not in await _zone_names(shop)
    customer_headers = await customer(client)
    forbidden = await client.post(
        "/api/v1/shipping/zones", json=_zone(_name("X"), ["LI"]), headers=customer_headers
    )
    assert forbidden.status_code == 403


@pytest.mark.parametrize(
    "body",
    [
        _zone("Bad lower-case", ["gb"]),
        _zone("Bad negative", ["GB"], "-1"),
        {**_zone("Bad unknown", ["GB"]), "unknown": 1},
        {**_zone("Bad prefix", []), "postal_prefixes": ["IV"]},
        {"name": "Bad no method", "countries": ["GB"], "methods": []},
    ],
    ids=["lower-case-country", "negative-price", "unknown-field", "prefix-no-country", "no-method"],
)
async def test_a_malformed_zone_is_a_422_problem(shop: Shop, body: dict[str, Any]) -> None:
    before = await _zone_names(shop)
    response = await shop.client.post("/api/v1/shipping/zones", json=body, headers=shop.staff)
    assert (response.status_code, response.headers["content-type"]) == (422, PROBLEM)
    assert await _zone_names(shop) == before
    assert body["name"] not in before


async def test_quotes_follow_the_zones(shop: Shop) -> None:
    # Norway is in no demo zone but the rest of the world (USD only): these GBP zones win.
    country, region = _name("Norway"), _name("Northern Norway")
    await shop.client.post(
        "/api/v1/shipping/zones", json=_zone(country, ["NO"]), headers=shop.staff
    )
    northern = _zone(region, ["NO"], "12.00", postal_prefixes=["9"])
    await shop.client.post("/api/v1/shipping/zones", json=northern, headers=shop.staff)

    async def quote(**body: Any) -> httpx.Response:
        payload = {"country": "NO", "postal_code": "0150", "weight_grams": 500,
                   "subtotal": "10.00", "currency": "GBP", **body}  # fmt: skip
        return await shop.client.post("/api/v1/shipping/quotes", json=payload)

    def prices(response: httpx.Response) -> list[tuple[str, str]]:
        assert response.status_code == 200, response.text
        return [(q["zone_name"], q["price"]["amount"]) for q in response.json()["data"]]

    assert prices(await quote()) == [(country, "5.00")]
    assert prices(await quote(postal_code="9010")) == [(region, "12.00")]
    assert prices(await quote(weight_grams=2000)) == [(country, "5.00")]
    assert prices(await quote(weight_grams=2001)) == [(country, "9.00")]
    assert prices(await quote(subtotal="49.99")) == [(country, "5.00")]
    assert prices(await quote(subtotal="50.00")) == [(country, "0.00")]
    assert prices(await quote(weight_grams=10001)) == []
    # The US falls in the demo rest-of-world zone, whose methods are priced in USD only.
    assert prices(await quote(country="US")) == []
    assert [q for q, _ in prices(await quote(country="US", currency="USD"))] == ["Rest of world"]
    bad = await quote(country="gbr")
    assert (bad.status_code, bad.headers["content-type"]) == (422, PROBLEM)
    offers = await shop.shipping.quote(
        country="NO", postal_code="", weight_grams=100, subtotal=Decimal(1), currency="GBP"
    )
    assert [(offer.method_code, offer.zone_name) for offer in offers] == [("standard", country)]


async def test_partial_then_full_shipment_and_over_shipping(shop: Shop) -> None:
    a, b, never_ordered = await shop.product(10), await shop.product(10), await shop.product(10)
    buyer = await customer(shop.client)
    order_id = await shop.order(buyer, [(a, 3), (b, 1)])

    first = await shop.ship(order_id, [(a, 2)])
    assert first.status_code == 201, first.text
    assert first.json()["status"] == "created"
    assert first.json()["tracking_number"].startswith("SBX")
    over = await shop.ship(order_id, [(a, 2)])
    assert (over.status_code, over.headers["content-type"]) == (409, PROBLEM)
    assert over.json()["type"] == "urn:ironcart:problem:shipping.exceeds_ordered"
    assert (over.json()["sku"], over.json()["left"]) == (a, 1)
    not_ordered = await shop.ship(order_id, [(never_ordered, 1)])
    assert not_ordered.status_code == 409
    assert not_ordered.json()["left"] == 0
    second = await shop.ship(order_id, [(a, 1), (b, 1)])
    assert second.status_code == 201, second.text

    listing = await shop.client.get(f"/api/v1/orders/{order_id}/shipments", headers=shop.staff)
    second_lines = [{"sku": sku, "quantity": 1} for sku in sorted([a, b])]
    assert [s["lines"] for s in listing.json()["data"]] == [
        [{"sku": a, "quantity": 2}],
        second_lines,
    ]
    created = [e for e in await _outbox(shop, "ShipmentCreated") if e["order_id"] == order_id]
    assert [event["order_fully_shipped"] for event in created] == [False, True]
    assert [event["shipment_id"] for event in created] == [first.json()["id"], second.json()["id"]]
    assert await _order_status(shop, order_id, buyer, "fulfilled") == "fulfilled"
    assert (await shop.ship(order_id, [(a, 1)])).status_code == 409
    assert (await shop.ship(str(uuid.uuid4()), [(a, 1)])).status_code == 404


async def test_a_cancelled_order_is_not_shipped(shop: Shop) -> None:
    sku = await shop.product(5)
    buyer = await customer(shop.client)
    order_id = await shop.order(buyer, [(sku, 1)])
    cancelled = await shop.client.post(f"/api/v1/orders/{order_id}/cancel", headers=buyer)
    assert cancelled.json()["status"] == "cancelled", cancelled.text

    refused = await shop.ship(order_id, [(sku, 1)])

    assert (refused.status_code, refused.headers["content-type"]) == (409, PROBLEM)
    assert refused.json()["type"] == "urn:ironcart:problem:shipping.order_not_shippable"
    assert refused.json()["order_status"] == "cancelled"
    assert await shop.shipping.shipments_for_order(order_id=order_id, customer_id=None) == []


async def test_six_staff_shipping_the_last_unit_at_once_one_wins(server_shop: Shop) -> None:
    shop = server_shop
    sku = await shop.product(5)
    order_id = await shop.order(await customer(shop.client), [(sku, 1)])
    staff = await asyncio.gather(*(staffer(shop.app, shop.client) for _ in range(6)))

    answers = await asyncio.gather(*(shop.ship(order_id, [(sku, 1)], one) for one in staff))

    assert sorted(answer.status_code for answer in answers) == [201] + [409] * 5
    refused = {a.json()["type"] for a in answers if a.status_code == 409}
    # A loser either found the unit taken, or (once ordering followed the winner's
    # ShipmentCreated) the order fulfilled already.
    assert refused <= {
        "urn:ironcart:problem:shipping.exceeds_ordered",
        "urn:ironcart:problem:shipping.order_not_shippable",
    }
    shipments = await shop.shipping.shipments_for_order(order_id=order_id, customer_id=None)
    # The rank too: MariaDB assigns SET left to right (the rank must see the old status).
    assert [(s.lines, s.status.value, s.status_rank) for s in shipments] == [
        (((sku, 1),), "created", 0)
    ]
    created = [e for e in await _outbox(shop, "ShipmentCreated") if e["order_id"] == order_id]
    assert [(e["shipment_id"], e["order_fully_shipped"]) for e in created] == [
        (shipments[0].id, True)
    ]


async def test_carrier_webhooks_track_forward_only_and_refuse_forgeries(shop: Shop) -> None:
    sku = await shop.product(5)
    owner = await customer(shop.client)
    order_id = await shop.order(owner, [(sku, 1)])
    shipment = (await shop.ship(order_id, [(sku, 1)])).json()
    carrier_id = (await _carrier_shipment(shop, shipment["id"]))["id"]

    advanced = await shop.carrier.advance(carrier_id, status="delivered")
    events = advanced["events"]
    assert [event["status"] for event in events] == [
        "picked_up", "in_transit", "out_for_delivery", "delivered",
    ]  # fmt: skip
    # Out of order: delivered first, then the rest; and every event twice.
    answers = await shop.forward([events[-1], *events[:-1], *events])
    assert [answer.status_code for answer in answers] == [200] * 8
    assert [answer.json()["duplicate"] for answer in answers] == [False] * 4 + [True] * 4

    seen = await shop.client.get(f"/api/v1/shipments/{shipment['id']}", headers=owner)
    assert seen.status_code == 200
    assert seen.json()["status"] == "delivered"
    assert [(t["status"], t["applied"]) for t in seen.json()["tracking"]] == [
        ("picked_up", False), ("in_transit", False), ("out_for_delivery", False),
        ("delivered", True),
    ]  # fmt: skip
    delivered = [e for e in await _outbox(shop, "ShipmentDelivered") if e["order_id"] == order_id]
    assert [(e["shipment_id"], e["all_delivered"]) for e in delivered] == [(shipment["id"], True)]
    assert await _order_status(shop, order_id, owner, "delivered") == "delivered"

    body = _event_body({**events[0], "id": "evt_forged", "status": "exception"})
    forged = await shop.post_webhook(body, sign("not-the-secret", int(time.time()), body))
    stale = await shop.post_webhook(body, sign(SECRET, int(time.time()) - 3600, body))
    unsigned = await shop.post_webhook(body, None)
    unknown = await shop.client.post("/api/v1/shipping/webhooks/nobody", content=body)
    assert [r.status_code for r in (forged, stale, unsigned, unknown)] == [400, 400, 400, 404]
    assert all(r.headers["content-type"] == PROBLEM for r in (forged, stale, unsigned, unknown))
    # A replayed event id, correctly signed but carrying another status, changes nothing.
    replayed = await shop.forward([{**events[1], "status": "exception"}])
    assert [(r.status_code, r.json()["duplicate"]) for r in replayed] == [(200, True)]
    after = await shop.client.get(f"/api/v1/shipments/{shipment['id']}", headers=owner)
    assert after.json() == seen.json()
    again = [e for e in await _outbox(shop, "ShipmentDelivered") if e["order_id"] == order_id]
    assert again == delivered


async def test_other_customers_get_404(shop: Shop) -> None:
    sku = await shop.product(5)
    owner = await customer(shop.client)
    other = await customer(shop.client)
    order_id = await shop.order(owner, [(sku, 1)])
    shipment_id = (await shop.ship(order_id, [(sku, 1)])).json()["id"]
    others_order = await shop.order(other, [(sku, 1)])

    mine = await shop.client.get(f"/api/v1/shipments/{shipment_id}", headers=owner)
    assert (mine.status_code, mine.json()["order_id"]) == (200, order_id)
    for path in (f"/api/v1/shipments/{shipment_id}", f"/api/v1/orders/{order_id}/shipments"):
        response = await shop.client.get(path, headers=other)
        assert (response.status_code, response.headers["content-type"]) == (404, PROBLEM)
    listing = await shop.client.get(f"/api/v1/orders/{order_id}/shipments", headers=owner)
    assert [s["id"] for s in listing.json()["data"]] == [shipment_id]
    # The other customer's own order, with no shipment yet: an empty list, not a 404.
    theirs = await shop.client.get(f"/api/v1/orders/{others_order}/shipments", headers=other)
    assert (theirs.status_code, theirs.json()) == (200, {"data": []})
    anonymous = await shop.client.get(f"/api/v1/shipments/{shipment_id}")
    assert anonymous.status_code == 401


async def _order_status(shop: Shop, order_id: str, buyer: dict[str, str], wanted: str) -> str:
    """The order's status once it is `wanted` (ordering follows shipping's events), or the
    last one seen after a bounded wait."""
    status = ""
    with anyio.move_on_after(ORDER_MOVE_SECONDS):
        while status != wanted:
            response = await shop.client.get(f"/api/v1/orders/{order_id}", headers=buyer)
            status = response.json()["status"]
            if status != wanted:
                await anyio.sleep(0.05)
    return status


async def _carrier_shipment(shop: Shop, shipment_id: str) -> dict[str, Any]:
    shipment = await shop.shipping.get_shipment(shipment_id=shipment_id, customer_id=None)
    async with shop.carrier.client() as client:
        found = await client.get(f"/v1/shipments/{shipment.carrier_shipment_id}")
    assert found.status_code == 200, found.text
    body: dict[str, Any] = found.json()
    assert body["reference"] == shipment_id
    return body


async def _outbox(shop: Shop, event_type: str) -> list[dict[str, Any]]:
    async with shop.app.state.container.engine.connect() as connection:
        rows = await connection.execute(
            select(shipping_outbox.c.payload)
            .where(shipping_outbox.c.event_type == event_type)
            .order_by(shipping_outbox.c.seq)
        )
        return [orjson.loads(row.payload) for row in rows]


async def _created(shop: Shop, order_id: str) -> list[tuple[str, bool]]:
    events = await _outbox(shop, "ShipmentCreated")
    return [
        (e["shipment_id"], e["order_fully_shipped"]) for e in events if e["order_id"] == order_id
    ]


async def test_a_shipment_waiting_for_the_carrier_is_not_counted_as_shipped(shop: Shop) -> None:
    sku = await shop.product(5)
    order_id = await shop.order(await customer(shop.client), [(sku, 2)])
    async with switched_service(shop) as (other_staff, carrier):
        carrier.held = True
        waiting = asyncio.create_task(
            other_staff.create_shipment(order_id=order_id, lines=[(sku, 1)], carrier="sandbox")
        )
        await carrier.called.wait()

        labelled = await shop.ship(order_id, [(sku, 1)])  # while the other one waits
        carrier.answer.set()
        with pytest.raises(CarrierRejected):
            await waiting

    assert labelled.status_code == 201, labelled.text
    # One of two units is labelled; the other was held, then refused: not fully shipped.
    assert await _created(shop, order_id) == [(labelled.json()["id"], False)]
    last = await shop.ship(order_id, [(sku, 1)])  # the refused shipment gave its unit back
    assert last.status_code == 201, last.text
    assert await _created(shop, order_id) == [
        (labelled.json()["id"], False),
        (last.json()["id"], True),
    ]
    shipments = await shop.shipping.shipments_for_order(order_id=order_id, customer_id=None)
    assert sorted(s.status.value for s in shipments) == ["created", "created", "failed"]


async def test_an_unreachable_carrier_leaves_the_shipment_requested_until_resumed(
    shop: Shop,
) -> None:
    sku = await shop.product(5)
    buyer = await customer(shop.client)
    order_id = await shop.order(buyer, [(sku, 1)])
    async with shop.carrier.client() as control:
        try:
            assert (await control.put("/_sandbox/faults", json={"error_rate": 1.0})).is_success
            down = await shop.ship(order_id, [(sku, 1)])
        finally:
            await control.delete("/_sandbox/faults")

    assert (down.status_code, down.headers["content-type"]) == (503, PROBLEM)
    assert down.json()["type"] == "urn:ironcart:problem:shipping.carrier_unavailable"
    [waiting] = await shop.shipping.shipments_for_order(order_id=order_id, customer_id=None)
    assert (waiting.status, waiting.carrier_shipment_id) == (S.REQUESTED, None)
    held = await shop.ship(order_id, [(sku, 1)])  # the outcome is unknown: the unit stays held
    assert (held.status_code, held.json()["left"]) == (409, 0)
    assert await _created(shop, order_id) == []

    assert await shop.shipping.resume_requested(older_than_seconds=0, limit=100) >= 1

    [resumed] = await shop.shipping.shipments_for_order(order_id=order_id, customer_id=None)
    assert (resumed.id, resumed.status, resumed.status_rank) == (waiting.id, S.CREATED, 0)
    assert (await _carrier_shipment(shop, resumed.id))["id"] == resumed.carrier_shipment_id
    assert await _created(shop, order_id) == [(waiting.id, True)]
    assert await _order_status(shop, order_id, buyer, "fulfilled") == "fulfilled"


async def test_resuming_asks_again_with_the_same_key_and_a_refusal_gives_back(shop: Shop) -> None:
    sku = await shop.product(5)
    order_id = await shop.order(await customer(shop.client), [(sku, 2)])
    async with switched_service(shop) as (service, carrier):
        carrier.down = True
        for _ in range(2):
            with pytest.raises(CarrierUnavailable):
                await service.create_shipment(
                    order_id=order_id, lines=[(sku, 1)], carrier="sandbox"
                )
        first, second = await service.shipments_for_order(order_id=order_id, customer_id=None)
        carrier.down = False
        carrier.refused.add(second.id)

        await service.resume_requested(older_than_seconds=0, limit=100)
        await service.resume_requested(older_than_seconds=0, limit=100)  # nothing left of ours

    assert [carrier.keys.count(first.id), carrier.keys.count(second.id)] == [2, 2]
    labelled, failed = await shop.shipping.shipments_for_order(order_id=order_id, customer_id=None)
    assert (labelled.id, labelled.status) == (first.id, S.CREATED)
    assert (failed.id, failed.status, failed.failure_code) == (second.id, S.FAILED, "undeliverable")
    assert await _created(shop, order_id) == [(first.id, False)]
    again = await shop.ship(order_id, [(sku, 1)])  # the refused shipment's unit was given back
    assert again.status_code == 201, again.text


async def test_a_shipment_delivered_before_its_label_was_recorded_completes_the_order(
    shop: Shop,
) -> None:
    sku = await shop.product(5)
    buyer = await customer(shop.client)
    order_id = await shop.order(buyer, [(sku, 1)])
    async with switched_service(shop) as (service, carrier):
        carrier.answer_lost = True
        with pytest.raises(CarrierUnavailable):
            await service.create_shipment(order_id=order_id, lines=[(sku, 1)], carrier="sandbox")
        [shipment] = await service.shipments_for_order(order_id=order_id, customer_id=None)
        assert (shipment.status, [label.reference for label in carrier.lost]) == (
            S.REQUESTED,
            [shipment.id],
        )
        # The carrier has it and delivers it; its events find our shipment by reference.
        carrier_id = carrier.lost[0].id
        advanced = await shop.carrier.advance(carrier_id, status="delivered")
        assert [r.status_code for r in await shop.forward(advanced["events"])] == [200] * 4
        delivered = [
            e for e in await _outbox(shop, "ShipmentDelivered") if e["order_id"] == order_id
        ]
        assert [e["all_delivered"] for e in delivered] == [False]  # not labelled: not shipped
        carrier.answer_lost = False

        await service.resume_requested(older_than_seconds=0, limit=100)

    assert await _created(shop, order_id) == [(shipment.id, True)]
    delivered = [e for e in await _outbox(shop, "ShipmentDelivered") if e["order_id"] == order_id]
    assert [(e["shipment_id"], e["all_delivered"]) for e in delivered] == [
        (shipment.id, False),
        (shipment.id, True),
    ]
    labelled = await shop.shipping.get_shipment(shipment_id=shipment.id, customer_id=None)
    assert (labelled.status, labelled.carrier_shipment_id) == (S.DELIVERED, carrier_id)
    assert await _order_status(shop, order_id, buyer, "delivered") == "delivered"


@pytest.mark.parametrize("header", MALFORMED_SIGNATURES.values(), ids=MALFORMED_SIGNATURES.keys())
async def test_a_malformed_signature_header_is_a_400_problem(shop: Shop, header: bytes) -> None:
    body = _event_body({"id": f"evt_{uuid.uuid4().hex}", "shipment_id": "shp_x",
                        "status": "delivered", "occurred_at": "2026-11-26T09:00:00+00:00"})  # fmt: skip

    response = await shop.post_webhook(body, header)

    assert (response.status_code, response.headers["content-type"]) == (400, PROBLEM)
    assert response.json()["type"] == "urn:ironcart:problem:shipping.webhook_signature_invalid"


async def test_a_zone_is_read_with_its_methods_in_one_statement(shop: Shop) -> None:
    name = _name("Iceland")
    created = await shop.client.post(
        "/api/v1/shipping/zones", json=_zone(name, ["IS"]), headers=shop.staff
    )
    assert created.status_code == 201, created.text
    statements: list[str] = []

    def seen(_connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "shipping_zones" in statement or "shipping_methods" in statement:
            statements.append(statement)

    engine = shop.app.state.container.engine.sync_engine
    db_events.listen(engine, "before_cursor_execute", seen)
    try:
        zone = await shop.shipping.get_zone(created.json()["id"])
        every = await shop.shipping.list_zones()
    finally:
        db_events.remove(engine, "before_cursor_execute", seen)

    # One statement per read: a concurrent PUT cannot slip between the zone and its methods.
    assert len(statements) == 2, statements
    assert (zone.name, [m.code for m in zone.methods], zone.version) == (name, ["standard"], 1)
    assert [z for z in every if z.id == zone.id] == [zone]
