"""Shipping: zones and their methods, shipments, what was shipped per order, tracking, outbox

Revision ID: 0009_shipping
Revises: 0008_inventory_outbox
Create Date: 2026-11-26 09:02:11.204517
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0009_shipping"
down_revision: str | None = "0008_inventory_outbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of platform.database.Timestamp: migrations never import application code.
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
SEQUENCE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "shipping_outbox",
        sa.Column("seq", SEQUENCE, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("published_at", TIMESTAMP, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_shipping_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_shipping_outbox_event_id")),
    )
    op.create_index(
        "ix_shipping_outbox_published_at_seq",
        "shipping_outbox",
        ["published_at", "seq"],
        unique=False,
    )

    op.create_table(
        "shipping_zones",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("countries", sa.Text(), nullable=False),
        sa.Column("postal_prefixes", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shipping_zones")),
        sa.UniqueConstraint("name", name=op.f("uq_shipping_zones_name")),
    )
    op.create_table(
        "shipping_methods",
        sa.Column("zone_id", sa.String(length=36), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("bands", sa.Text(), nullable=False),
        sa.Column("free_over_minor", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["zone_id"],
            ["shipping_zones.id"],
            name=op.f("fk_shipping_methods_zone_id_shipping_zones"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("zone_id", "code", name=op.f("pk_shipping_methods")),
    )

    op.create_table(
        "shipping_orders",
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("customer_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_shipping_orders")),
    )
    op.create_table(
        "shipping_order_lines",
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("ordered", sa.Integer(), nullable=False),
        sa.Column("shipped", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "shipped >= 0 AND shipped <= ordered",
            name=op.f("ck_shipping_order_lines_shipped_within_ordered"),
        ),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["shipping_orders.order_id"],
            name=op.f("fk_shipping_order_lines_order_id_shipping_orders"),
        ),
        sa.PrimaryKeyConstraint("order_id", "sku", name=op.f("pk_shipping_order_lines")),
    )

    op.create_table(
        "shipping_shipments",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("customer_id", sa.String(length=36), nullable=False),
        sa.Column("carrier", sa.String(length=32), nullable=False),
        sa.Column("carrier_shipment_id", sa.String(length=100), nullable=True),
        sa.Column("tracking_number", sa.String(length=100), nullable=True),
        sa.Column("label_url", sa.String(length=500), nullable=True),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("status_rank", sa.Integer(), nullable=False),
        sa.Column("status_at", TIMESTAMP, nullable=True),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["shipping_orders.order_id"],
            name=op.f("fk_shipping_shipments_order_id_shipping_orders"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shipping_shipments")),
    )
    op.create_index(
        "ix_shipping_shipments_order_id", "shipping_shipments", ["order_id"], unique=False
    )
    op.create_index(
        "ix_shipping_shipments_carrier_shipment",
        "shipping_shipments",
        ["carrier", "carrier_shipment_id"],
        unique=False,
    )
    op.create_table(
        "shipping_shipment_lines",
        sa.Column("shipment_id", sa.String(length=36), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "quantity > 0", name=op.f("ck_shipping_shipment_lines_quantity_positive")
        ),
        sa.ForeignKeyConstraint(
            ["shipment_id"],
            ["shipping_shipments.id"],
            name=op.f("fk_shipping_shipment_lines_shipment_id_shipping_shipments"),
        ),
        sa.PrimaryKeyConstraint("shipment_id", "sku", name=op.f("pk_shipping_shipment_lines")),
    )
    op.create_table(
        "shipping_tracking_events",
        sa.Column("carrier", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=100), nullable=False),
        sa.Column("shipment_id", sa.String(length=36), nullable=True),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("occurred_at", TIMESTAMP, nullable=False),
        sa.Column("location", sa.String(length=200), nullable=True),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("carrier", "event_id", name=op.f("pk_shipping_tracking_events")),
    )
    op.create_index(
        "ix_shipping_tracking_events_shipment_occurred",
        "shipping_tracking_events",
        ["shipment_id", "occurred_at"],
        unique=False,
    )


def downgrade() -> None:
    # Dropping a table drops its indexes (MySQL refuses to drop one a foreign key needs).
    op.drop_table("shipping_tracking_events")
    op.drop_table("shipping_shipment_lines")
    op.drop_table("shipping_shipments")
    op.drop_table("shipping_order_lines")
    op.drop_table("shipping_orders")
    op.drop_table("shipping_methods")
    op.drop_table("shipping_zones")
    op.drop_table("shipping_outbox")
