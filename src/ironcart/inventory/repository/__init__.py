"""Inventory's tables and queries, and its unit of work. Only this context touches `inventory_*`.

tables.py        the tables (declared on the shared metadata) and row helpers
stock.py         stock levels and per-SKU settings: conditional UPDATEs only
reservations.py  reservations, their lines, status transitions, the expiry claim
warehouses.py    warehouses, and the append-only movement ledger with reconciliation
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, OperationalError
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
_TRANSIENT_SQLSTATES = {"40P01", "40001"}
_TRANSIENT_MYSQL_ERRORS = {1213, 1205}


def is_transient(error: DBAPIError) -> bool:
    """A deadlock, serialization failure or busy timeout: the transaction may be run again."""
    original = error.orig
    if isinstance(error, OperationalError) and "database is locked" in str(original):
        return True  # SQLite: the busy timeout ran out while other writers held the lock
    sqlstate = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    if sqlstate in _TRANSIENT_SQLSTATES:
        return True
    args: tuple[object, ...] = getattr(original, "args", ())
    return bool(args) and args[0] in _TRANSIENT_MYSQL_ERRORS


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
    "is_transient",
    "movements",
    "reservation_lines",
    "reservations",
    "sku_settings",
    "stock_levels",
    "warehouses",
]
