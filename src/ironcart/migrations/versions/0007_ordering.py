"""Ordering: orders, lines, status history, idempotency keys, outbox; inventory owner index

Revision ID: 0007_ordering
Revises: 0006_payments
Create Date: 2026-11-25 16:42:39.571303
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0007_ordering"
down_revision: str | None = "0006_payments"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of platform.database.Timestamp: migrations never import application code.
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "ordering_idempotency_keys",
        sa.Column("customer_id", sa.String(length=36), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("claim_token", sa.String(length=36), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("order_id", sa.String(length=36), nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint(
            "customer_id", "idempotency_key", name=op.f("pk_ordering_idempotency_keys")
        ),
    )
    op.create_index(
        op.f("ix_ordering_idempotency_keys_expires_at"),
        "ordering_idempotency_keys",
        ["expires_at"],
        unique=False,
    )
    op.create_table(
        "ordering_orders",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("customer_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("subtotal_minor", sa.BigInteger(), nullable=False),
        sa.Column("shipping_minor", sa.BigInteger(), nullable=False),
        sa.Column("tax_minor", sa.BigInteger(), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("refunded_minor", sa.BigInteger(), nullable=False),
        sa.Column("shipping_method", sa.String(length=32), nullable=False),
        sa.Column("shipping_address", sa.LargeBinary(), nullable=False),
        sa.Column("xid", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("compensation_pending", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ordering_orders")),
        sa.UniqueConstraint("xid", name=op.f("uq_ordering_orders_xid")),
    )
    op.create_index(
        "ix_ordering_orders_created_at_id", "ordering_orders", ["created_at", "id"], unique=False
    )
    op.create_index(
        "ix_ordering_orders_compensation_pending_updated_at",
        "ordering_orders",
        ["compensation_pending", "updated_at"],
        unique=False,
    )
    op.create_index(
        "ix_ordering_orders_customer_id_created_at_id",
        "ordering_orders",
        ["customer_id", "created_at", "id"],
        unique=False,
    )
    op.create_index(
        "ix_ordering_orders_status_created_at",
        "ordering_orders",
        ["status", "created_at"],
        unique=False,
    )
    op.create_table(
        "ordering_outbox",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("published_at", TIMESTAMP, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_ordering_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_ordering_outbox_event_id")),
    )
    op.create_index(
        "ix_ordering_outbox_published_at_seq",
        "ordering_outbox",
        ["published_at", "seq"],
        unique=False,
    )
    op.create_table(
        "ordering_status_history",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("from_status", sa.String(length=24), nullable=False),
        sa.Column("to_status", sa.String(length=24), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ordering_status_history")),
    )
    op.create_index(
        op.f("ix_ordering_status_history_order_id"),
        "ordering_status_history",
        ["order_id"],
        unique=False,
    )
    op.create_table(
        "ordering_order_lines",
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("product_name", sa.String(length=200), nullable=False),
        sa.Column("variant_name", sa.String(length=200), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("unit_price_minor", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["ordering_orders.id"],
            name=op.f("fk_ordering_order_lines_order_id_ordering_orders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("order_id", "position", name=op.f("pk_ordering_order_lines")),
    )
    op.create_index(
        "ix_inventory_reservations_owner", "inventory_reservations", ["owner"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_inventory_reservations_owner", table_name="inventory_reservations")
    op.drop_table("ordering_order_lines")
    op.drop_index(op.f("ix_ordering_status_history_order_id"), table_name="ordering_status_history")
    op.drop_table("ordering_status_history")
    op.drop_index("ix_ordering_outbox_published_at_seq", table_name="ordering_outbox")
    op.drop_table("ordering_outbox")
    op.drop_index("ix_ordering_orders_status_created_at", table_name="ordering_orders")
    op.drop_index("ix_ordering_orders_customer_id_created_at_id", table_name="ordering_orders")
    op.drop_index("ix_ordering_orders_created_at_id", table_name="ordering_orders")
    op.drop_index(
        "ix_ordering_orders_compensation_pending_updated_at", table_name="ordering_orders"
    )
    op.drop_table("ordering_orders")
    op.drop_index(
        op.f("ix_ordering_idempotency_keys_expires_at"), table_name="ordering_idempotency_keys"
    )
    op.drop_table("ordering_idempotency_keys")
