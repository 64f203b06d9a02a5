"""Checkout over HTTP against the real databases and a real sandbox PSP process.

Covers the order lifecycle, server-side pricing, idempotency keys (replay, reuse, 50
concurrent replays), stock and payment failures, object-level authorisation, cancel and
refunds, and the concurrency claim: 200 buyers, stock 20 -> exactly 20 paid orders.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.support.app import running_app, settings_for
from tests.support.psp import running_psp
from tests.support.shop import customer, key, order_payload, staffer, stocked_product

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

PROBLEM = "application/problem+json"


class Shop:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient, psp: Any) -> None:
        self.app = app
        self.client = client
        self.psp = psp

    async def ledger(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=self.psp.url) as psp:
            response = await psp.get(
                "/_sandbox/ledger", headers={"Authorization": f"Bearer {self.psp.api_key}"}
            )
        assert response.status_code == 200, response.text
        entries: list[dict[str, Any]] = response.json()["data"]
        return entries

    async def stock(self, sku: str) -> tuple[int, int]:
        """(on_hand, reserved) summed over warehouses."""
        stock = await self.app.state.container.inventory.get_stock(sku=sku)
        return (
            sum(level.on_hand for level in stock.levels),
            sum(level.reserved for level in stock.levels),
        )

    async def order(self, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        return await self.client.post("/api/v1/orders", json=body, headers={**headers, **key()})


def _settings(database_url: str, psp: Any, **overrides: Any) -> Any:
    return settings_for(
        database_url,
        payments={"psp_url": psp.url, "psp_api_key": psp.api_key, "webhook_secret": psp.secret},
        **overrides,
    )


@pytest.fixture
async def shop(database_url: str, tmp_path: Path) -> AsyncIterator[Shop]:
    async with (
        running_psp(tmp_path) as psp,
        running_app(_settings(database_url, psp, database_pool_size=20), shipping_zones=True) as (
            app,
            client,
        ),
    ):
        yield Shop(app, client, psp)


@pytest.fixture
async def server_shop(server_database_url: str, tmp_path: Path) -> AsyncIterator[Shop]:
    """PostgreSQL and MariaDB only: the concurrency claims are about the production databases."""
    async with (
        running_psp(tmp_path) as psp,
        running_app(
            _settings(
                server_database_url,
                psp,
                database_pool_size=20,
                # The crowd tests prove who gets the stock; on a busy machine 200 checkouts
                # through 8 slots may wait longer than the default queue (then 503, by design).
                ordering={"checkout_queue_seconds": 60},
            ),
            shipping_zones=True,
        ) as (app, client),
    ):
        yield Shop(app, client, psp)


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:ironcart:problem:{code}"
    return body


def _operations(ledger: list[dict[str, Any]], operation: str) -> list[dict[str, Any]]:
    return [entry for entry in ledger if entry["operation"] == operation]


# (country, postal code, method, units of a 500 g / 10.00 item) -> shipping, from the demo zones
# (tests/support/app.py seeds what `ironcart seed` does: GB, EU, rest of world).
SHIPPING_QUOTES = [
    ("GB", "SW1Y 4JH", "standard", 1, "5.00"),  # first band (up to 2 kg)
    ("GB", "SW1Y 4JH", "standard", 4, "5.00"),  # 2 kg: still the first band
    ("GB", "SW1Y 4JH", "standard", 5, "8.00"),  # 2.5 kg: second band
    ("GB", "SW1Y 4JH", "standard", 8, "0.00"),  # subtotal 80 >= 75: free
    ("GB", "SW1Y 4JH", "express", 5, "22.00"),  # express, second band
    ("DE", "10115", "standard", 1, "12.00"),  # EU zone
    ("US", "10001", "standard", 1, "25.00"),  # rest of the world
]


async def test_shipping_is_quoted_by_zone_and_weight_into_the_total(shop: Shop) -> None:
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=50, price="10.00")
    buyer = await customer(shop.client)
    seen = []
    for country, postal, method, units, _ in SHIPPING_QUOTES:
        body = order_payload([(sku, units)], shipping_method=method)
        body["shipping_address"] = {
            **body["shipping_address"],
            "country": country,
            "postal_code": postal,
        }
        response = await shop.order(body, buyer)
        assert response.status_code == 201, response.text
        order = response.json()
        assert order["shipping"]["currency"] == "USD"
        assert Decimal(order["total"]["amount"]) == Decimal("10.00") * units + Decimal(
            order["shipping"]["amount"]
        )
        seen.append((country, postal, method, units, order["shipping"]["amount"]))
    assert seen == SHIPPING_QUOTES


async def test_a_method_not_offered_there_is_refused_and_nothing_is_held(shop: Shop) -> None:
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=3)
    body = order_payload([(sku, 1)], shipping_method="express")  # GB and EU only
    body["shipping_address"] = {**body["shipping_address"], "country": "US", "postal_code": "10001"}

    refused = await shop.order(body, await customer(shop.client))

    _problem(refused, 422, "shipping.method_not_offered")
    assert await shop.stock(sku) == (3, 0)
    assert await shop.ledger() == []


async def test_an_order_is_priced_by_the_server_paid_and_its_stock_sold(shop: Shop) -> None:
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=5, price="12.50")
    buyer = await customer(shop.client)

    response = await shop.order(order_payload([(sku, 2)], shipping_method="express"), buyer)

    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "paid"
    assert order["subtotal"] == {"amount": "25.00", "currency": "USD"}
    assert order["shipping"] == {"amount": "15.00", "currency": "USD"}
    assert order["total"] == {"amount": "40.00", "currency": "USD"}
    assert response.headers["location"] == f"/api/v1/orders/{order['id']}"
    assert [t["to"] for t in order["history"]] == ["awaiting_payment", "paid"]
    assert await shop.stock(sku) == (3, 0)
    ledger = await shop.ledger()
    assert [(e["operation"], e["amount"]) for e in ledger] == [
        ("authorize", 4000),
        ("capture", 4000),
    ]

    detail = await shop.client.get(f"/api/v1/orders/{order['id']}", headers=buyer)
    assert detail.status_code == 200
    assert [t["to"] for t in detail.json()["history"]] == ["awaiting_payment", "paid"]
    assert detail.json()["shipping_address"]["city"] == "London"
    mine = await shop.client.get("/api/v1/orders", headers=buyer)
    assert [o["id"] for o in mine.json()["items"]] == [order["id"]]


async def test_a_customer_can_set_no_price_status_or_total(shop: Shop) -> None:
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=5)
    buyer = await customer(shop.client)
    forged: list[dict[str, Any]] = []
    for field, value in [("total", "0.01"), ("status", "paid"), ("subtotal", "0")]:
        body = order_payload([(sku, 1)])
        body[field] = value
        forged.append(body)
    line_price = order_payload([(sku, 1)])
    line_price["lines"][0]["unit_price"] = {"amount": "0.01", "currency": "USD"}
    forged.append(line_price)

    for body in forged:
        _problem(await shop.order(body, buyer), 422, "validation_error")

    assert (await shop.client.get("/api/v1/orders", headers=buyer)).json()["items"] == []
    assert await shop.stock(sku) == (5, 0)
    assert await shop.ledger() == []


async def test_bad_input_is_a_clean_4xx(shop: Shop) -> None:
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=5)
    buyer = await customer(shop.client)

    no_key = await shop.client.post("/api/v1/orders", json=order_payload([(sku, 1)]), headers=buyer)
    _problem(no_key, 400, "ordering.idempotency_key_required")
    _problem(
        await shop.order(order_payload([("NO-SUCH-SKU", 1)]), buyer),
        422,
        "ordering.unsellable_items",
    )
    _problem(
        await shop.order(order_payload([(sku, 1)], shipping_method="teleport"), buyer),
        422,
        "shipping.method_not_offered",
    )
    _problem(await shop.order(order_payload([]), buyer), 422, "validation_error")
    both = order_payload([(sku, 1)])
    both["cart_id"] = "x"
    _problem(await shop.order(both, buyer), 422, "validation_error")
    anonymous = await shop.client.post(
        "/api/v1/orders", json=order_payload([(sku, 1)]), headers=key()
    )
    assert anonymous.status_code == 401
    assert await shop.stock(sku) == (5, 0)
    assert await shop.ledger() == []


async def test_out_of_stock_and_declined_cards_cancel_cleanly(shop: Shop) -> None:
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=2)
    buyer = await customer(shop.client)

    short = await shop.order(order_payload([(sku, 3)]), buyer)
    _problem(short, 409, "inventory.insufficient_stock")
    declined = await shop.order(order_payload([(sku, 1)], card_token="tok_decline"), buyer)
    assert declined.status_code == 402, declined.text
    assert declined.headers["content-type"] == PROBLEM

    assert await shop.stock(sku) == (2, 0)
    ledger = await shop.ledger()
    assert _operations(ledger, "capture") == []
    orders = (await shop.client.get("/api/v1/orders", headers=buyer)).json()["items"]
    # A sold-out line is refused before anything is written; the declined card's order stays,
    # cancelled, with its history.
    assert [o["status"] for o in orders] == ["cancelled"]


async def test_an_idempotency_key_replays_the_first_answer(shop: Shop) -> None:
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=5)
    buyer = await customer(shop.client)
    headers = {**buyer, **key()}
    body = order_payload([(sku, 1)])

    first = await shop.client.post("/api/v1/orders", json=body, headers=headers)
    again = await shop.client.post("/api/v1/orders", json=body, headers=headers)
    other = await shop.client.post(
        "/api/v1/orders", json=order_payload([(sku, 2)]), headers=headers
    )

    assert first.status_code == 201
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    _problem(other, 422, "ordering.idempotency_key_reused")
    assert await shop.stock(sku) == (4, 0)
    # Another customer's identical key is theirs alone.
    stranger = await customer(shop.client)
    theirs = await shop.client.post(
        "/api/v1/orders",
        json=body,
        headers={**stranger, **{"Idempotency-Key": headers["Idempotency-Key"]}},
    )
    assert theirs.status_code == 201
    assert theirs.json()["id"] != first.json()["id"]


async def test_a_failed_checkout_replays_its_error(shop: Shop) -> None:
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=1)
    buyer = await customer(shop.client)
    headers = {**buyer, **key()}
    body = order_payload([(sku, 2)])

    first = await shop.client.post("/api/v1/orders", json=body, headers=headers)
    again = await shop.client.post("/api/v1/orders", json=body, headers=headers)

    _problem(first, 409, "inventory.insufficient_stock")
    _problem(again, 409, "inventory.insufficient_stock")
    assert again.headers["idempotent-replayed"] == "true"
    orders = (await shop.client.get("/api/v1/orders", headers=buyer)).json()["items"]
    assert orders == []


async def test_fifty_concurrent_replays_create_one_order_and_one_authorization(shop: Shop) -> None:
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=100)
    buyer = await customer(shop.client)
    headers = {**buyer, **key()}
    body = order_payload([(sku, 1)])

    answers = await asyncio.gather(
        *(shop.client.post("/api/v1/orders", json=body, headers=headers) for _ in range(50))
    )

    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) <= {201, 409}, statuses
    ids = {a.json()["id"] for a in answers if a.status_code == 201}
    assert len(ids) == 1
    for answer in answers:
        if answer.status_code == 409:
            _problem(answer, 409, "ordering.checkout_in_progress")
    orders = (await shop.client.get("/api/v1/orders", headers=buyer)).json()["items"]
    assert len(orders) == 1
    ledger = await shop.ledger()
    assert len(_operations(ledger, "authorize")) == 1
    assert len(_operations(ledger, "capture")) == 1
    assert await shop.stock(sku) == (99, 0)


async def test_orders_and_refunds_of_others_are_404(shop: Shop) -> None:
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=5)
    owner = await customer(shop.client)
    stranger = await customer(shop.client)
    order = (await shop.order(order_payload([(sku, 1)]), owner)).json()
    url = f"/api/v1/orders/{order['id']}"

    _problem(await shop.client.get(url, headers=stranger), 404, "ordering.order_not_found")
    _problem(
        await shop.client.post(f"{url}/cancel", headers=stranger), 404, "ordering.order_not_found"
    )
    refund = await shop.client.post(
        f"{url}/refunds", json={"amount": "1.00"}, headers={**stranger, **key()}
    )
    assert refund.status_code == 403  # refunds are for staff; nothing about the order leaks
    assert order["id"] not in {
        o["id"] for o in (await shop.client.get("/api/v1/orders", headers=stranger)).json()["items"]
    }
    unchanged = await shop.client.get(url, headers=owner)
    assert unchanged.json()["status"] == "paid"
    assert unchanged.json()["refunded"]["amount"] == "0.00"


async def test_cancel_refunds_in_full_and_puts_the_stock_back(shop: Shop) -> None:
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=5, price="20.00")
    buyer = await customer(shop.client)
    order = (await shop.order(order_payload([(sku, 2)]), buyer)).json()
    assert await shop.stock(sku) == (3, 0)

    cancelled = await shop.client.post(f"/api/v1/orders/{order['id']}/cancel", headers=buyer)
    again = await shop.client.post(f"/api/v1/orders/{order['id']}/cancel", headers=buyer)

    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["refunded"] == {"amount": "45.00", "currency": "USD"}
    assert again.json()["status"] == "cancelled"
    assert await shop.stock(sku) == (5, 0)
    refunds = _operations(await shop.ledger(), "refund")
    assert [r["amount"] for r in refunds] == [4500]


async def test_once_shipping_began_the_customer_cannot_cancel_and_vice_versa(shop: Shop) -> None:
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=5)
    buyer = await customer(shop.client)
    ordering = shop.app.state.container.ordering
    shipping = (await shop.order(order_payload([(sku, 1)]), buyer)).json()
    cancelled = (await shop.order(order_payload([(sku, 1)]), buyer)).json()

    # Staff start shipping one order (what shipping asks before it calls the carrier)...
    assert await ordering.begin_fulfilment(shipping["id"])
    refused = await shop.client.post(f"/api/v1/orders/{shipping['id']}/cancel", headers=buyer)
    # ... while the customer cancels the other first: shipping it is then refused.
    done = await shop.client.post(f"/api/v1/orders/{cancelled['id']}/cancel", headers=buyer)

    _problem(refused, 409, "ordering.illegal_transition")
    assert done.json()["status"] == "cancelled"
    assert not await ordering.begin_fulfilment(cancelled["id"])
    still = await shop.client.get(f"/api/v1/orders/{shipping['id']}", headers=buyer)
    assert still.json()["status"] == "paid"
    assert await shop.stock(sku) == (4, 0)  # one sold and shipping, one back on the shelf
    assert [r["amount"] for r in _operations(await shop.ledger(), "refund")] == [
        cancelled_total_minor(cancelled)
    ]


def cancelled_total_minor(order: dict[str, Any]) -> int:
    return int(Decimal(order["total"]["amount"]) * 100)


async def test_staff_refunds_never_exceed_what_was_captured(shop: Shop) -> None:
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=5, price="10.00")
    buyer = await customer(shop.client)
    order = (await shop.order(order_payload([(sku, 1)], shipping_method="pickup"), buyer)).json()
    url = f"/api/v1/orders/{order['id']}/refunds"

    answers = await asyncio.gather(
        *(
            shop.client.post(url, json={"amount": "3.00"}, headers={**staff, **key()})
            for _ in range(6)
        )
    )

    ok = [a for a in answers if a.status_code == 201]
    assert len(ok) == 3, [a.text for a in answers]
    for answer in answers:
        assert answer.status_code in {201, 409}, answer.text
    final = (await shop.client.get(f"/api/v1/orders/{order['id']}", headers=buyer)).json()
    assert final["refunded"]["amount"] == "9.00"
    assert final["status"] == "partially_refunded"
    refunds = _operations(await shop.ledger(), "refund")
    assert sum(r["amount"] for r in refunds) == 900
    replay_key = key()
    first = await shop.client.post(url, json={"amount": "1.00"}, headers={**staff, **replay_key})
    replay = await shop.client.post(url, json={"amount": "1.00"}, headers={**staff, **replay_key})
    assert first.status_code == 201
    assert replay.status_code == 201
    final = (await shop.client.get(f"/api/v1/orders/{order['id']}", headers=buyer)).json()
    assert final["refunded"]["amount"] == "10.00"
    assert final["status"] == "refunded"
    assert Decimal(final["total"]["amount"]) == Decimal("10.00")


async def test_two_hundred_buyers_for_twenty_units(server_shop: Shop) -> None:
    """The flash-crowd claim: exactly 20 paid orders, 180 clean 409s, no capture for a loser."""
    shop = server_shop
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=20, warehouses=2)
    buyers = [await customer(shop.client) for _ in range(10)]

    answers = await asyncio.gather(
        *(shop.order(order_payload([(sku, 1)]), buyers[i % 10]) for i in range(200))
    )

    statuses = Counter(a.status_code for a in answers)
    assert statuses == {201: 20, 409: 180}, statuses
    for answer in answers:
        if answer.status_code == 409:
            _problem(answer, 409, "inventory.insufficient_stock")
        else:
            assert answer.json()["status"] == "paid"
    assert await shop.stock(sku) == (0, 0)
    ledger = await shop.ledger()
    captures = _operations(ledger, "capture")
    assert len(captures) == 20
    assert len({c["payment_id"] for c in captures}) == 20
    assert len(_operations(ledger, "authorize")) == 20  # losers never reach the PSP


async def test_concurrent_buyers_on_sqlite_never_oversell(sqlite_url: str, tmp_path: Path) -> None:
    """The embedded mode under a smaller crowd: no oversell, and a busy database is a 503."""
    async with (
        running_psp(tmp_path) as psp,
        running_app(_settings(sqlite_url, psp), shipping_zones=True) as (app, client),
    ):
        shop = Shop(app, client, psp)
        staff = await staffer(app, client)
        sku = await stocked_product(app, client, staff, units=5)
        buyers = [await customer(client) for _ in range(4)]

        answers = await asyncio.gather(
            *(shop.order(order_payload([(sku, 1)]), buyers[i % 4]) for i in range(30))
        )

        statuses = Counter(a.status_code for a in answers)
        assert set(statuses) <= {201, 409, 503}, statuses
        paid = statuses[201]
        assert 1 <= paid <= 5
        assert await shop.stock(sku) == (5 - paid, 0)
        captures = _operations(await shop.ledger(), "capture")
        assert len(captures) == paid
