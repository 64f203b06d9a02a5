"""The real `ironcart worker` process releases expired reservations within seconds (SQLite)."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from ironcart.inventory.repository import InventoryUnitOfWork
from ironcart.inventory.service import InventoryService
from ironcart.platform.database import create_engine, session_factory
from ironcart.platform.events import EventBus
from tests.support.server import IRONCART, server_environment

pytestmark = [pytest.mark.anyio, pytest.mark.integration]
DEADLINE_SECONDS = 20.0


async def test_worker_process_releases_expired_reservations(
    sqlite_url: str, tmp_path: Path
) -> None:
    engine = create_engine(sqlite_url)
    try:
        await _released_by_the_worker(engine, sqlite_url, tmp_path)
    finally:
        await engine.dispose()


async def _released_by_the_worker(engine: AsyncEngine, url: str, tmp_path: Path) -> None:
    sessions = session_factory(engine)
    service = InventoryService(uow_factory=lambda: InventoryUnitOfWork(sessions), bus=EventBus())
    sku = f"SKU-{uuid.uuid4().hex[:8]}"
    await service.create_warehouse(code="main", name="Main", priority=1)
    await service.receive(sku=sku, warehouse="main", quantity=10)
    await service.reserve(sku=sku, quantity=4, owner="cart-1", ttl_seconds=1)
    stderr_path = tmp_path / "worker.stderr.log"

    with stderr_path.open("wb") as stderr:
        worker = subprocess.Popen(
            [str(IRONCART), "worker"],
            env=server_environment(url),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while (await service.availability(skus=[sku]))[sku] != 10:
            assert worker.poll() is None, stderr_path.read_text()
            assert time.monotonic() < deadline, "the worker did not release the reservation"
            await anyio.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = worker.wait(timeout=10)

    assert code == 0
    stock = await service.get_stock(sku=sku)
    assert [(level.on_hand, level.reserved) for level in stock.levels] == [(10, 0)]
    assert await service.reconcile() == []
    assert "inventory_reservations_released" in stderr_path.read_text()
