"""Payments: payments, refunds, webhook events seen, TCC fences and the outbox

Revision ID: 0006_payments
Revises: 0005_txn
Create Date: 2026-11-25 16:20:47.180334
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0006_payments"
down_revision: str | None = "0005_txn"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of platform.database.Timestamp: migrations never import application code.
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
SEQUENCE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "payments_outbox",
        sa.Column("seq", SEQUENCE, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("published_at", TIMESTAMP, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_payments_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_payments_outbox_event_id")),
    )
    with op.batch_alter_table("payments_outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_payments_outbox_published_at_seq", ["published_at", "seq"], unique=False
        )

    op.create_table(
        "payments_payments",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("xid", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("provider_payment_id", sa.String(length=100), nullable=True),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount_captured_minor", sa.BigInteger(), nullable=False),
        sa.Column("amount_refunded_minor", sa.BigInteger(), nullable=False),
        sa.Column("amount_refund_pending_minor", sa.BigInteger(), nullable=False),
        sa.Column("authorize_key", sa.String(length=200), nullable=False),
        sa.Column("decline_code", sa.String(length=64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "amount_captured_minor <= amount_minor",
            name=op.f("ck_payments_payments_captured_within_authorized"),
        ),
        sa.CheckConstraint(
            "amount_refunded_minor + amount_refund_pending_minor <= amount_captured_minor",
            name=op.f("ck_payments_payments_refunds_within_captured"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments_payments")),
        sa.UniqueConstraint("authorize_key", name=op.f("uq_payments_payments_authorize_key")),
        sa.UniqueConstraint("order_id", "xid", name=op.f("uq_payments_payments_order_id")),
    )
    with op.batch_alter_table("payments_payments", schema=None) as batch_op:
        batch_op.create_index(
            "ix_payments_payments_provider_payment",
            ["provider", "provider_payment_id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_payments_payments_status_updated_at", ["status", "updated_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_payments_payments_xid"), ["xid"], unique=False)

    op.create_table(
        "payments_tcc_fences",
        sa.Column("xid", sa.String(length=64), nullable=False),
        sa.Column("branch", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("xid", "branch", name=op.f("pk_payments_tcc_fences")),
    )
    op.create_table(
        "payments_webhook_events",
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=100), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("provider_payment_id", sa.String(length=100), nullable=True),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("provider", "event_id", name=op.f("pk_payments_webhook_events")),
    )
    op.create_table(
        "payments_refunds",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("payment_id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("provider_refund_id", sa.String(length=100), nullable=True),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_payments_refunds_amount_positive")),
        sa.ForeignKeyConstraint(
            ["payment_id"],
            ["payments_payments.id"],
            name=op.f("fk_payments_refunds_payment_id_payments_payments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments_refunds")),
        sa.UniqueConstraint(
            "order_id", "idempotency_key", name=op.f("uq_payments_refunds_order_id")
        ),
    )
    with op.batch_alter_table("payments_refunds", schema=None) as batch_op:
        batch_op.create_index("ix_payments_refunds_payment_id", ["payment_id"], unique=False)
        batch_op.create_index(
            "ix_payments_refunds_status_updated_at", ["status", "updated_at"], unique=False
        )


def downgrade() -> None:
    # Dropping a table drops its indexes (MySQL refuses to drop one a foreign key needs).
    op.drop_table("payments_refunds")
    op.drop_table("payments_webhook_events")
    op.drop_table("payments_tcc_fences")
    op.drop_table("payments_payments")
    op.drop_table("payments_outbox")
