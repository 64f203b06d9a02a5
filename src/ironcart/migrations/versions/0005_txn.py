"""TCC coordinator log (txn_transactions, txn_branches) and inventory's TCC fences

Revision ID: 0005_txn
Revises: 0004_cart
Create Date: 2026-11-25 16:12:10.025274
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0005_txn"
down_revision: str | None = "0004_cart"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of platform.database.Timestamp: migrations never import application code.
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "inventory_tcc_fences",
        sa.Column("xid", sa.String(length=64), nullable=False),
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("xid", "branch", name=op.f("pk_inventory_tcc_fences")),
    )
    op.create_table(
        "txn_branches",
        sa.Column("xid", sa.String(length=64), nullable=False),
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("participant", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("xid", "branch", name=op.f("pk_txn_branches")),
    )
    op.create_table(
        "txn_transactions",
        sa.Column("xid", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("xid", name=op.f("pk_txn_transactions")),
    )
    with op.batch_alter_table("txn_transactions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_txn_transactions_state_next_attempt_at", ["state", "next_attempt_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("txn_transactions", schema=None) as batch_op:
        batch_op.drop_index("ix_txn_transactions_state_next_attempt_at")

    op.drop_table("txn_transactions")
    op.drop_table("txn_branches")
    op.drop_table("inventory_tcc_fences")
