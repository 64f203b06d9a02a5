"""`StockLow` through inventory's outbox, on every backend: recorded in the transaction of the
change that crossed the threshold, never by a rolled-back one, once under a crowd, and
delivered by the relay."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ironcart.contracts.inventory import Reservation, StockChanged, StockLow
from ironcart.inventory.domain import InsufficientStock
from ironcart.inventory.repository import InventoryUnitOfWork, inventory_outbox, reservations
from ironcart.inventory.service import InventoryService
from ironcart.platform.database import create_engine, session_factory
from ironcart.platform.events import EventBus
from ironcart.platform.relay import InProcessPublisher, OutboxRelay, OutboxSource
from tests.support.inventory_outbox import outbox_rows, recorded

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

THRESHOLD = 5
LOW = "StockLow", "inventory.StockLow"


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Shop:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    bus: EventBus
    service: InventoryService
    clock: Clock
    sku: str = field(default_factory=lambda: f"SKU-{uuid.uuid4().hex[:10]}")
    codes: dict[str, str] = field(default_factory=dict)
    announced: list[object] = field(default_factory=list)

    async def stock(self, *, threshold: int = THRESHOLD, **units: int) -> None:
        """`units` of `sku` per new warehouse (priority = order given), and its threshold."""
        for priority, (name, quantity) in enumerate(units.items(), start=1):
            self.codes[name] = f"{name}-{uuid.uuid4().hex[:6]}"
            await self.service.create_warehouse(code=self.codes[name], name=name, priority=priority)
            await self.service.receive(sku=self.sku, warehouse=self.codes[name], quantity=quantity)
        current = await self.service.get_stock(sku=self.sku)
        await self.service.set_stock(
            sku=self.sku,
            expected_version=current.version,
            on_hand={},
            low_stock_threshold=threshold,
            reason="threshold",
            actor="staff-1",
        )
        self.announced.clear()

    async def totals(self) -> tuple[int, int]:
        """(on_hand, reserved) over every warehouse."""
        levels = (await self.service.get_stock(sku=self.sku)).levels
        return sum(level.on_hand for level in levels), sum(level.reserved for level in levels)


def _shop(engine: AsyncEngine, uow: type[InventoryUnitOfWork] = InventoryUnitOfWork) -> Shop:
    sessions = session_factory(engine)
    bus = EventBus()
    clock = Clock()
    service = InventoryService(uow_factory=lambda: uow(sessions), bus=bus, clock=clock)
    shop = Shop(engine, sessions, bus, service, clock)

    async def announced(event: object) -> None:
        shop.announced.append(event)

    bus.subscribe(StockChanged, announced)
    bus.subscribe(StockLow, announced)
    return shop


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    # Up to 20 connections for the crowd: the server's 100 are shared with other tests.
    engine = create_engine(database_url, pool_size=10)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def shop(engine: AsyncEngine) -> Shop:
    return _shop(engine)


# -- every path that lowers availability ---------------------------------------------------


async def _reserve(shop: Shop) -> None:
    await shop.service.reserve(sku=shop.sku, quantity=4, owner="cart-1", ttl_seconds=600)


async def _try_reserve(shop: Shop) -> None:
    await shop.service.try_reserve(
        xid=f"xid-{uuid.uuid4().hex}", lines=[(shop.sku, 4)], ttl_seconds=600
    )


async def _adjust(shop: Shop) -> None:
    await shop.service.adjust(
        sku=shop.sku, warehouse=shop.codes["main"], delta=-4, reason="damaged", actor="staff-1"
    )


async def _set_stock(shop: Shop) -> None:
    current = await shop.service.get_stock(sku=shop.sku)
    await shop.service.set_stock(
        sku=shop.sku,
        expected_version=current.version,
        on_hand={shop.codes["main"]: 4},
        low_stock_threshold=None,
        reason="count",
        actor="staff-1",
    )


async def _raise_threshold(shop: Shop) -> None:
    current = await shop.service.get_stock(sku=shop.sku)
    await shop.service.set_stock(
        sku=shop.sku,
        expected_version=current.version,
        on_hand={},
        low_stock_threshold=8,
        reason="threshold",
        actor="staff-1",
    )


async def _deactivate(shop: Shop) -> None:
    await shop.service.deactivate_warehouse(code=shop.codes["closing"])


Change = Callable[[Shop], Awaitable[None]]


@pytest.mark.parametrize(
    ("units", "change", "low", "changed"),
    [
        pytest.param({"main": 8}, _reserve, (4, 5), [4], id="reserve"),
        pytest.param({"main": 8}, _try_reserve, (4, 5), [4], id="tcc-try"),
        pytest.param({"main": 8}, _adjust, (4, 5), [4], id="adjust-down"),
        pytest.param({"main": 8}, _set_stock, (4, 5), [4], id="set-stock-down"),
        pytest.param({"main": 8}, _raise_threshold, (8, 8), [], id="threshold-up"),
        pytest.param({"open": 4, "closing": 4}, _deactivate, (4, 5), [4], id="deactivate"),
    ],
)
async def test_a_change_that_crosses_the_threshold_records_stock_low_with_it(
    shop: Shop,
    units: dict[str, int],
    change: Change,
    low: tuple[int, int],
    changed: list[int],
) -> None:
    # Given 8 units, threshold 5, and nothing in the outbox
    await shop.stock(**units)
    assert await recorded(shop.engine, sku=shop.sku) == []

    # When a change takes the SKU to or below its threshold
    await change(shop)

    # Then StockLow is in the outbox, committed with it; only StockChanged went on the bus
    assert await recorded(shop.engine, sku=shop.sku) == [(*LOW, StockLow(shop.sku, *low))]
    assert [row.published for row in await outbox_rows(shop.engine)] == [False]
    assert shop.announced == [StockChanged(shop.sku, available) for available in changed]


async def test_changes_that_do_not_cross_record_nothing(shop: Shop) -> None:
    await shop.stock(main=10, spare=3)

    await shop.service.reserve(sku=shop.sku, quantity=7, owner="cart-1", ttl_seconds=600)  # 6
    await shop.service.adjust(
        sku=shop.sku, warehouse=shop.codes["main"], delta=5, reason="delivery", actor="staff-1"
    )
    await shop.service.update_warehouse(code=shop.codes["spare"], name="renamed")

    assert await recorded(shop.engine) == []


async def test_deactivating_a_warehouse_records_only_the_skus_it_takes_low(shop: Shop) -> None:
    # Given two SKUs stocked in a warehouse that closes: one keeps plenty elsewhere
    await shop.stock(open=4, closing=4)
    plenty = f"SKU-{uuid.uuid4().hex[:10]}"
    for code, quantity in ((shop.codes["open"], 20), (shop.codes["closing"], 4)):
        await shop.service.receive(sku=plenty, warehouse=code, quantity=quantity)

    await shop.service.deactivate_warehouse(code=shop.codes["closing"])

    assert await recorded(shop.engine) == [(*LOW, StockLow(shop.sku, 4, THRESHOLD))]


async def test_a_confirm_that_takes_expired_units_again_records_stock_low(shop: Shop) -> None:
    # Given a try that crossed the threshold, then expired (the units came back)
    await shop.stock(main=8)
    xid = f"xid-{uuid.uuid4().hex}"
    await shop.service.try_reserve(xid=xid, lines=[(shop.sku, 4)], ttl_seconds=60)
    shop.clock.now += timedelta(seconds=61)
    assert await shop.service.release_expired() == 1
    assert await shop.service.availability(skus=[shop.sku]) == {shop.sku: 8}

    # When the late confirm takes them again
    await shop.service.confirm_reservations(xid=xid)

    # Then the retake crossed the threshold a second time: a second StockLow
    assert await recorded(shop.engine, sku=shop.sku) == [
        (*LOW, StockLow(shop.sku, 4, THRESHOLD)),
        (*LOW, StockLow(shop.sku, 4, THRESHOLD)),
    ]
    assert await shop.totals() == (4, 0)


# -- a rolled-back change ------------------------------------------------------------------


class CrashingUnitOfWork(InventoryUnitOfWork):
    """The process dies between the change and its commit: the transaction rolls back."""

    async def commit(self) -> None:
        raise ConnectionResetError("crashed before the commit")


@pytest.mark.parametrize(
    ("units", "change"),
    [
        pytest.param({"main": 8}, _reserve, id="reserve"),
        pytest.param({"main": 8}, _try_reserve, id="tcc-try"),
        pytest.param({"main": 8}, _adjust, id="adjust-down"),
        pytest.param({"open": 4, "closing": 4}, _deactivate, id="deactivate"),
    ],
)
async def test_a_rolled_back_change_records_nothing(
    shop: Shop, units: dict[str, int], change: Change
) -> None:
    # Given 8 units, threshold 5
    await shop.stock(**units)
    crashing = _shop(shop.engine, CrashingUnitOfWork)
    crashing.sku, crashing.codes = shop.sku, shop.codes

    # When a change that would cross the threshold does not commit
    with pytest.raises(ConnectionResetError):
        await change(crashing)

    # Then neither the change nor its StockLow happened, and nothing was announced
    assert await recorded(shop.engine) == []
    assert await shop.service.availability(skus=[shop.sku]) == {shop.sku: 8}
    assert await shop.totals() == (8, 0)
    async with shop.engine.connect() as connection:
        held = await connection.scalar(
            select(func.count()).select_from(reservations).where(reservations.c.sku == shop.sku)
        )
    assert held == 0
    assert crashing.announced == []


# -- a crowd -------------------------------------------------------------------------------

CROWD = 60
CROWD_UNITS = {"east": 30, "west": 20}
CROWD_THRESHOLD = 20
MAX_QUANTITY = 3


async def test_concurrent_reservations_across_the_threshold_record_it_once(shop: Shop) -> None:
    # Given 50 units in two warehouses, threshold 20
    await shop.stock(threshold=CROWD_THRESHOLD, **CROWD_UNITS)
    quantities = [random.randint(1, MAX_QUANTITY) for _ in range(CROWD)]

    # When 60 carts and checkouts of 1 to 3 units race (about 120 units wanted)
    async def attempt(number: int) -> list[Reservation] | InsufficientStock:
        quantity = quantities[number]
        try:
            if number % 2:
                xid = f"xid-{number}-{uuid.uuid4().hex[:8]}"
                lines = [(shop.sku, quantity)]
                return await shop.service.try_reserve(xid=xid, lines=lines, ttl_seconds=600)
            return [
                await shop.service.reserve(
                    sku=shop.sku, quantity=quantity, owner=f"cart-{number}", ttl_seconds=600
                )
            ]
        except InsufficientStock as refused:
            return refused

    outcomes = await asyncio.gather(*(attempt(number) for number in range(CROWD)))

    # Then the SKU went from 50 to at most 2 (the units nobody could take) without overselling
    held = sum(
        item.quantity for outcome in outcomes if isinstance(outcome, list) for item in outcome
    )
    available = sum(CROWD_UNITS.values()) - held
    assert 0 <= available < MAX_QUANTITY
    assert await shop.service.availability(skus=[shop.sku]) == {shop.sku: available}
    assert await shop.service.reconcile() == []
    # and it crossed its threshold once: one StockLow, recorded by the change that crossed
    # it (above 20 before, at most 20 after, so within 3 units under), none by the others
    lows = await recorded(shop.engine, sku=shop.sku)
    assert len(lows) == 1
    ((event_type, subject, low),) = lows
    assert (event_type, subject) == LOW
    assert isinstance(low, StockLow)
    assert (low.sku, low.threshold) == (shop.sku, CROWD_THRESHOLD)
    assert CROWD_THRESHOLD - MAX_QUANTITY < low.available <= CROWD_THRESHOLD


# -- the relay -----------------------------------------------------------------------------


async def test_the_relay_delivers_stock_low_to_subscribers_once(shop: Shop) -> None:
    # Given a reservation that crossed the threshold
    await shop.stock(main=8)
    await _reserve(shop)
    assert not any(isinstance(event, StockLow) for event in shop.announced)

    # When the relay drains inventory's outbox into the in-process bus
    relay = OutboxRelay([OutboxSource(shop.engine, inventory_outbox)], InProcessPublisher(shop.bus))
    published = await relay.drain_once()

    # Then the subscriber has the event, once, and the row is marked published
    assert published == 1
    assert [event for event in shop.announced if isinstance(event, StockLow)] == [
        StockLow(shop.sku, 4, THRESHOLD)
    ]
    assert [row.published for row in await outbox_rows(shop.engine)] == [True]
    assert await relay.drain_once() == 0
    assert [event for event in shop.announced if isinstance(event, StockLow)] == [
        StockLow(shop.sku, 4, THRESHOLD)
    ]
