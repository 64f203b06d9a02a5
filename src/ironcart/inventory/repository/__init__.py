"""Inventory's tables and queries, and its unit of work. Only this context touches `inventory_*`.

tables.py        the tables (declared on the shared metadata) and row helpers
stock.py         stock levels and per-SKU settings: conditional UPDATEs only
reservations.py  reservations, their lines, status transitions, the expiry claim
warehouses.py    warehouses, and the append-only movement ledger with reconciliation
fences.py        the TCC participant fences of checkout's global transactions
outbox.py        inventory's outbox (`inventory_outbox`): what the relay publishes
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from ironcart.inventory.repository.fences import SqlFenceRepository
from ironcart.inventory.repository.outbox import SqlOutbox
from ironcart.inventory.repository.reservations import SqlReservationRepository
from ironcart.inventory.repository.stock import SqlStockRepository
from ironcart.inventory.repository.tables import (
    inventory_outbox,
    movements,
    reservation_lines,
    reservations,
    sku_settings,
    stock_levels,
    tcc_fences,
    warehouses,
)
from ironcart.inventory.repository.warehouses import SqlMovementRepository, SqlWarehouseRepository
from ironcart.platform.database import UnitOfWork

# PostgreSQL deadlock / serialization failure, MySQL deadlock / lock wait timeout.


class InventoryUnitOfWork(UnitOfWork):
    warehouses: SqlWarehouseRepository
    stock: SqlStockRepository
    reservations: SqlReservationRepository
    movements: SqlMovementRepository
    fences: SqlFenceRepository
    outbox: SqlOutbox

    def _open_repositories(self, session: AsyncSession) -> None:
        self.warehouses = SqlWarehouseRepository(session)
        self.stock = SqlStockRepository(session)
        self.reservations = SqlReservationRepository(session)
        self.movements = SqlMovementRepository(session)
        self.fences = SqlFenceRepository(session)
        self.outbox = SqlOutbox(session)

    async def read_committed(self) -> None:
        """Run this transaction at READ COMMITTED; call it before the first statement.

        For the TCC steps on MariaDB, whose REPEATABLE READ gap-locks the missing fence key
        of a cancel that comes before its try: concurrent empty rollbacks then deadlock on
        their inserts (retried, but hundreds of times under load). PostgreSQL runs at READ
        COMMITTED already; SQLite has a single writer.
        """
        bind = self.session.bind
        if bind is not None and bind.dialect.name in {"mysql", "mariadb"}:
            await self.session.connection(execution_options={"isolation_level": "READ COMMITTED"})


__all__ = [
    "InventoryUnitOfWork",
    "inventory_outbox",
    "movements",
    "reservation_lines",
    "reservations",
    "sku_settings",
    "stock_levels",
    "tcc_fences",
    "warehouses",
]
