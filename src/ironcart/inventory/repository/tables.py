"""Inventory's tables, declared on the shared metadata. Only this context touches them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
)

from ironcart.platform.database import Timestamp, metadata
from ironcart.platform.outbox import outbox_table
from ironcart.platform.txn.fence import fence_table

warehouses = Table(
    "inventory_warehouses",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("code", String(32), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

stock_levels = Table(
    "inventory_stock_levels",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column(
        "warehouse_id",
        String(36),
        ForeignKey("inventory_warehouses.id"),
        primary_key=True,
        index=True,
    ),
    Column("on_hand", Integer, nullable=False),
    Column("reserved", Integer, nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    # The last line of defence: even a buggy query cannot oversell.
    CheckConstraint("reserved >= 0", name="reserved_not_negative"),
    CheckConstraint("on_hand >= reserved", name="on_hand_covers_reserved"),
)

sku_settings = Table(
    "inventory_sku_settings",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column("low_stock_threshold", Integer, nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

reservations = Table(
    "inventory_reservations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("sku", String(64), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("owner", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    # The expiry job's query: status = 'active' AND expires_at < now ORDER BY expires_at.
    Index("ix_inventory_reservations_status_expires_at", "status", "expires_at"),
    # A checkout's reservations: owner = "tcc:<xid>" (confirm, cancel, a repeated try).
    Index("ix_inventory_reservations_owner", "owner"),
)

reservation_lines = Table(
    "inventory_reservation_lines",
    metadata,
    Column(
        "reservation_id",
        String(36),
        # Named by hand: the conventional name would pass MySQL's 64-character limit.
        ForeignKey(
            "inventory_reservations.id",
            ondelete="CASCADE",
            name="fk_inventory_reservation_lines_reservation",
        ),
        primary_key=True,
    ),
    Column("warehouse_id", String(36), primary_key=True),
    Column("quantity", Integer, nullable=False),
)

movements = Table(
    "inventory_movements",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("sku", String(64), nullable=False),
    Column("warehouse_id", String(36), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("on_hand_delta", Integer, nullable=False),
    Column("reserved_delta", Integer, nullable=False),
    Column("reason", String(500), nullable=True),
    Column("reference", String(64), nullable=True, index=True),
    Column("created_at", Timestamp, nullable=False),
    # Reconciliation and a SKU's history group by (sku, warehouse_id).
    Index("ix_inventory_movements_sku_warehouse_id", "sku", "warehouse_id"),
)


def utc(value: datetime) -> datetime:
    """SQLite and MariaDB hand back naive datetimes; everything we store is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def rowcount(result: object) -> int:
    """Rows an UPDATE matched (MySQL drivers are set to report matched, not changed, rows)."""
    return int(result.rowcount)  # type: ignore[attr-defined]


# TCC participant fences (platform.txn.fence): one row per (global transaction, branch).
tcc_fences = fence_table(metadata, "inventory")

# What inventory publishes (`StockLow`), recorded in the transaction of the stock change.
inventory_outbox = outbox_table(metadata, "inventory")
