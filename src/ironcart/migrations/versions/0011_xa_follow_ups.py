"""XA decision log: follow-ups of the outcome (settled) and the initiator's reference

Revision ID: 0011_xa_follow_ups
Revises: 0010_xa
Create Date: 2026-11-27 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_xa_follow_ups"
down_revision: str | None = "0010_xa"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("txn_xa_log") as batch:
        # Rows written before follow-ups existed had none to run.
        batch.add_column(
            sa.Column("settled", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(sa.Column("reference", sa.String(length=64), nullable=True))
    with op.batch_alter_table("txn_xa_log") as batch:
        batch.alter_column("settled", server_default=None, existing_type=sa.Boolean())
    op.create_index(
        "ix_txn_xa_log_settled_next_attempt_at",
        "txn_xa_log",
        ["settled", "next_attempt_at"],
        unique=False,
    )
    op.create_index("ix_txn_xa_log_reference", "txn_xa_log", ["reference"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_txn_xa_log_reference", table_name="txn_xa_log")
    op.drop_index("ix_txn_xa_log_settled_next_attempt_at", table_name="txn_xa_log")
    with op.batch_alter_table("txn_xa_log") as batch:
        batch.drop_column("reference")
        batch.drop_column("settled")
