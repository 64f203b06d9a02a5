"""The sandbox PSP's own SQLite file: payments, refunds, ledger, idempotency keys, webhook outbox.

One connection, used from the event-loop thread only (each call is well under a millisecond);
WAL with synchronous=NORMAL, so a commit survives a crash of the process (not of the machine).
Methods run in the caller's `transaction()`, or in autocommit outside one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ironcart.sandbox.psp_domain import Conflict, IdempotencyKeyReused, Payment, Refund

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
CREATE TABLE IF NOT EXISTS idempotency (
    account TEXT NOT NULL,
    key TEXT NOT NULL,
    path TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    state TEXT NOT NULL,  -- in_progress | done | released (free to process afresh)
    attempts INTEGER NOT NULL,
    status INTEGER,
    body BLOB,
    PRIMARY KEY (account, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS webhook_events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    payment_id TEXT NOT NULL,
    body BLOB NOT NULL,
    state TEXT NOT NULL,  -- pending | sending | held | delivered | failed | dropped
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status INTEGER
);
CREATE INDEX IF NOT EXISTS webhook_events_due ON webhook_events (next_attempt_at)
    WHERE state = 'pending';
"""

_PAYMENT_COLUMNS = (
    "id, status, amount, currency, amount_captured, amount_refunded, reference, card_token, "
    "decline_code, created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Claim:
    """A key now held by the caller (`attempt` counts the tries that were not stored)."""

    attempt: int


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    seq: int
    body: bytes
    attempts: int


class SqlPspStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._recover()

    def _recover(self) -> None:
        """Whatever a killed process was doing did not commit: free its keys, resend its events."""
        with self.transaction():
            self._db.execute(
                "UPDATE idempotency SET state = 'released' WHERE state = 'in_progress'"
            )
            self._db.execute("UPDATE webhook_events SET state = 'pending' WHERE state = 'sending'")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # Idempotency keys

    def claim_key(
        self, account: str, key: str, *, path: str, fingerprint: bytes
    ) -> Claim | StoredResponse:
        """Hold `key`, or the response stored for it; 422 for another request, 409 if held."""
        with self.transaction():
            row = self._db.execute(
                "SELECT fingerprint, state, attempts, status, body FROM idempotency"
                " WHERE account = ? AND key = ?",
                (account, key),
            ).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO idempotency (account, key, path, fingerprint, state, attempts)"
                    " VALUES (?, ?, ?, ?, 'in_progress', 1)",
                    (account, key, path, fingerprint),
                )
                return Claim(attempt=1)
            stored_fingerprint, state, attempts, status, body = row
            if state == "released":
                self._db.execute(
                    "UPDATE idempotency SET state = 'in_progress', attempts = ?, path = ?,"
                    " fingerprint = ? WHERE account = ? AND key = ?",
                    (attempts + 1, path, fingerprint, account, key),
                )
                return Claim(attempt=attempts + 1)
        if stored_fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                "idempotency_key_reused", "this Idempotency-Key was used for another request"
            )
        if state == "in_progress":
            raise Conflict("idempotency_key_in_use", "a request with this key is still running")
        return StoredResponse(status=status, body=body)

    def complete_key(self, account: str, key: str, response: StoredResponse) -> None:
        self._db.execute(
            "UPDATE idempotency SET state = 'done', status = ?, body = ?"
            " WHERE account = ? AND key = ?",
            (response.status, response.body, account, key),
        )

    def release_key(self, account: str, key: str) -> None:
        self._db.execute(
            "UPDATE idempotency SET state = 'released' WHERE account = ? AND key = ?",
            (account, key),
        )

    def forget_key(self, account: str, key: str) -> None:
        self._db.execute(
            "DELETE FROM idempotency WHERE account = ? AND key = ? AND state = 'in_progress'",
            (account, key),
        )

    def key_in_progress(self, account: str, key: str, path: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM idempotency WHERE account = ? AND key = ? AND path = ?"
            " AND state = 'in_progress'",
            (account, key, path),
        ).fetchone()
        return row is not None

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

    # Webhook outbox

    def add_event(
        self,
        event_id: str,
        event_type: str,
        payment_id: str,
        body: bytes,
        *,
        state: str,
        due: float,
    ) -> None:
        self._db.execute(
            "INSERT INTO webhook_events (event_id, type, payment_id, body, state, next_attempt_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (event_id, event_type, payment_id, body, state, due),
        )

    def take_due_events(self, now: float, limit: int) -> list[OutboxEvent]:
        """Up to `limit` due events, marked `sending` (a restart makes them pending again)."""
        with self.transaction():
            rows = self._db.execute(
                "SELECT seq, body, attempts FROM webhook_events WHERE state = 'pending'"
                " AND next_attempt_at <= ? ORDER BY next_attempt_at, seq LIMIT ?",
                (now, limit),
            ).fetchall()
            self._mark_sending([row[0] for row in rows])
        return [OutboxEvent(*row) for row in rows]

    def take_held_events(self) -> list[OutboxEvent]:
        """Every held-back event, newest first, marked `sending`."""
        with self.transaction():
            rows = self._db.execute(
                "SELECT seq, body, attempts FROM webhook_events WHERE state = 'held'"
                " ORDER BY seq DESC"
            ).fetchall()
            self._mark_sending([row[0] for row in rows])
        return [OutboxEvent(*row) for row in rows]

    def _mark_sending(self, seqs: list[int]) -> None:
        self._db.executemany(
            "UPDATE webhook_events SET state = 'sending' WHERE seq = ?", [(seq,) for seq in seqs]
        )

    def next_event_due_at(self) -> float | None:
        row = self._db.execute(
            "SELECT MIN(next_attempt_at) FROM webhook_events WHERE state = 'pending'"
        ).fetchone()
        due: float | None = row[0]
        return due

    def record_attempt(
        self, seq: int, *, attempts: int, state: str, due: float, last_status: int | None
    ) -> None:
        self._db.execute(
            "UPDATE webhook_events SET state = ?, attempts = ?, next_attempt_at = ?,"
            " last_status = ? WHERE seq = ?",
            (state, attempts, due, last_status, seq),
        )

    def events(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT event_id, type, payment_id, state, attempts, last_status FROM webhook_events"
            " ORDER BY seq"
        ).fetchall()
        names = ("id", "type", "payment_id", "state", "attempts", "last_status")
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
