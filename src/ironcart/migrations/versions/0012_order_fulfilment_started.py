"""Orders: fulfilment started (staff began shipping; the customer can no longer cancel)

Revision ID: 0012_order_fulfilment_started
Revises: 0011_xa_follow_ups
Create Date: 2026-11-25 20:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_order_fulfilment_started"
down_revision: str | None = "0011_xa_follow_ups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ordering_orders") as batch:
        batch.add_column(
            sa.Column("fulfilment_started", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("ordering_orders") as batch:
        batch.alter_column("fulfilment_started", server_default=None, existing_type=sa.Boolean())


def downgrade() -> None:
    with op.batch_alter_table("ordering_orders") as batch:
        batch.drop_column("fulfilment_started")
