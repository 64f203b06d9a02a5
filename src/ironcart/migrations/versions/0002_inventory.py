"""inventory tables

Revision ID: 0002_inventory
Revises: 0001_identity
Create Date: 2026-11-25 14:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002_inventory"
down_revision: str | None = "0001_identity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of platform.database.Timestamp: migrations never import application code.
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "inventory_warehouses",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_warehouses")),
        sa.UniqueConstraint("code", name=op.f("uq_inventory_warehouses_code")),
    )
    op.create_table(
        "inventory_stock_levels",
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("warehouse_id", sa.String(length=36), nullable=False),
        sa.Column("on_hand", sa.Integer(), nullable=False),
        sa.Column("reserved", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "on_hand >= reserved", name=op.f("ck_inventory_stock_levels_on_hand_covers_reserved")
        ),
        sa.CheckConstraint(
            "reserved >= 0", name=op.f("ck_inventory_stock_levels_reserved_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["warehouse_id"],
            ["inventory_warehouses.id"],
            name=op.f("fk_inventory_stock_levels_warehouse_id_inventory_warehouses"),
        ),
        sa.PrimaryKeyConstraint("sku", "warehouse_id", name=op.f("pk_inventory_stock_levels")),
    )
    with op.batch_alter_table("inventory_stock_levels", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inventory_stock_levels_warehouse_id"), ["warehouse_id"], unique=False
        )

    op.create_table(
        "inventory_sku_settings",
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("low_stock_threshold", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("sku", name=op.f("pk_inventory_sku_settings")),
    )
    op.create_table(
        "inventory_reservations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_reservations")),
    )
    with op.batch_alter_table("inventory_reservations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_inventory_reservations_status_expires_at", ["status", "expires_at"], unique=False
        )

    op.create_table(
        "inventory_reservation_lines",
        sa.Column("reservation_id", sa.String(length=36), nullable=False),
        sa.Column("warehouse_id", sa.String(length=36), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["reservation_id"],
            ["inventory_reservations.id"],
            name="fk_inventory_reservation_lines_reservation",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "reservation_id", "warehouse_id", name=op.f("pk_inventory_reservation_lines")
        ),
    )
    op.create_table(
        "inventory_movements",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("warehouse_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("on_hand_delta", sa.Integer(), nullable=False),
        sa.Column("reserved_delta", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("reference", sa.String(length=64), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_movements")),
    )
    with op.batch_alter_table("inventory_movements", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inventory_movements_reference"), ["reference"], unique=False
        )
        batch_op.create_index(
            "ix_inventory_movements_sku_warehouse_id", ["sku", "warehouse_id"], unique=False
        )


def downgrade() -> None:
    # Dropping a table drops its indexes; MySQL refuses to drop an index a foreign key uses.
    for table in (
        "inventory_movements",
        "inventory_reservation_lines",
        "inventory_reservations",
        "inventory_sku_settings",
        "inventory_stock_levels",
        "inventory_warehouses",
    ):
        op.drop_table(table)
