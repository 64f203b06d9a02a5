"""Inventory as checkout's TCC participant, on every backend: try, confirm, cancel, fences, races."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ironcart.contracts.inventory import Reservation, StockChanged, StockLow
from ironcart.inventory.domain import (
    InsufficientStock,
    InvalidReservation,
    ReservationExpired,
    Shortage,
)
from ironcart.inventory.repository import (
    InventoryUnitOfWork,
    movements,
    reservations,
    stock_levels,
    tcc_fences,
)
from ironcart.inventory.service import InventoryService
from ironcart.platform.database import create_engine, session_factory
from ironcart.platform.events import EventBus
from ironcart.platform.txn.fence import FenceConflict, Suspended
from tests.support.inventory_outbox import recorded

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TTL = 900  # what checkout passes: a safety net, the coordinator confirms within seconds


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Inventory:
    service: InventoryService
    engine: AsyncEngine
    clock: Clock
    events: list[object] = field(default_factory=list)

    async def levels(self, sku: str) -> dict[str, tuple[int, int]]:
        """(on_hand, reserved) per warehouse code."""
        stock = await self.service.get_stock(sku=sku)
        return {level.warehouse.code: (level.on_hand, level.reserved) for level in stock.levels}

    async def free_units(self, sku: str) -> list[int]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(stock_levels.c.on_hand - stock_levels.c.reserved).where(
                    stock_levels.c.sku == sku
                )
            )
            return [int(value) for value in rows.scalars()]

    async def totals(self, sku: str) -> tuple[int, int]:
        """(on_hand, reserved) over every warehouse."""
        levels = (await self.levels(sku)).values()
        return sum(on_hand for on_hand, _ in levels), sum(held for _, held in levels)

    async def held_by(self, xid: str) -> list[tuple[str, int, str]]:
        """(sku, quantity, status) of the reservations of `xid`, by SKU."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(reservations.c.sku, reservations.c.quantity, reservations.c.status)
                .where(reservations.c.owner == f"tcc:{xid}")
                .order_by(reservations.c.sku)
            )
            return [(row.sku, row.quantity, row.status) for row in rows]

    async def ledger(self, *skus: str) -> list[tuple[str, str, int, int]]:
        """(sku, kind, on_hand_delta, reserved_delta) of the SKUs' ledger rows, sorted."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(
                    movements.c.sku,
                    movements.c.kind,
                    movements.c.on_hand_delta,
                    movements.c.reserved_delta,
                ).where(movements.c.sku.in_(skus), movements.c.kind != "receipt")
            )
            return sorted((row[0], row[1], row[2], row[3]) for row in rows)

    async def fences(self, xids: list[str]) -> dict[str, int]:
        """How many of the `xids` are in each fence state."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(tcc_fences.c.state, func.count())
                .where(tcc_fences.c.xid.in_(xids))
                .group_by(tcc_fences.c.state)
            )
            return {str(state): int(count) for state, count in rows}


async def _inventory(database_url: str, *, pool_size: int) -> AsyncIterator[Inventory]:
    engine = create_engine(database_url, pool_size=pool_size)
    sessions = session_factory(engine)
    bus = EventBus()
    clock = Clock()
    found = Inventory(
        InventoryService(uow_factory=lambda: InventoryUnitOfWork(sessions), bus=bus, clock=clock),
        engine,
        clock,
    )

    async def record(event: object) -> None:
        found.events.append(event)

    bus.subscribe(StockChanged, record)  # StockLow goes through the outbox, not the bus
    try:
        yield found
    finally:
        await engine.dispose()


@pytest.fixture
async def inventory(database_url: str) -> AsyncIterator[Inventory]:
    async for found in _inventory(database_url, pool_size=5):
        yield found


@pytest.fixture
async def crowded(database_url: str) -> AsyncIterator[Inventory]:
    """Up to 20 connections (10 + 10 overflow) for the concurrency tests."""
    async for found in _inventory(database_url, pool_size=10):
        yield found


def _xid() -> str:
    return f"xid-{uuid.uuid4().hex}"


async def _stocked(inventory: Inventory, **units: int) -> tuple[str, dict[str, str]]:
    """A new SKU with `units` per warehouse (priority = order given); returns codes by name."""
    sku = f"SKU-{uuid.uuid4().hex[:10]}"
    codes: dict[str, str] = {}
    for priority, (name, quantity) in enumerate(units.items(), start=1):
        code = f"{name}-{uuid.uuid4().hex[:6]}"
        codes[name] = code
        await inventory.service.create_warehouse(code=code, name=name, priority=priority)
        await inventory.service.receive(sku=sku, warehouse=code, quantity=quantity)
    inventory.events.clear()
    return sku, codes


async def test_try_then_confirm_sells_every_line(inventory: Inventory) -> None:
    # Given a split SKU and a plain one
    mug, mug_codes = await _stocked(inventory, near=3, far=10)
    pen, pen_codes = await _stocked(inventory, main=4)
    xid = _xid()

    # When checkout tries 5 mugs and 4 pens
    held = await inventory.service.try_reserve(xid=xid, lines=[(pen, 4), (mug, 5)], ttl_seconds=TTL)

    # Then one reservation per SKU, in SKU order, holds the units
    assert [(item.sku, item.quantity, item.owner) for item in held] == sorted(
        [(mug, 5, f"tcc:{xid}"), (pen, 4, f"tcc:{xid}")]
    )
    assert {item.expires_at for item in held} == {inventory.clock.now + timedelta(seconds=TTL)}
    assert await inventory.levels(mug) == {mug_codes["near"]: (3, 3), mug_codes["far"]: (10, 2)}
    assert await inventory.levels(pen) == {pen_codes["main"]: (4, 4)}
    assert sorted(
        (event.sku, event.available)
        for event in inventory.events
        if isinstance(event, StockChanged)
    ) == sorted([(mug, 8), (pen, 0)])
    # and the pens ran out (threshold 0): StockLow is in the outbox, committed with the try
    assert await recorded(inventory.engine, sku=pen) == [
        ("StockLow", "inventory.StockLow", StockLow(pen, 0, 0))
    ]
    assert await recorded(inventory.engine, sku=mug) == []

    # When the coordinator confirms
    await inventory.service.confirm_reservations(xid=xid)

    # Then the units left on_hand, nothing is held, and the ledger reconciles
    assert await inventory.levels(mug) == {mug_codes["near"]: (0, 0), mug_codes["far"]: (8, 0)}
    assert await inventory.levels(pen) == {pen_codes["main"]: (0, 0)}
    assert await inventory.held_by(xid) == sorted([(mug, 5, "committed"), (pen, 4, "committed")])
    assert await inventory.ledger(mug, pen) == sorted(
        [
            (mug, "reservation", 0, 3),
            (mug, "reservation", 0, 2),
            (mug, "sale", -3, -3),
            (mug, "sale", -2, -2),
            (pen, "reservation", 0, 4),
            (pen, "sale", -4, -4),
        ]
    )
    assert await inventory.fences([xid]) == {"confirmed": 1}
    assert await inventory.service.reconcile() == []


async def test_try_then_cancel_gives_everything_back(inventory: Inventory) -> None:
    mug, mug_codes = await _stocked(inventory, near=3, far=10)
    pen, pen_codes = await _stocked(inventory, main=4)
    xid = _xid()
    await inventory.service.try_reserve(xid=xid, lines=[(mug, 5), (pen, 1)], ttl_seconds=TTL)
    inventory.events.clear()

    await inventory.service.cancel_reservations(xid=xid)

    assert await inventory.levels(mug) == {mug_codes["near"]: (3, 0), mug_codes["far"]: (10, 0)}
    assert await inventory.levels(pen) == {pen_codes["main"]: (4, 0)}
    assert await inventory.held_by(xid) == sorted([(mug, 5, "released"), (pen, 1, "released")])
    assert sorted(
        (event.sku, event.available)
        for event in inventory.events
        if isinstance(event, StockChanged)
    ) == sorted([(mug, 13), (pen, 4)])
    assert await inventory.fences([xid]) == {"cancelled": 1}
    assert await inventory.service.reconcile() == []


async def test_trying_again_returns_the_same_reservations_and_holds_nothing_more(
    inventory: Inventory,
) -> None:
    mug, codes = await _stocked(inventory, main=10)
    xid = _xid()
    first = await inventory.service.try_reserve(xid=xid, lines=[(mug, 3)], ttl_seconds=TTL)
    inventory.events.clear()

    again = await inventory.service.try_reserve(xid=xid, lines=[(mug, 3)], ttl_seconds=TTL)

    assert again == first
    assert await inventory.levels(mug) == {codes["main"]: (10, 3)}
    assert await inventory.ledger(mug) == [(mug, "reservation", 0, 3)]
    assert inventory.events == []


async def test_confirming_or_cancelling_again_changes_nothing(inventory: Inventory) -> None:
    mug, codes = await _stocked(inventory, main=10)
    sold, dropped = _xid(), _xid()
    await inventory.service.try_reserve(xid=sold, lines=[(mug, 2)], ttl_seconds=TTL)
    await inventory.service.try_reserve(xid=dropped, lines=[(mug, 3)], ttl_seconds=TTL)
    await inventory.service.confirm_reservations(xid=sold)
    await inventory.service.cancel_reservations(xid=dropped)
    inventory.events.clear()

    await inventory.service.confirm_reservations(xid=sold)
    await inventory.service.cancel_reservations(xid=dropped)

    assert await inventory.levels(mug) == {codes["main"]: (8, 0)}
    assert await inventory.ledger(mug) == sorted(
        [
            (mug, "reservation", 0, 2),
            (mug, "sale", -2, -2),
            (mug, "reservation", 0, 3),
            (mug, "release", 0, -3),
        ]
    )
    assert inventory.events == []
    assert await inventory.fences([sold, dropped]) == {"confirmed": 1, "cancelled": 1}


async def test_a_try_after_its_cancel_is_suspended_and_holds_nothing(inventory: Inventory) -> None:
    # Given a cancel that overtook its try (an empty rollback)
    mug, codes = await _stocked(inventory, main=10)
    xid = _xid()
    await inventory.service.cancel_reservations(xid=xid)
    assert await inventory.fences([xid]) == {"cancelled": 1}

    # When the late try arrives
    with pytest.raises(Suspended):
        await inventory.service.try_reserve(xid=xid, lines=[(mug, 4)], ttl_seconds=TTL)

    # Then nothing is held, and cancelling again is still a no-op
    assert await inventory.levels(mug) == {codes["main"]: (10, 0)}
    assert await inventory.held_by(xid) == []
    assert await inventory.ledger(mug) == []
    assert inventory.events == []
    await inventory.service.cancel_reservations(xid=xid)
    assert await inventory.fences([xid]) == {"cancelled": 1}


async def test_confirm_after_cancel_and_cancel_after_confirm_conflict(
    inventory: Inventory,
) -> None:
    mug, codes = await _stocked(inventory, main=10)
    sold, dropped, untried = _xid(), _xid(), _xid()
    await inventory.service.try_reserve(xid=sold, lines=[(mug, 2)], ttl_seconds=TTL)
    await inventory.service.try_reserve(xid=dropped, lines=[(mug, 3)], ttl_seconds=TTL)
    await inventory.service.confirm_reservations(xid=sold)
    await inventory.service.cancel_reservations(xid=dropped)

    with pytest.raises(FenceConflict):
        await inventory.service.cancel_reservations(xid=sold)
    with pytest.raises(FenceConflict):
        await inventory.service.confirm_reservations(xid=dropped)
    with pytest.raises(FenceConflict):
        await inventory.service.confirm_reservations(xid=untried)

    assert await inventory.levels(mug) == {codes["main"]: (8, 0)}
    assert await inventory.held_by(sold) == [(mug, 2, "committed")]
    assert await inventory.held_by(dropped) == [(mug, 3, "released")]
    assert await inventory.fences([sold, dropped, untried]) == {"confirmed": 1, "cancelled": 1}
    assert await inventory.service.reconcile() == []


async def test_one_short_sku_holds_nothing_and_every_short_sku_is_named(
    inventory: Inventory,
) -> None:
    # Given three SKUs, two of them short of what checkout asks for
    mug, mug_codes = await _stocked(inventory, near=1, far=1)
    pen, pen_codes = await _stocked(inventory, main=5)
    cup, cup_codes = await _stocked(inventory, main=1)
    xid = _xid()

    # When it tries them all
    with pytest.raises(InsufficientStock) as refused:
        await inventory.service.try_reserve(
            xid=xid, lines=[(mug, 3), (pen, 5), (cup, 2)], ttl_seconds=TTL
        )

    # Then the error names each short SKU, and nothing is held, not even the pens
    assert refused.value.code == "inventory.insufficient_stock"
    short = sorted([Shortage(mug, 3, 2), Shortage(cup, 2, 1)], key=lambda item: item.sku)
    assert list(refused.value.items) == short
    assert refused.value.extra["items"] == [asdict(item) for item in short]
    assert await inventory.levels(mug) == {mug_codes["near"]: (1, 0), mug_codes["far"]: (1, 0)}
    assert await inventory.levels(pen) == {pen_codes["main"]: (5, 0)}
    assert await inventory.levels(cup) == {cup_codes["main"]: (1, 0)}
    assert await inventory.held_by(xid) == []
    assert await inventory.ledger(mug, pen, cup) == []
    assert await inventory.fences([xid]) == {}
    assert inventory.events == []

    # And the coordinator's cancel of the refused try records an empty rollback
    await inventory.service.cancel_reservations(xid=xid)
    assert await inventory.fences([xid]) == {"cancelled": 1}


async def test_a_sku_named_twice_is_one_reservation(inventory: Inventory) -> None:
    mug, codes = await _stocked(inventory, main=10)
    xid = _xid()

    held = await inventory.service.try_reserve(xid=xid, lines=[(mug, 2), (mug, 3)], ttl_seconds=TTL)

    assert [(item.sku, item.quantity) for item in held] == [(mug, 5)]
    assert await inventory.levels(mug) == {codes["main"]: (10, 5)}


@pytest.mark.parametrize(
    ("xid", "lines", "ttl"),
    [
        pytest.param("", [("SKU-1", 1)], TTL, id="empty-xid"),
        pytest.param("x" * 65, [("SKU-1", 1)], TTL, id="xid-too-long"),
        pytest.param("xid-1", [], TTL, id="no-lines"),
        pytest.param("xid-1", [("SKU-1", 0)], TTL, id="zero-quantity"),
        pytest.param("xid-1", [("SKU-1", 1)], 0, id="no-ttl"),
    ],
)
async def test_invalid_tries_are_refused_before_the_fence(
    inventory: Inventory, xid: str, lines: list[tuple[str, int]], ttl: int
) -> None:
    with pytest.raises(InvalidReservation):
        await inventory.service.try_reserve(xid=xid, lines=lines, ttl_seconds=ttl)
    assert await inventory.fences([xid]) == {}


async def test_a_reservation_past_its_ttl_but_not_yet_expired_is_sold(
    inventory: Inventory,
) -> None:
    mug, codes = await _stocked(inventory, main=10)
    xid = _xid()
    await inventory.service.try_reserve(xid=xid, lines=[(mug, 4)], ttl_seconds=60)
    inventory.clock.advance(61)  # the expiry job has not run: the units are still held

    await inventory.service.confirm_reservations(xid=xid)

    assert await inventory.levels(mug) == {codes["main"]: (6, 0)}
    assert await inventory.held_by(xid) == [(mug, 4, "committed")]
    assert await inventory.service.release_expired() == 0


async def test_an_expired_reservation_is_taken_again_when_its_stock_is_free(
    inventory: Inventory,
) -> None:
    # Given a try whose reservations the expiry job released (a coordinator down for long)
    mug, codes = await _stocked(inventory, near=2, far=10)
    pen, pen_codes = await _stocked(inventory, main=3)
    xid = _xid()
    await inventory.service.try_reserve(xid=xid, lines=[(mug, 4), (pen, 1)], ttl_seconds=60)
    inventory.clock.advance(61)
    assert await inventory.service.release_expired() == 2
    inventory.events.clear()

    # When it is confirmed at last
    await inventory.service.confirm_reservations(xid=xid)

    # Then the units are held again and sold, and the ledger still reconciles
    assert await inventory.levels(mug) == {codes["near"]: (0, 0), codes["far"]: (8, 0)}
    assert await inventory.levels(pen) == {pen_codes["main"]: (2, 0)}
    assert await inventory.held_by(xid) == sorted([(mug, 4, "committed"), (pen, 1, "committed")])
    assert sorted(
        (event.sku, event.available)
        for event in inventory.events
        if isinstance(event, StockChanged)
    ) == sorted([(mug, 8), (pen, 2)])
    assert await inventory.service.reconcile() == []


async def test_an_expired_reservation_whose_stock_is_gone_fails_the_confirm(
    inventory: Inventory,
) -> None:
    # Given an expired try whose mugs were sold to someone else meanwhile
    mug, codes = await _stocked(inventory, main=5)
    pen, pen_codes = await _stocked(inventory, main=3)
    xid = _xid()
    await inventory.service.try_reserve(xid=xid, lines=[(mug, 4), (pen, 1)], ttl_seconds=60)
    inventory.clock.advance(61)
    assert await inventory.service.release_expired() == 2
    await inventory.service.reserve(sku=mug, quantity=3, owner="cart-1", ttl_seconds=TTL)

    # When the confirm comes, it is refused, naming the mug; nothing is sold
    with pytest.raises(ReservationExpired) as refused:
        await inventory.service.confirm_reservations(xid=xid)
    assert refused.value.skus == (mug,)
    assert await inventory.levels(mug) == {codes["main"]: (5, 3)}
    assert await inventory.levels(pen) == {pen_codes["main"]: (3, 0)}
    assert await inventory.held_by(xid) == sorted([(mug, 4, "expired"), (pen, 1, "expired")])
    assert await inventory.fences([xid]) == {"tried": 1}

    # And the coordinator may still cancel: there is nothing left to release
    await inventory.service.cancel_reservations(xid=xid)
    assert await inventory.fences([xid]) == {"cancelled": 1}
    assert await inventory.service.reconcile() == []


# -- concurrency ------------------------------------------------------------------------------

TRIES = 200
UNITS = {"east": 12, "west": 8}


async def test_concurrent_tries_never_oversell_then_confirms_and_cancels_settle(
    crowded: Inventory,
) -> None:
    # Given 20 units of one SKU in two warehouses
    sku, _ = await _stocked(crowded, **UNITS)
    stock = sum(UNITS.values())
    running = True
    lowest_seen: list[int] = []

    async def sample() -> None:
        while running:
            lowest_seen.append(min(await crowded.free_units(sku)))
            await asyncio.sleep(0.005)

    # As many at once as the pool has connections (10 + 10 overflow, less the sampler's):
    # more would only queue for a connection, and on a busy machine time out waiting for
    # one (the pool's 5 s), which proves nothing about stock.
    racers = asyncio.Semaphore(18)

    async def attempt(xid: str) -> list[Reservation] | InsufficientStock:
        async with racers:
            try:
                return await crowded.service.try_reserve(xid=xid, lines=[(sku, 1)], ttl_seconds=TTL)
            except InsufficientStock as refused:
                return refused

    async def settle(move: Awaitable[None]) -> None:
        async with racers:
            await move

    # When 200 checkouts try one unit each, at once
    xids = [_xid() for _ in range(TRIES)]
    sampler = asyncio.create_task(sample())
    outcomes = dict(zip(xids, await asyncio.gather(*map(attempt, xids)), strict=True))
    running = False
    await sampler

    # Then exactly 20 hold a unit, 180 are refused, and no level ever went below zero
    held = [xid for xid, outcome in outcomes.items() if isinstance(outcome, list)]
    refused = [xid for xid, outcome in outcomes.items() if isinstance(outcome, InsufficientStock)]
    assert (len(held), len(refused)) == (stock, TRIES - stock)
    assert lowest_seen
    assert min(lowest_seen) >= 0
    assert await crowded.totals(sku) == (stock, stock)
    assert await crowded.free_units(sku) == [0, 0]

    # When the coordinator confirms 10, cancels 10, and cancels the 180 refused, at once
    confirmed, cancelled = held[:10], held[10:]
    await asyncio.gather(
        *(settle(crowded.service.confirm_reservations(xid=xid)) for xid in confirmed),
        *(settle(crowded.service.cancel_reservations(xid=xid)) for xid in cancelled + refused),
    )

    # Then 10 units are sold, none is held, and every fence ended where it should
    assert await crowded.totals(sku) == (stock - 10, 0)
    assert await crowded.service.availability(skus=[sku]) == {sku: stock - 10}
    assert await crowded.fences(xids) == {"confirmed": 10, "cancelled": TRIES - 10}
    assert await crowded.service.reconcile() == []


CHECKOUTS = 50


async def test_concurrent_multi_line_checkouts_in_any_order_do_not_deadlock(
    crowded: Inventory,
) -> None:
    # Given three SKUs with 30 units each, split over two warehouses
    skus = [(await _stocked(crowded, east=18, west=12))[0] for _ in range(3)]
    shuffler = random.Random(7)
    wanted: dict[str, list[tuple[str, int]]] = {}
    for _ in range(CHECKOUTS):
        lines = [(sku, shuffler.choice([1, 1, 2])) for sku in skus]
        shuffler.shuffle(lines)
        wanted[_xid()] = lines

    async def attempt(xid: str) -> bool:
        try:
            await crowded.service.try_reserve(xid=xid, lines=wanted[xid], ttl_seconds=TTL)
        except InsufficientStock:
            return False
        return True

    # When 50 checkouts try the same three SKUs, each naming them in its own order
    outcomes = dict(zip(wanted, await asyncio.gather(*map(attempt, wanted)), strict=True))

    # Then no deadlock escaped, each checkout holds all its lines or none, and the levels
    # hold exactly the units of the checkouts that succeeded
    held = [xid for xid, succeeded in outcomes.items() if succeeded]
    assert held
    for xid, succeeded in outcomes.items():
        expected = sorted((sku, quantity, "active") for sku, quantity in wanted[xid])
        assert await crowded.held_by(xid) == (expected if succeeded else [])
    for sku in skus:
        units = sum(dict(wanted[xid])[sku] for xid in held)
        assert await crowded.totals(sku) == (30, units)
        assert min(await crowded.free_units(sku)) >= 0

    # When half are confirmed and half cancelled, at once
    confirmed = held[: len(held) // 2]
    await asyncio.gather(
        *(crowded.service.confirm_reservations(xid=xid) for xid in confirmed),
        *(crowded.service.cancel_reservations(xid=xid) for xid in held[len(held) // 2 :]),
    )

    # Then only the confirmed units left, nothing is held, and the ledger reconciles
    for sku in skus:
        sold = sum(dict(wanted[xid])[sku] for xid in confirmed)
        assert await crowded.totals(sku) == (30 - sold, 0)
    assert await crowded.service.reconcile() == []


RACES = 40


async def test_a_cancel_racing_its_try_never_leaves_stock_held(crowded: Inventory) -> None:
    # Given 40 checkouts whose coordinator gave up on the try and cancels while it runs
    sku, _ = await _stocked(crowded, east=100)
    xids = [_xid() for _ in range(RACES)]

    async def attempt(xid: str) -> str:
        try:
            await crowded.service.try_reserve(xid=xid, lines=[(sku, 2)], ttl_seconds=TTL)
        except Suspended:
            return "suspended"
        return "held"

    # When each try and its cancel race
    outcomes = await asyncio.gather(
        *(attempt(xid) for xid in xids),
        *(crowded.service.cancel_reservations(xid=xid) for xid in xids),
    )

    # Then a try either came first and was released, or came second and held nothing
    tries = dict(zip(xids, outcomes[:RACES], strict=True))
    for xid, outcome in tries.items():
        expected = [(sku, 2, "released")] if outcome == "held" else []
        assert await crowded.held_by(xid) == expected
    assert await crowded.totals(sku) == (100, 0)
    assert await crowded.fences(xids) == {"cancelled": RACES}
    assert await crowded.service.reconcile() == []


async def test_duplicate_confirms_racing_a_cancel_settle_each_checkout_once(
    crowded: Inventory,
) -> None:
    # Given 20 tried checkouts of 2 units
    sku, _ = await _stocked(crowded, east=30, west=30)
    xids = [_xid() for _ in range(20)]
    for xid in xids:
        await crowded.service.try_reserve(xid=xid, lines=[(sku, 2)], ttl_seconds=TTL)

    async def step(call: str, xid: str) -> str:
        action = {
            "confirm": crowded.service.confirm_reservations,
            "cancel": crowded.service.cancel_reservations,
        }[call]
        try:
            await action(xid=xid)
        except FenceConflict:
            return "conflict"
        return call

    # When each is confirmed twice (coordinator and recovery) while a cancel races them
    calls = [(call, xid) for xid in xids for call in ("confirm", "confirm", "cancel")]
    results = await asyncio.gather(*(step(call, xid) for call, xid in calls))

    # Then each checkout was either sold once or released, never both
    per_xid = [tuple(results[index : index + 3]) for index in range(0, len(results), 3)]
    assert set(per_xid) <= {("confirm", "confirm", "conflict"), ("conflict", "conflict", "cancel")}
    sold = sum(outcome[0] == "confirm" for outcome in per_xid)
    for xid, outcome in zip(xids, per_xid, strict=True):
        status = "committed" if outcome[0] == "confirm" else "released"
        assert await crowded.held_by(xid) == [(sku, 2, status)]
    assert await crowded.totals(sku) == (60 - 2 * sold, 0)
    assert await crowded.service.reconcile() == []
