"""Inventory outbox: StockLow recorded in the transaction of the stock change

Revision ID: 0008_inventory_outbox
Revises: 0007_ordering
Create Date: 2026-11-25 17:12:21.506120
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0008_inventory_outbox"
down_revision: str | None = "0007_ordering"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of platform.database.Timestamp: migrations never import application code.
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "inventory_outbox",
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
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_inventory_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_inventory_outbox_event_id")),
    )
    op.create_index(
        "ix_inventory_outbox_published_at_seq",
        "inventory_outbox",
        ["published_at", "seq"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_inventory_outbox_published_at_seq", table_name="inventory_outbox")
    op.drop_table("inventory_outbox")
