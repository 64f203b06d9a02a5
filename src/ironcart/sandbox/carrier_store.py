"""The sandbox carrier's own SQLite file: shipments and their tracking; idempotency keys and
the webhook outbox come from `sandbox.common.SqliteStore`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ironcart.sandbox.common import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS shipments (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    account TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    reference TEXT NOT NULL,
    tracking_number TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    country TEXT NOT NULL,
    postal_code TEXT NOT NULL,
    lines TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (account, idempotency_key)
);
CREATE TABLE IF NOT EXISTS tracking (
    seq INTEGER PRIMARY KEY,
    shipment_id TEXT NOT NULL REFERENCES shipments (id),
    event_id TEXT NOT NULL,
    status TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    location TEXT NOT NULL
);
"""
_COLUMNS = (
    "id, reference, tracking_number, status, country, postal_code, lines, created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class CarrierShipment:
    id: str
    reference: str
    tracking_number: str
    status: str
    country: str
    postal_code: str
    lines: str  # JSON
    created_at: str
    updated_at: str

    def to_json(self, base_url: str = "") -> dict[str, Any]:
        return {
            "id": self.id,
            "reference": self.reference,
            "tracking_number": self.tracking_number,
            "status": self.status,
            "destination": {"country": self.country, "postal_code": self.postal_code},
            "lines": orjson.loads(self.lines),
            "label_url": f"{base_url}/v1/shipments/{self.id}/label",
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class SqlCarrierStore(SqliteStore):
    SUBJECT = "shipment_id"

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)

    def add_shipment(self, shipment: CarrierShipment, *, account: str, key: str) -> None:
        self._db.execute(
            f"INSERT INTO shipments (account, idempotency_key, {_COLUMNS})"  # noqa: S608
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                account,
                key,
                shipment.id,
                shipment.reference,
                shipment.tracking_number,
                shipment.status,
                shipment.country,
                shipment.postal_code,
                shipment.lines,
                shipment.created_at,
                shipment.updated_at,
            ),
        )

    def set_status(self, shipment_id: str, status: str, *, at: str) -> None:
        self._db.execute(
            "UPDATE shipments SET status = ?, updated_at = ? WHERE id = ?",
            (status, at, shipment_id),
        )

    def get_shipment(self, account: str, shipment_id: str) -> CarrierShipment | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM shipments WHERE id = ? AND account = ?",  # noqa: S608
            (shipment_id, account),
        ).fetchone()
        return None if row is None else CarrierShipment(*row)

    def moving_shipments(self, account: str) -> list[CarrierShipment]:
        """The account's shipments not delivered yet, oldest first (auto-advance)."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM shipments"  # noqa: S608
            " WHERE account = ? AND status != 'delivered' ORDER BY seq",
            (account,),
        ).fetchall()
        return [CarrierShipment(*row) for row in rows]

    def add_tracking(
        self, shipment_id: str, *, event_id: str, status: str, occurred_at: str, location: str
    ) -> None:
        self._db.execute(
            "INSERT INTO tracking (shipment_id, event_id, status, occurred_at, location)"
            " VALUES (?, ?, ?, ?, ?)",
            (shipment_id, event_id, status, occurred_at, location),
        )

    def tracking(self, shipment_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT event_id, status, occurred_at, location FROM tracking"
            " WHERE shipment_id = ? ORDER BY seq",
            (shipment_id,),
        ).fetchall()
        names = ("id", "status", "occurred_at", "location")
        return [dict(zip(names, row, strict=True)) for row in rows]
