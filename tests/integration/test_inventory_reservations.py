"""Reservations on every backend: split lines, commit/release idempotency, expiry, races."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ironcart.contracts.inventory import Reservation, StockChanged, StockLow
from ironcart.inventory.domain import (
    InsufficientStock,
    ReservationAlreadyCommitted,
    ReservationExpired,
    ReservationNotFound,
    StockBelowReserved,
)
from ironcart.inventory.repository import (
    InventoryUnitOfWork,
    movements,
    reservation_lines,
    reservations,
)
from ironcart.inventory.service import InventoryService
from ironcart.platform.database import create_engine, session_factory
from ironcart.platform.events import EventBus
from tests.support.inventory_outbox import recorded

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@dataclass
class Inventory:
    service: InventoryService
    engine: AsyncEngine
    events: list[object] = field(default_factory=list)

    async def levels(self, sku: str) -> dict[str, tuple[int, int]]:
        """(on_hand, reserved) per warehouse code."""
        stock = await self.service.get_stock(sku=sku)
        return {level.warehouse.code: (level.on_hand, level.reserved) for level in stock.levels}

    async def ledger(self, reference: str) -> list[tuple[str, int, int]]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(movements.c.kind, movements.c.on_hand_delta, movements.c.reserved_delta)
                .where(movements.c.reference == reference)
                .order_by(movements.c.id)
            )
            return [tuple(row) for row in rows]  # type: ignore[misc]

    async def status(self, reservation_id: str) -> str:
        async with self.engine.connect() as connection:
            found = await connection.scalar(
                select(reservations.c.status).where(reservations.c.id == reservation_id)
            )
        return str(found)


@pytest.fixture
async def inventory(database_url: str) -> AsyncIterator[Inventory]:
    engine = create_engine(database_url, pool_size=10)
    sessions = session_factory(engine)
    bus = EventBus()
    found = Inventory(
        InventoryService(uow_factory=lambda: InventoryUnitOfWork(sessions), bus=bus), engine
    )

    async def record(event: object) -> None:
        found.events.append(event)

    bus.subscribe(StockChanged, record)  # StockLow goes through the outbox, not the bus
    try:
        yield found
    finally:
        await engine.dispose()


def _sku() -> str:
    return f"SKU-{uuid.uuid4().hex[:10]}"


async def _stocked(inventory: Inventory, **units: int) -> tuple[str, dict[str, str]]:
    """A new SKU with `units` per warehouse (priority = order given); returns codes by name."""
    sku = _sku()
    codes: dict[str, str] = {}
    for priority, (name, quantity) in enumerate(units.items(), start=1):
        code = f"{name}-{uuid.uuid4().hex[:6]}"
        codes[name] = code
        await inventory.service.create_warehouse(code=code, name=name, priority=priority)
        await inventory.service.receive(sku=sku, warehouse=code, quantity=quantity)
    inventory.events.clear()
    return sku, codes


async def _reserve(inventory: Inventory, sku: str, quantity: int, ttl: int = 600) -> Reservation:
    return await inventory.service.reserve(
        sku=sku, quantity=quantity, owner=f"cart-{uuid.uuid4().hex[:6]}", ttl_seconds=ttl
    )


async def test_split_reservation_then_commit(inventory: Inventory) -> None:
    sku, codes = await _stocked(inventory, near=3, far=10)

    held = await _reserve(inventory, sku, 5)

    assert await inventory.levels(sku) == {codes["near"]: (3, 3), codes["far"]: (10, 2)}
    async with inventory.engine.connect() as connection:
        lines = await connection.execute(
            select(reservation_lines.c.quantity).where(
                reservation_lines.c.reservation_id == held.id
            )
        )
        assert sorted(lines.scalars()) == [2, 3]
    assert inventory.events == [StockChanged(sku, 8)]

    await inventory.service.commit(reservation_id=held.id)

    assert await inventory.levels(sku) == {codes["near"]: (0, 0), codes["far"]: (8, 0)}
    assert sorted(await inventory.ledger(held.id)) == [
        ("reservation", 0, 2),
        ("reservation", 0, 3),
        ("sale", -3, -3),
        ("sale", -2, -2),
    ]
    assert await inventory.status(held.id) == "committed"
    assert await inventory.service.reconcile() == []


async def test_commit_twice_is_a_no_op_and_release_after_commit_is_refused(
    inventory: Inventory,
) -> None:
    sku, codes = await _stocked(inventory, main=10)
    held = await _reserve(inventory, sku, 4)

    await inventory.service.commit(reservation_id=held.id)
    await inventory.service.commit(reservation_id=held.id)

    assert await inventory.levels(sku) == {codes["main"]: (6, 0)}
    assert await inventory.ledger(held.id) == [("reservation", 0, 4), ("sale", -4, -4)]
    with pytest.raises(ReservationAlreadyCommitted):
        await inventory.service.release(reservation_id=held.id)
    assert await inventory.levels(sku) == {codes["main"]: (6, 0)}


async def test_release_twice_is_a_no_op_and_commit_after_release_is_refused(
    inventory: Inventory,
) -> None:
    sku, codes = await _stocked(inventory, main=10)
    held = await _reserve(inventory, sku, 4)

    await inventory.service.release(reservation_id=held.id)
    await inventory.service.release(reservation_id=held.id)

    assert await inventory.levels(sku) == {codes["main"]: (10, 0)}
    assert await inventory.ledger(held.id) == [("reservation", 0, 4), ("release", 0, -4)]
    with pytest.raises(ReservationExpired):
        await inventory.service.commit(reservation_id=held.id)
    assert await inventory.levels(sku) == {codes["main"]: (10, 0)}
    assert await inventory.status(held.id) == "released"
    assert inventory.events == [StockChanged(sku, 6), StockChanged(sku, 10)]


async def test_expired_reservation_is_released_by_the_job_and_cannot_be_committed(
    inventory: Inventory,
) -> None:
    sku, codes = await _stocked(inventory, main=10)
    held = await _reserve(inventory, sku, 3, ttl=1)
    await asyncio.sleep(1.2)

    # The worker has not run yet: the commit is still refused, and nothing is sold
    with pytest.raises(ReservationExpired):
        await inventory.service.commit(reservation_id=held.id)
    assert await inventory.levels(sku) == {codes["main"]: (10, 3)}

    assert await inventory.service.release_expired() == 1
    assert await inventory.service.release_expired() == 0

    assert await inventory.levels(sku) == {codes["main"]: (10, 0)}
    assert await inventory.status(held.id) == "expired"
    assert await inventory.ledger(held.id) == [("reservation", 0, 3), ("expiry", 0, -3)]
    with pytest.raises(ReservationExpired):
        await inventory.service.commit(reservation_id=held.id)
    await inventory.service.release(reservation_id=held.id)  # a no-op after expiry
    assert await inventory.levels(sku) == {codes["main"]: (10, 0)}
    assert await inventory.service.reconcile() == []


async def test_release_expired_leaves_unexpired_reservations_alone(inventory: Inventory) -> None:
    sku, codes = await _stocked(inventory, main=10)
    await _reserve(inventory, sku, 2, ttl=1)
    kept = await _reserve(inventory, sku, 5, ttl=600)
    await asyncio.sleep(1.2)

    assert await inventory.service.release_expired() == 1

    assert await inventory.levels(sku) == {codes["main"]: (10, 5)}
    assert await inventory.status(kept.id) == "active"


async def test_concurrent_expiry_runs_release_each_reservation_once(inventory: Inventory) -> None:
    sku, codes = await _stocked(inventory, east=40, west=40)
    held = [await _reserve(inventory, sku, 2, ttl=1) for _ in range(30)]
    await asyncio.sleep(1.2)

    async def worker() -> int:
        total = 0
        while released := await inventory.service.release_expired(limit=7):
            total += released
        return total

    totals = await asyncio.gather(*(worker() for _ in range(4)))

    assert sum(totals) == len(held)
    assert await inventory.levels(sku) == {codes["east"]: (40, 0), codes["west"]: (40, 0)}
    async with inventory.engine.connect() as connection:
        per_reservation = await connection.execute(
            select(movements.c.reference, func.count())
            .where(movements.c.sku == sku, movements.c.kind == "expiry")
            .group_by(movements.c.reference)
        )
        counts = dict(per_reservation.all())
    assert counts == {reservation.id: 1 for reservation in held}
    assert await inventory.service.reconcile() == []


async def test_commit_racing_release_has_exactly_one_winner(inventory: Inventory) -> None:
    sku, codes = await _stocked(inventory, main=100)
    held = [await _reserve(inventory, sku, 1) for _ in range(20)]

    async def commit(reservation: Reservation) -> str:
        try:
            await inventory.service.commit(reservation_id=reservation.id)
        except ReservationExpired:
            return "refused"
        return "committed"

    async def release(reservation: Reservation) -> str:
        try:
            await inventory.service.release(reservation_id=reservation.id)
        except ReservationAlreadyCommitted:
            return "refused"
        return "released"

    results = await asyncio.gather(
        *(call(reservation) for reservation in held for call in (commit, release))
    )

    pairs = list(zip(results[::2], results[1::2], strict=True))
    assert all(pair in {("committed", "refused"), ("refused", "released")} for pair in pairs)
    sold = sum(pair[0] == "committed" for pair in pairs)
    assert await inventory.levels(sku) == {codes["main"]: (100 - sold, 0)}
    assert await inventory.service.reconcile() == []


async def test_refusals_change_nothing(inventory: Inventory) -> None:
    sku, codes = await _stocked(inventory, main=5)

    with pytest.raises(InsufficientStock) as refused:
        await _reserve(inventory, sku, 6)
    assert (refused.value.requested, refused.value.available) == (6, 5)
    with pytest.raises(ReservationNotFound):
        await inventory.service.commit(reservation_id=str(uuid.uuid4()))
    held = await _reserve(inventory, sku, 4)
    with pytest.raises(StockBelowReserved):
        await inventory.service.adjust(
            sku=sku, warehouse=codes["main"], delta=-2, reason="count", actor="staff-1"
        )

    assert await inventory.levels(sku) == {codes["main"]: (5, 4)}
    assert await inventory.ledger(held.id) == [("reservation", 0, 4)]
    assert await inventory.service.reconcile() == []


async def test_deactivated_warehouse_is_not_sold_from(inventory: Inventory) -> None:
    sku, codes = await _stocked(inventory, closing=10, open=2)

    await inventory.service.deactivate_warehouse(code=codes["closing"])

    assert await inventory.service.availability(skus=[sku, "UNKNOWN-SKU"]) == {
        sku: 2,
        "UNKNOWN-SKU": 0,
    }
    assert inventory.events == [StockChanged(sku, 2)]
    with pytest.raises(InsufficientStock):
        await _reserve(inventory, sku, 3)
    await _reserve(inventory, sku, 2)
    assert await inventory.levels(sku) == {codes["closing"]: (10, 0), codes["open"]: (2, 2)}


async def test_low_stock_is_recorded_once_in_the_outbox_when_crossing_the_threshold(
    inventory: Inventory,
) -> None:
    sku, codes = await _stocked(inventory, main=10)
    stock = await inventory.service.get_stock(sku=sku)
    await inventory.service.set_stock(
        sku=sku,
        expected_version=stock.version,
        on_hand={},
        low_stock_threshold=5,
        reason="set threshold",
        actor="staff-1",
    )
    low_before = REGISTRY.get_sample_value("ironcart_inventory_stock_low_total") or 0.0

    await _reserve(inventory, sku, 4)  # 6 left: not low
    assert REGISTRY.get_sample_value("ironcart_inventory_available", {"sku": sku}) is None
    assert await recorded(inventory.engine, sku=sku) == []
    held = await _reserve(inventory, sku, 2)  # 4 left: crossed
    # committed with the reservation, before anything was announced
    assert await recorded(inventory.engine, sku=sku) == [
        ("StockLow", "inventory.StockLow", StockLow(sku, 4, 5))
    ]
    await _reserve(inventory, sku, 1)  # 3 left: still low, not recorded again

    assert await recorded(inventory.engine, sku=sku) == [
        ("StockLow", "inventory.StockLow", StockLow(sku, 4, 5))
    ]
    assert not any(isinstance(event, StockLow) for event in inventory.events)  # not on the bus
    assert REGISTRY.get_sample_value("ironcart_inventory_stock_low_total") == low_before + 1
    assert REGISTRY.get_sample_value("ironcart_inventory_available", {"sku": sku}) == 3.0

    await inventory.service.release(reservation_id=held.id)
    await inventory.service.adjust(
        sku=sku, warehouse=codes["main"], delta=10, reason="delivery", actor="staff-1"
    )
    # Back above the threshold: the SKU's series is dropped (bounded label cardinality)
    assert REGISTRY.get_sample_value("ironcart_inventory_available", {"sku": sku}) is None
