"""XA coordinator decision log (txn_xa_log)

Revision ID: 0010_xa
Revises: 0009_shipping
Create Date: 2026-11-26 09:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0010_xa"
down_revision: str | None = "0009_shipping"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of platform.database.Timestamp: migrations never import application code.
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "txn_xa_log",
        sa.Column("gid", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("resources", sa.String(length=400), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("gid", name=op.f("pk_txn_xa_log")),
    )
    op.create_index(
        "ix_txn_xa_log_state_next_attempt_at",
        "txn_xa_log",
        ["state", "next_attempt_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_txn_xa_log_state_next_attempt_at", table_name="txn_xa_log")
    op.drop_table("txn_xa_log")
