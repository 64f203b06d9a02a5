"""The sandbox PSP's own SQLite file: payments, refunds, ledger; idempotency keys and the
webhook outbox come from `sandbox.common.SqliteStore` (one connection, WAL, see there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ironcart.sandbox.common import Claim, OutboxEvent, SqliteStore, StoredResponse
from ironcart.sandbox.psp_domain import Payment, Refund

SCHEMA = """
CREATE TABLE IF NOT EXISTS payments (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    account TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    status TEXT NOT NULL,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    amount_captured INTEGER NOT NULL,
    amount_refunded INTEGER NOT NULL,
    reference TEXT NOT NULL,
    card_token TEXT NOT NULL,
    decline_code TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (account, idempotency_key),
    CHECK (0 <= amount_refunded AND amount_refunded <= amount_captured
           AND amount_captured <= amount)
);
CREATE INDEX IF NOT EXISTS payments_by_reference ON payments (account, reference, seq);
CREATE TABLE IF NOT EXISTS refunds (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    payment_id TEXT NOT NULL REFERENCES payments (id),
    amount INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY,
    payment_id TEXT NOT NULL,
    operation TEXT NOT NULL,
    amount INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL,
    at TEXT NOT NULL
);
-- A payment is authorized, captured or voided at most once, whatever the code above does.
CREATE UNIQUE INDEX IF NOT EXISTS ledger_once ON ledger (payment_id, operation)
    WHERE operation IN ('authorize', 'capture', 'void');
"""

_PAYMENT_COLUMNS = (
    "id, status, amount, currency, amount_captured, amount_refunded, reference, card_token, "
    "decline_code, created_at, updated_at"
)


class SqlPspStore(SqliteStore):
    SUBJECT = "payment_id"

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)

    # Payments, refunds, ledger

    def add_payment(self, payment: Payment, *, account: str, key: str) -> None:
        self._db.execute(
            f"INSERT INTO payments (account, idempotency_key, {_PAYMENT_COLUMNS})"  # noqa: S608
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (account, key, *_payment_values(payment)),
        )

    def update_payment(self, payment: Payment, *, expected_status: str) -> bool:
        """Write `payment` if the stored one still has `expected_status` (False otherwise)."""
        cursor = self._db.execute(
            "UPDATE payments SET status = ?, amount_captured = ?, amount_refunded = ?,"
            " updated_at = ? WHERE id = ? AND status = ?",
            (
                payment.status,
                payment.amount_captured,
                payment.amount_refunded,
                payment.updated_at,
                payment.id,
                expected_status,
            ),
        )
        return cursor.rowcount == 1

    def get_payment(self, account: str, payment_id: str) -> Payment | None:
        return self._one_payment("id = ? AND account = ?", (payment_id, account))

    def payment_by_key(self, account: str, key: str) -> Payment | None:
        return self._one_payment("account = ? AND idempotency_key = ?", (account, key))

    def payments_with_reference(self, account: str, reference: str) -> list[Payment]:
        """Oldest first."""
        return self._payments("account = ? AND reference = ?", (account, reference))

    def all_payments(self) -> list[Payment]:
        """Oldest first."""
        return self._payments("1", ())

    def _payments(self, where: str, params: tuple[str, ...]) -> list[Payment]:
        rows = self._db.execute(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE {where} ORDER BY seq",  # noqa: S608
            params,
        ).fetchall()
        return [Payment(*row) for row in rows]

    def _one_payment(self, where: str, params: tuple[str, str]) -> Payment | None:
        row = self._db.execute(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE {where}",  # noqa: S608
            params,
        ).fetchone()
        return None if row is None else Payment(*row)

    def add_refund(self, refund: Refund) -> None:
        self._db.execute(
            "INSERT INTO refunds (id, payment_id, amount, created_at) VALUES (?, ?, ?, ?)",
            (refund.id, refund.payment_id, refund.amount, refund.created_at),
        )

    def add_ledger_entry(
        self, payment_id: str, operation: str, amount: int, *, key: str, at: str
    ) -> None:
        self._db.execute(
            "INSERT INTO ledger (payment_id, operation, amount, idempotency_key, at)"
            " VALUES (?, ?, ?, ?, ?)",
            (payment_id, operation, amount, key, at),
        )

    def ledger(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT payment_id, operation, amount, idempotency_key, at FROM ledger ORDER BY seq"
        ).fetchall()
        names = ("payment_id", "operation", "amount", "idempotency_key", "at")
        return [dict(zip(names, row, strict=True)) for row in rows]


def _payment_values(payment: Payment) -> tuple[Any, ...]:
    return (
        payment.id,
        payment.status,
        payment.amount,
        payment.currency,
        payment.amount_captured,
        payment.amount_refunded,
        payment.reference,
        payment.card_token,
        payment.decline_code,
        payment.created_at,
        payment.updated_at,
    )


__all__ = ["Claim", "OutboxEvent", "SqlPspStore", "StoredResponse"]
