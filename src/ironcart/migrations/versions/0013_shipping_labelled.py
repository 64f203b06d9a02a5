"""Shipping: the quantity per order line on labelled shipments (what the carrier has taken)

`shipped` holds what every shipment not failed takes, `requested` ones included (the
over-ship guard); `labelled` counts only shipments the carrier labelled: an order is fully
shipped when `labelled` reaches `ordered`.

Revision ID: 0013_shipping_labelled
Revises: 0012_order_fulfilment_started
Create Date: 2026-11-25 20:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_shipping_labelled"
down_revision: str | None = "0012_order_fulfilment_started"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What labelled shipments (those with the carrier's id) hold, per order and SKU.
BACKFILL = """
UPDATE shipping_order_lines SET labelled = (
    SELECT COALESCE(SUM(sl.quantity), 0)
    FROM shipping_shipment_lines sl
    JOIN shipping_shipments s ON s.id = sl.shipment_id
    WHERE s.order_id = shipping_order_lines.order_id
      AND sl.sku = shipping_order_lines.sku
      AND s.carrier_shipment_id IS NOT NULL
)
"""


def upgrade() -> None:
    with op.batch_alter_table("shipping_order_lines") as batch:
        batch.add_column(
            sa.Column("labelled", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
    op.execute(BACKFILL)
    with op.batch_alter_table("shipping_order_lines") as batch:
        batch.alter_column("labelled", server_default=None, existing_type=sa.Integer())
        batch.create_check_constraint(
            op.f("ck_shipping_order_lines_labelled_within_shipped"),
            "labelled >= 0 AND labelled <= shipped",
        )


def downgrade() -> None:
    with op.batch_alter_table("shipping_order_lines") as batch:
        batch.drop_constraint(
            op.f("ck_shipping_order_lines_labelled_within_shipped"), type_="check"
        )
        batch.drop_column("labelled")
