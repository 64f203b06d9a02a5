"""Checkout in XA mode over HTTP: orders in one database, inventory in another, one commit.

On the session's PostgreSQL test instance (prepared transactions enabled) and on MariaDB,
each with two fresh databases, a real sandbox PSP process, and the app in this process
with `checkout_txn = "xa"`. Every check reads the two databases directly: the order is
in the orders database only, its sale in inventory's only, and no prepared transaction
of the test's gid prefix is left behind.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from tests.support.app import running_app, settings_for
from tests.support.databases import ServerUnavailable
from tests.support.pg_instance import PgInstance
from tests.support.psp import running_psp
from tests.support.shop import customer, key, order_payload, staffer, stocked_product
from tests.support.xa_shop import (
    BACKENDS,
    database_pair,
    on_hand,
    prepared,
    psp_view,
    rows,
    scalar,
    sold_units,
    xa_log,
)

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

PROBLEM = "application/problem+json"


@dataclass
class XaShop:
    app: FastAPI
    client: httpx.AsyncClient
    psp: Any
    orders_url: str
    inventory_url: str
    prefix: str

    async def order(self, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        return await self.client.post("/api/v1/orders", json=body, headers={**headers, **key()})

    async def orders_of(self, sku: str) -> list[tuple[str, str, str]]:
        """(order id, status, xid) of the orders with a line of `sku`, in the orders database."""
        found = await rows(
            self.orders_url,
            "SELECT o.id, o.status, o.xid FROM ordering_orders o"
            " JOIN ordering_order_lines l ON l.order_id = o.id WHERE l.sku = :sku",
            sku=sku,
        )
        return [(str(a), str(b), str(c)) for a, b, c in found]

    async def levels(self, sku: str) -> dict[str, tuple[int, int]]:
        """(on_hand, reserved) of `sku` by warehouse id, in inventory's database."""
        found = await rows(
            self.inventory_url,
            "SELECT warehouse_id, on_hand, reserved FROM inventory_stock_levels WHERE sku = :sku",
            sku=sku,
        )
        return {str(warehouse): (int(units), int(held)) for warehouse, units, held in found}

    async def ledger(self, sku: str, kind: str) -> dict[str, int]:
        """The on-hand change of `sku`'s ledger rows of `kind`, summed by warehouse id."""
        found = await rows(
            self.inventory_url,
            "SELECT warehouse_id, SUM(on_hand_delta) FROM inventory_movements"
            " WHERE sku = :sku AND kind = :kind GROUP BY warehouse_id",
            sku=sku,
            kind=kind,
        )
        return {str(warehouse): int(units) for warehouse, units in found}

    async def settled_log(self) -> dict[str, tuple[str, bool, str | None]]:
        """The XA log once every row is decided and followed up (recovery included)."""
        with anyio.fail_after(20):
            while True:
                log = await xa_log(self.orders_url, self.prefix)
                if all(
                    state in {"committed", "aborted"} and done for state, done, _ in log.values()
                ):
                    return log
                await anyio.sleep(0.2)


@asynccontextmanager
async def _shop(
    backend: str, instance: PgInstance | ServerUnavailable, tmp_path: Path, *, txn: str
) -> AsyncIterator[XaShop]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    async with (
        database_pair(backend, instance) as (orders_url, inventory_url),
        running_psp(tmp_path) as psp,
    ):
        settings = settings_for(
            orders_url,
            checkout_txn=txn,
            inventory_database_url=inventory_url,
            database_pool_size=10,
            xa={"gid_prefix": prefix, "in_doubt_seconds": 5, "recovery_interval_seconds": 0.5},
            # The crowd test proves who gets the stock; on a busy machine 200 checkouts through
            # 8 slots may wait longer than the default queue (then 503, by design).
            ordering={"checkout_queue_seconds": 60},
            payments={
                "psp_url": psp.url,
                "psp_api_key": psp.api_key,
                "webhook_secret": psp.secret,
            },
        )
        async with running_app(settings, shipping_zones=True) as (app, client):
            yield XaShop(app, client, psp, orders_url, inventory_url, prefix)
        # Nothing may stay prepared (it would also block dropping the databases).
        assert await prepared(orders_url, prefix) == []
        assert await prepared(inventory_url, prefix) == []


@pytest.fixture(params=BACKENDS)
async def xa_shop(
    request: pytest.FixtureRequest,
    pg_test_instance: PgInstance | ServerUnavailable,
    tmp_path: Path,
) -> AsyncIterator[XaShop]:
    async with _shop(request.param, pg_test_instance, tmp_path, txn="xa") as shop:
        yield shop


def _problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == f"urn:ironcart:problem:{code}"


async def test_an_order_commits_in_one_database_and_its_stock_in_the_other(xa_shop: XaShop) -> None:
    shop = xa_shop
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=5, price="12.50")
    buyer = await customer(shop.client)

    response = await shop.order(order_payload([(sku, 2)]), buyer)

    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "paid"
    assert order["subtotal"] == {"amount": "25.00", "currency": "USD"}
    total = round(float(order["total"]["amount"]) * 100)
    assert [t["to"] for t in order["history"]] == ["awaiting_payment", "paid"]
    [(order_id, status, gid)] = await shop.orders_of(sku)
    assert (order_id, status) == (order["id"], "paid")
    assert gid.startswith(f"{shop.prefix}-")
    assert await on_hand(shop.inventory_url, sku) == (3, 0)
    assert await sold_units(shop.inventory_url, gid) == 2
    # Each context's tables are used in its own database only.
    assert await scalar(shop.inventory_url, "SELECT COUNT(*) FROM ordering_orders") == 0
    assert await scalar(shop.orders_url, "SELECT COUNT(*) FROM inventory_movements") == 0
    placed = await scalar(
        shop.orders_url,
        "SELECT COUNT(*) FROM ordering_outbox WHERE event_type = 'OrderPlaced'",
    )
    assert placed == 1
    ledger, by_order = await psp_view(shop.psp)
    assert [(e["operation"], e["amount"]) for e in ledger] == [
        ("authorize", total),
        ("capture", total),
    ]
    assert by_order == {order_id: "captured"}
    assert await shop.settled_log() == {gid: ("committed", True, order_id)}


async def test_a_cancelled_paid_order_is_refunded_and_its_stock_goes_back(
    xa_shop: XaShop,
) -> None:
    shop = xa_shop
    staff = await staffer(shop.app, shop.client)
    # 3 + 2 units in two warehouses of one priority: 4 sold take 3 from one, 1 from the other.
    sku = await stocked_product(shop.app, shop.client, staff, units=5, price="20.00", warehouses=2)
    before = await shop.levels(sku)
    buyer = await customer(shop.client)
    order = (await shop.order(order_payload([(sku, 4)]), buyer)).json()
    assert order["status"] == "paid", order
    total = round(float(order["total"]["amount"]) * 100)
    [(order_id, _, gid)] = await shop.orders_of(sku)
    sold = await shop.ledger(sku, "sale")
    assert sorted(sold.values()) == [-3, -1]
    assert await shop.levels(sku) == {
        warehouse: (units + sold[warehouse], 0) for warehouse, (units, _) in before.items()
    }
    owner = f"tcc:{gid}"  # the xid the order keeps, as `return_sale` looks it up
    sale = "SELECT status, quantity FROM inventory_reservations WHERE owner = :owner"
    assert await rows(shop.inventory_url, sale, owner=owner) == [("committed", 4)]

    cancelled = await shop.client.post(f"/api/v1/orders/{order_id}/cancel", headers=buyer)

    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["refunded"] == order["total"]
    assert await shop.orders_of(sku) == [(order_id, "cancelled", gid)]
    pending = "SELECT compensation_pending FROM ordering_orders WHERE id = :id"
    assert not await scalar(shop.orders_url, pending, id=order_id)
    ledger, by_order = await psp_view(shop.psp)
    assert [(e["operation"], e["amount"]) for e in ledger] == [
        ("authorize", total),
        ("capture", total),
        ("refund", total),
    ]
    assert by_order == {order_id: "refunded"}
    # Back where it left from: each warehouse's return rows undo its sale rows.
    assert await shop.levels(sku) == before
    assert await shop.ledger(sku, "return") == {w: -units for w, units in sold.items()}
    returned = await scalar(
        shop.inventory_url,
        "SELECT COUNT(*) FROM inventory_movements WHERE kind = 'return' AND reference IN"
        " (SELECT id FROM inventory_reservations WHERE owner = :owner)",
        owner=owner,
    )
    assert returned == 2
    assert await shop.app.state.container.inventory.reconcile() == []

    again = await shop.client.post(f"/api/v1/orders/{order_id}/cancel", headers=buyer)

    assert again.status_code == 200, again.text
    assert again.json()["status"] == "cancelled"
    assert again.json()["refunded"] == order["total"]
    assert await shop.levels(sku) == before
    assert await shop.ledger(sku, "return") == {w: -units for w, units in sold.items()}
    assert await psp_view(shop.psp) == (ledger, by_order)
    assert await shop.settled_log() == {gid: ("committed", True, order_id)}


async def test_a_declined_card_leaves_no_order_and_no_sale(xa_shop: XaShop) -> None:
    shop = xa_shop
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=2)
    buyer = await customer(shop.client)
    headers = {**buyer, **key()}
    body = order_payload([(sku, 1)], card_token="tok_decline")

    declined = await shop.client.post("/api/v1/orders", json=body, headers=headers)
    replayed = await shop.client.post("/api/v1/orders", json=body, headers=headers)

    _problem(declined, 402, "payments.declined")
    _problem(replayed, 402, "payments.declined")
    assert replayed.headers["idempotent-replayed"] == "true"
    assert await shop.orders_of(sku) == []
    assert await on_hand(shop.inventory_url, sku) == (2, 0)
    assert (
        await scalar(
            shop.inventory_url, "SELECT COUNT(*) FROM inventory_movements WHERE kind = 'sale'"
        )
        == 0
    )
    ledger, _ = await psp_view(shop.psp)
    assert [e["operation"] for e in ledger if e["operation"] != "authorize"] == []
    log = await shop.settled_log()
    assert [state for state, _, _ in log.values()] == ["aborted"]


async def test_two_hundred_buyers_for_twenty_units(xa_shop: XaShop) -> None:
    """Exactly 20 paid, 180 clean 409s, stock 0; every authorization of a loser voided."""
    shop = xa_shop
    staff = await staffer(shop.app, shop.client)
    sku = await stocked_product(shop.app, shop.client, staff, units=20, warehouses=2)
    buyers = [await customer(shop.client) for _ in range(10)]

    answers = await asyncio.gather(
        *(shop.order(order_payload([(sku, 1)]), buyers[i % 10]) for i in range(200))
    )

    statuses = Counter(a.status_code for a in answers)
    assert statuses == {201: 20, 409: 180}, statuses
    paid_ids = set()
    for answer in answers:
        if answer.status_code == 409:
            _problem(answer, 409, "inventory.insufficient_stock")
        else:
            assert answer.json()["status"] == "paid"
            paid_ids.add(answer.json()["id"])
    assert await on_hand(shop.inventory_url, sku) == (0, 0)
    orders = await shop.orders_of(sku)
    assert {(order_id, status) for order_id, status, _ in orders} == {
        (order_id, "paid") for order_id in paid_ids
    }
    for _, _, gid in orders:
        assert await sold_units(shop.inventory_url, gid) == 1
    log = await shop.settled_log()
    committed = {reference for state, _, reference in log.values() if state == "committed"}
    assert committed == paid_ids
    ledger, by_order = await psp_view(shop.psp)
    captures = [e for e in ledger if e["operation"] == "capture"]
    assert len(captures) == 20
    assert len({c["payment_id"] for c in captures}) == 20
    assert {order_id for order_id, status in by_order.items() if status == "captured"} == paid_ids
    # A buyer who got past the availability check was authorized, then lost the stock in
    # the XA transaction: that authorization is voided, never captured.
    losers = {order_id: status for order_id, status in by_order.items() if order_id not in paid_ids}
    assert set(losers.values()) <= {"voided"}, losers
    assert {reference for state, _, reference in log.values() if state == "aborted"} == set(losers)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_tcc_mode_works_with_inventory_in_its_own_database(
    backend: str, pg_test_instance: PgInstance | ServerUnavailable, tmp_path: Path
) -> None:
    async with _shop(backend, pg_test_instance, tmp_path, txn="tcc") as shop:
        staff = await staffer(shop.app, shop.client)
        sku = await stocked_product(shop.app, shop.client, staff, units=3)
        buyer = await customer(shop.client)

        response = await shop.order(order_payload([(sku, 2)]), buyer)
        ready = await shop.client.get("/readyz")

        assert response.status_code == 201, response.text
        assert response.json()["status"] == "paid"
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["inventory_database"] == "ok"
        [(order_id, status, xid)] = await shop.orders_of(sku)
        assert (order_id, status) == (response.json()["id"], "paid")
        assert await on_hand(shop.inventory_url, sku) == (1, 0)
        # The TCC reservation and its fences are inventory's: in inventory's database.
        fences = "SELECT COUNT(*) FROM inventory_tcc_fences WHERE xid = :xid"
        assert await scalar(shop.inventory_url, fences, xid=xid) >= 1
        assert await scalar(shop.orders_url, fences, xid=xid) == 0
        assert await scalar(shop.orders_url, "SELECT COUNT(*) FROM inventory_movements") == 0
        assert await xa_log(shop.orders_url, shop.prefix) == {}
