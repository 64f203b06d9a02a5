"""Payments' tables, declared on the shared metadata, and their row mappers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
)

from ironcart.payments.domain import Payment, PaymentStatus, Refund, RefundStatus
from ironcart.platform.database import Timestamp, metadata
from ironcart.platform.money import Money
from ironcart.platform.outbox import outbox_table
from ironcart.platform.txn.fence import fence_table

payments = Table(
    "payments_payments",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("order_id", String(64), nullable=False),
    # The checkout's global transaction: one payment per (order, xid).
    Column("xid", String(64), nullable=False, index=True),
    Column("provider", String(32), nullable=False),
    Column("provider_payment_id", String(100), nullable=True),
    Column("status", String(24), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount_captured_minor", BigInteger, nullable=False),
    Column("amount_refunded_minor", BigInteger, nullable=False),
    # Refunds asked of the provider whose answer is not recorded yet.
    Column("amount_refund_pending_minor", BigInteger, nullable=False),
    Column("authorize_key", String(200), nullable=False, unique=True),
    Column("decline_code", String(64), nullable=True),
    Column("version", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    UniqueConstraint("order_id", "xid"),
    # Webhooks find their payment by the provider's id.
    Index("ix_payments_payments_provider_payment", "provider", "provider_payment_id"),
    # Reconciliation: status IN ('authorizing', 'capturing') AND updated_at < :before.
    Index("ix_payments_payments_status_updated_at", "status", "updated_at"),
    # The last line of defence: even a buggy query cannot refund more than was captured.
    CheckConstraint(
        "amount_refunded_minor + amount_refund_pending_minor <= amount_captured_minor",
        name="refunds_within_captured",
    ),
    CheckConstraint("amount_captured_minor <= amount_minor", name="captured_within_authorized"),
)

refunds = Table(
    "payments_refunds",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("payment_id", String(36), ForeignKey("payments_payments.id"), nullable=False),
    Column("order_id", String(64), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(16), nullable=False),
    # The caller's key: the same key for the same order is the same refund.
    Column("idempotency_key", String(200), nullable=False),
    Column("provider_refund_id", String(100), nullable=True),
    Column("failure_code", String(64), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    UniqueConstraint("order_id", "idempotency_key"),
    Index("ix_payments_refunds_payment_id", "payment_id"),
    Index("ix_payments_refunds_status_updated_at", "status", "updated_at"),
    CheckConstraint("amount_minor > 0", name="amount_positive"),
)

# Provider events already applied (or being applied): the primary key deduplicates deliveries.
webhook_events = Table(
    "payments_webhook_events",
    metadata,
    Column("provider", String(32), primary_key=True),
    Column("event_id", String(100), primary_key=True),
    Column("event_type", String(64), nullable=False),
    Column("provider_payment_id", String(100), nullable=True),
    Column("received_at", Timestamp, nullable=False),
)

payments_tcc_fences = fence_table(metadata, "payments")
payments_outbox = outbox_table(metadata, "payments")


def utc(value: datetime) -> datetime:
    """SQLite and MariaDB hand back naive datetimes; everything we store is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def rowcount(result: object) -> int:
    return int(result.rowcount)  # type: ignore[attr-defined]


def payment_of(row: Any) -> Payment:
    return Payment(
        id=row.id,
        order_id=row.order_id,
        xid=row.xid,
        provider=row.provider,
        provider_payment_id=row.provider_payment_id,
        status=PaymentStatus(row.status),
        amount=Money.from_minor(int(row.amount_minor), row.currency),
        amount_captured_minor=int(row.amount_captured_minor),
        amount_refunded_minor=int(row.amount_refunded_minor),
        amount_refund_pending_minor=int(row.amount_refund_pending_minor),
        authorize_key=row.authorize_key,
        decline_code=row.decline_code,
        version=int(row.version),
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
    )


def refund_of(row: Any) -> Refund:
    return Refund(
        id=row.id,
        payment_id=row.payment_id,
        order_id=row.order_id,
        amount=Money.from_minor(int(row.amount_minor), row.currency),
        status=RefundStatus(row.status),
        idempotency_key=row.idempotency_key,
        provider_refund_id=row.provider_refund_id,
        failure_code=row.failure_code,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
    )
