"""Inventory as an XA branch (`InventoryClient.sell_in_branch`) on a migrated MariaDB.

(The machine's PostgreSQL has `max_prepared_transactions = 0`; the XA coordinator's own
tests cover PostgreSQL on a test instance.) The coordinator logs in the same database;
an "orders" resource on it too stands for the other branch.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ironcart.contracts.inventory import StockLow
from ironcart.inventory.client import InProcessInventoryClient
from ironcart.inventory.domain import InsufficientStock
from ironcart.inventory.repository import InventoryUnitOfWork
from ironcart.inventory.service import InventoryService
from ironcart.platform.database import create_engine, session_factory
from ironcart.platform.events import EventBus
from ironcart.platform.migrations import upgrade_async
from ironcart.platform.txn.xa import (
    MysqlResource,
    PostgresResource,
    XaBranch,
    XaCoordinator,
    XaState,
    xa_resource,
)
from tests.conftest import unavailable
from tests.support.databases import ServerUnavailable, fresh_mysql
from tests.support.inventory_outbox import recorded

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


class Refused(Exception):
    pass


@dataclass
class Shop:
    engine: AsyncEngine
    service: InventoryService
    client: InProcessInventoryClient
    coordinator: XaCoordinator
    resources: dict[str, PostgresResource | MysqlResource]
    sku: str
    gid: str = ""

    def branches(
        self, lines: list[tuple[str, int]], announcements: list[Callable[[], Awaitable[None]]]
    ) -> list[XaBranch]:
        async def sell(connection: AsyncConnection) -> None:
            announcements.append(
                await self.client.sell_in_branch(connection, reference=self.gid, lines=lines)
            )

        return [XaBranch("inventory", self.resources["inventory"], sell)]

    async def on_hand(self) -> dict[str, tuple[int, int]]:
        stock = await self.service.get_stock(sku=self.sku)
        return {level.warehouse.code: (level.on_hand, level.reserved) for level in stock.levels}


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    try:
        database = fresh_mysql()
        url = await database.__aenter__()
    except ServerUnavailable as error:
        unavailable(error)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    engine = create_engine(url, pool_size=4)
    try:
        await upgrade_async(url)
        sessions = session_factory(engine)
        service = InventoryService(
            uow_factory=lambda: InventoryUnitOfWork(sessions), bus=EventBus()
        )
        resources = [xa_resource("inventory", engine), xa_resource("orders", engine)]
        coordinator = XaCoordinator(engine, resources, gid_prefix=prefix)
        sku = f"SKU-{uuid.uuid4().hex[:8]}"
        await service.create_warehouse(code="first", name="First", priority=1)
        await service.create_warehouse(code="second", name="Second", priority=2)
        await service.receive(sku=sku, warehouse="first", quantity=3)
        await service.receive(sku=sku, warehouse="second", quantity=5)
        client = InProcessInventoryClient(service)
        named = {resource.name: resource for resource in resources}
        yield Shop(engine, service, client, coordinator, named, sku)
    finally:
        for resource in resources:
            for gid in await resource.prepared(f"{prefix}-"):
                await resource.rollback(gid)
        await engine.dispose()
        await database.__aexit__(None, None, None)


async def _ledger(engine: AsyncEngine, reference: str) -> list[tuple[str, int, int]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT kind, on_hand_delta, reserved_delta FROM inventory_movements"
                " WHERE reference = :reference ORDER BY kind, on_hand_delta"
            ),
            {"reference": reference},
        )
        return [(kind, on_hand, reserved) for kind, on_hand, reserved in rows]


async def test_a_sale_in_an_xa_branch_commits_with_the_transaction(shop: Shop) -> None:
    shop.gid = shop.coordinator.new_gid()
    announcements: list[Callable[[], Awaitable[None]]] = []

    outcome = await shop.coordinator.execute(
        shop.branches([(shop.sku, 4), (shop.sku, 2)], announcements), gid=shop.gid
    )
    for announce in announcements:
        await announce()

    assert outcome.state is XaState.COMMITTED
    # Priority first: the first warehouse gives its 3, the second the other 3.
    assert await shop.on_hand() == {"first": (0, 0), "second": (2, 0)}
    assert await shop.service.availability(skus=[shop.sku]) == {shop.sku: 2}
    assert sorted(await _ledger(shop.engine, shop.gid)) == [
        ("reservation", 0, 3),
        ("reservation", 0, 3),
        ("sale", -3, -3),
        ("sale", -3, -3),
    ]
    assert await shop.service.reconcile() == []
    assert await recorded(shop.engine, sku=shop.sku) == []  # 2 left: above the threshold (0)


async def test_selling_the_last_units_records_stock_low_in_the_branch(shop: Shop) -> None:
    shop.gid = shop.coordinator.new_gid()

    await shop.coordinator.execute(shop.branches([(shop.sku, 8)], []), gid=shop.gid)

    assert await shop.on_hand() == {"first": (0, 0), "second": (0, 0)}
    low = [("StockLow", "inventory.StockLow", StockLow(shop.sku, 0, 0))]
    assert await recorded(shop.engine, sku=shop.sku) == low


async def test_not_enough_stock_refuses_and_sells_nothing(shop: Shop) -> None:
    other = f"SKU-{uuid.uuid4().hex[:8]}"
    shop.gid = shop.coordinator.new_gid()

    with pytest.raises(InsufficientStock) as refused:
        await shop.coordinator.execute(shop.branches([(shop.sku, 9), (other, 1)], []), gid=shop.gid)

    shortages = [(item.sku, item.requested, item.available) for item in refused.value.items]
    assert shortages == sorted([(shop.sku, 9, 8), (other, 1, 0)])
    assert await shop.coordinator.state(shop.gid) is XaState.ABORTED
    assert await shop.on_hand() == {"first": (3, 0), "second": (5, 0)}
    assert await _ledger(shop.engine, shop.gid) == []


async def test_a_failing_other_branch_takes_the_sale_back(shop: Shop) -> None:
    shop.gid = shop.coordinator.new_gid()

    async def refuse(connection: AsyncConnection) -> None:
        raise Refused("orders")

    with pytest.raises(Refused):
        await shop.coordinator.execute(
            [
                *shop.branches([(shop.sku, 8)], []),
                XaBranch("orders", shop.resources["orders"], refuse),
            ],
            gid=shop.gid,
        )

    # The sale ran and the unit of work closed its session: the branch stayed open until
    # the coordinator rolled it back with the other one.
    assert await shop.on_hand() == {"first": (3, 0), "second": (5, 0)}
    assert await _ledger(shop.engine, shop.gid) == []
    assert await recorded(shop.engine, sku=shop.sku) == []
    assert await shop.service.reconcile() == []
