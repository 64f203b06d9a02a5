"""No oversell: 500 concurrent one-unit reservations of 50 units, on every backend."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ironcart.contracts.inventory import Reservation, StockChanged, StockLow
from ironcart.inventory.domain import InsufficientStock
from ironcart.inventory.repository import InventoryUnitOfWork, movements, stock_levels
from ironcart.inventory.service import InventoryService
from ironcart.platform.database import create_engine, session_factory
from ironcart.platform.events import EventBus
from tests.support.inventory_outbox import recorded

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

ATTEMPTS = 500
STOCK = {"east": 30, "west": 20}


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    # Up to 40 connections: many, yet within PostgreSQL's default of 100 shared with other tests.
    engine = create_engine(database_url, pool_size=20)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _free_units(engine: AsyncEngine, sku: str) -> list[int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(stock_levels.c.on_hand - stock_levels.c.reserved).where(
                stock_levels.c.sku == sku
            )
        )
        return [int(value) for value in rows.scalars()]


async def test_concurrent_reservations_never_oversell(engine: AsyncEngine) -> None:
    # Given 50 units of one SKU in two warehouses
    bus = EventBus()
    published: list[object] = []

    async def record(event: object) -> None:
        published.append(event)

    bus.subscribe(StockChanged, record)  # StockLow goes through the outbox, not the bus
    sessions = session_factory(engine)
    service = InventoryService(uow_factory=lambda: InventoryUnitOfWork(sessions), bus=bus)
    sku = f"SKU-{uuid.uuid4().hex[:8]}"
    for code, units in STOCK.items():
        await service.create_warehouse(code=f"{code}-{sku}", name=code, priority=1)
        await service.receive(sku=sku, warehouse=f"{code}-{sku}", quantity=units)
    published.clear()

    # When 500 one-unit reservations race, while a sampler watches the free units
    running = True
    lowest_seen: list[int] = []

    async def sample() -> None:
        while running:
            lowest_seen.append(min(await _free_units(engine, sku)))
            await asyncio.sleep(0.005)

    # As many racers at once as the pool has connections (20 + 20 overflow, less the
    # sampler's): more would only queue for a connection, and on a busy machine time out
    # waiting for one (the pool's 5 s), which proves nothing about stock.
    racers = asyncio.Semaphore(36)

    async def attempt(number: int) -> Reservation | InsufficientStock:
        async with racers:
            try:
                return await service.reserve(
                    sku=sku, quantity=1, owner=f"cart-{number}", ttl_seconds=600
                )
            except InsufficientStock as refused:
                return refused

    sampler = asyncio.create_task(sample())
    outcomes = await asyncio.gather(*(attempt(number) for number in range(ATTEMPTS)))
    running = False
    await sampler

    # Then exactly 50 succeed and 450 are refused, and no warehouse ever went below zero
    reservations = [outcome for outcome in outcomes if isinstance(outcome, Reservation)]
    refusals = [outcome for outcome in outcomes if isinstance(outcome, InsufficientStock)]
    assert len(reservations) == sum(STOCK.values())
    assert len(refusals) == ATTEMPTS - sum(STOCK.values())
    assert len({reservation.id for reservation in reservations}) == len(reservations)
    assert {(refusal.sku, refusal.requested) for refusal in refusals} == {(sku, 1)}
    assert lowest_seen
    assert min(lowest_seen) >= 0
    assert await _free_units(engine, sku) == [0, 0]

    stock = await service.get_stock(sku=sku)
    assert sorted((level.on_hand, level.reserved) for level in stock.levels) == [(20, 20), (30, 30)]
    assert stock.available == 0
    assert await service.availability(skus=[sku]) == {sku: 0}
    assert await service.reconcile() == []
    async with engine.connect() as connection:
        held = await connection.scalar(
            select(func.count())
            .select_from(movements)
            .where(movements.c.sku == sku, movements.c.kind == "reservation")
        )
    assert held == len(reservations)

    changes = [event for event in published if isinstance(event, StockChanged)]
    assert len(changes) == len(reservations)
    assert min(change.available for change in changes) == 0
    # Sold out (threshold 0): recorded once, by the reservation that took the last unit,
    # whose level locks made its availability read exact
    assert await recorded(engine, sku=sku) == [
        ("StockLow", "inventory.StockLow", StockLow(sku, 0, 0))
    ]
    assert not any(isinstance(event, StockLow) for event in published)
