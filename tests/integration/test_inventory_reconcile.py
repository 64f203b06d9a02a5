"""Reconciliation finds every level that differs from its ledger; the CLI exits 1 on one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncEngine

from ironcart.inventory.domain import Discrepancy
from ironcart.inventory.repository import InventoryUnitOfWork, movements, stock_levels
from ironcart.inventory.service import InventoryService
from ironcart.platform.database import create_engine, session_factory
from ironcart.platform.events import EventBus
from tests.support.server import output_of, run_cli, server_environment

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


def _service(engine: AsyncEngine) -> InventoryService:
    sessions = session_factory(engine)
    return InventoryService(uow_factory=lambda: InventoryUnitOfWork(sessions), bus=EventBus())


async def _busy_sku(service: InventoryService) -> tuple[str, str]:
    """A SKU with receipts, adjustments, a sale, a release and an open reservation."""
    sku, code = f"SKU-{uuid.uuid4().hex[:8]}", f"wh-{uuid.uuid4().hex[:6]}"
    await service.create_warehouse(code=code, name="Main", priority=1)
    await service.receive(sku=sku, warehouse=code, quantity=20)
    await service.adjust(sku=sku, warehouse=code, delta=-3, reason="damaged", actor="staff-1")
    sold = await service.reserve(sku=sku, quantity=4, owner="cart-1", ttl_seconds=600)
    await service.commit(reservation_id=sold.id)
    dropped = await service.reserve(sku=sku, quantity=2, owner="cart-2", ttl_seconds=600)
    await service.release(reservation_id=dropped.id)
    await service.reserve(sku=sku, quantity=5, owner="cart-3", ttl_seconds=600)
    return sku, code


async def test_every_change_is_in_the_ledger(engine: AsyncEngine) -> None:
    service = _service(engine)
    sku, _code = await _busy_sku(service)

    stock = await service.get_stock(sku=sku)

    assert [(level.on_hand, level.reserved) for level in stock.levels] == [(13, 5)]
    assert await service.reconcile() == []


async def test_changes_behind_the_ledgers_back_are_found(engine: AsyncEngine) -> None:
    service = _service(engine)
    sku, _code = await _busy_sku(service)
    warehouse_id = (await service.get_stock(sku=sku)).levels[0].warehouse.id
    async with engine.begin() as connection:
        await connection.execute(
            update(stock_levels).where(stock_levels.c.sku == sku).values(on_hand=99)
        )
        await connection.execute(
            insert(movements).values(
                sku="GHOST",
                warehouse_id=warehouse_id,
                kind="receipt",
                on_hand_delta=7,
                reserved_delta=0,
                created_at=datetime.now(UTC),
            )
        )

    found = await service.reconcile()

    assert found == [
        Discrepancy("GHOST", warehouse_id, 0, 0, 7, 0),
        Discrepancy(sku, warehouse_id, 99, 5, 13, 5),
    ]


async def test_cli_reconcile_exits_1_on_a_discrepancy(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        service = _service(engine)
        sku, _code = await _busy_sku(service)
        env = server_environment(sqlite_url)

        clean = await run_cli("inventory", "reconcile", env=env)
        assert clean.returncode == 0, output_of(clean)
        assert "every stock level matches the ledger" in clean.stdout.decode()

        async with engine.begin() as connection:
            await connection.execute(
                update(stock_levels).where(stock_levels.c.sku == sku).values(reserved=0)
            )
        broken = await run_cli("inventory", "reconcile", env=env)
    finally:
        await engine.dispose()

    assert broken.returncode == 1, output_of(broken)
    assert f"discrepancy sku={sku} " in broken.stdout.decode()
    assert "reserved=0 ledger_reserved=5" in broken.stdout.decode()
