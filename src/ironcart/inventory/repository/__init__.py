"""Inventory's tables and queries, and its unit of work. Only this context touches `inventory_*`.

tables.py        the tables (declared on the shared metadata) and row helpers
stock.py         stock levels and per-SKU settings: conditional UPDATEs only
reservations.py  reservations, their lines, status transitions, the expiry claim
warehouses.py    warehouses, and the append-only movement ledger with reconciliation
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from ironcart.inventory.repository.reservations import SqlReservationRepository
from ironcart.inventory.repository.stock import SqlStockRepository
from ironcart.inventory.repository.tables import (
    movements,
    reservation_lines,
    reservations,
    sku_settings,
    stock_levels,
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

    def _open_repositories(self, session: AsyncSession) -> None:
        self.warehouses = SqlWarehouseRepository(session)
        self.stock = SqlStockRepository(session)
        self.reservations = SqlReservationRepository(session)
        self.movements = SqlMovementRepository(session)


__all__ = [
    "InventoryUnitOfWork",
    "movements",
    "reservation_lines",
    "reservations",
    "sku_settings",
    "stock_levels",
    "warehouses",
]
