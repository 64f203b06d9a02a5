"""The sandbox carrier's use cases: idempotent shipment creation, lookups, and the tracking
events tests drive (`advance`, with faults) or the auto-advance mode emits.

Statuses: created -> picked_up -> in_transit -> out_for_delivery -> delivered, and
`exception` (a side state: the next advance goes on from the last step reached before it).
Advancing to a status emits one event per step passed, each `occurred_at` 1 ms after the
previous, so a receiver can tell their true order.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from ironcart.sandbox.carrier_store import CarrierShipment, SqlCarrierStore
from ironcart.sandbox.common import (
    MAX_TEXT,
    Conflict,
    InvalidRequest,
    NotFound,
    Operation,
    SandboxError,
    StoredResponse,
    json_response,
    new_id,
    now_iso,
    run_idempotent,
    text_of,
)

STEPS = ("created", "picked_up", "in_transit", "out_for_delivery", "delivered")
EXCEPTION = "exception"
UNDELIVERABLE_COUNTRY = "ZZ"  # a test hook: refused with 422 `undeliverable`
MAX_LINES = 200
MAX_DELAY_MS = 600_000
_COUNTRY = re.compile(r"[A-Z]{2}")
_POSTAL = re.compile(r"[A-Za-z0-9 -]{0,12}")
_ADVANCE_FIELDS = frozenset({"status", "location", "duplicate", "reorder", "drop", "delay_ms"})
logger = logging.getLogger("ironcart.sandbox.carrier")


class Undeliverable(SandboxError):
    status = 422


def new_shipment(payload: dict[str, Any]) -> CarrierShipment:
    reference = text_of(payload, "reference")
    where = payload.get("destination")
    if not isinstance(where, dict) or not _COUNTRY.fullmatch(str(where.get("country", ""))):
        raise InvalidRequest("invalid_request", "destination.country must be ISO 3166 alpha-2")
    postal = where.get("postal_code", "")
    if not isinstance(postal, str) or not _POSTAL.fullmatch(postal):
        raise InvalidRequest("invalid_request", "destination.postal_code: up to 12 characters")
    lines = payload.get("lines")
    if not isinstance(lines, list) or not 1 <= len(lines) <= MAX_LINES:
        raise InvalidRequest("invalid_request", f"lines: a list of 1..{MAX_LINES} items")
    for line in lines:
        quantity = line.get("quantity") if isinstance(line, dict) else None
        if type(quantity) is not int or quantity < 1:
            raise InvalidRequest("invalid_request", "each line has a sku and a quantity >= 1")
        text_of(line, "sku")
    if where["country"] == UNDELIVERABLE_COUNTRY:
        raise Undeliverable("undeliverable", "the carrier does not deliver to this destination")
    now = now_iso()
    return CarrierShipment(
        id=new_id("shp_"),
        reference=reference,
        tracking_number=new_id("SBX"),
        status="created",
        country=where["country"],
        postal_code=postal,
        lines=orjson.dumps(lines).decode(),
        created_at=now,
        updated_at=now,
    )


def steps_to(current: str, target: str, *, reached: str) -> list[str]:
    """The statuses an advance from `current` to `target` reports, in order. `reached`: the
    last step the shipment reached (before its exception, if it is in one)."""
    if target == EXCEPTION:
        if current == "delivered":
            raise Conflict("invalid_state", "a delivered shipment has no exception")
        return [EXCEPTION]
    if target not in STEPS:
        raise InvalidRequest("invalid_request", f"status must be one of {[*STEPS[1:], EXCEPTION]}")
    start, wanted = STEPS.index(reached), STEPS.index(target)
    # Out of an exception, the step reached may be reported again; never an earlier one.
    if wanted < start or (wanted == start and current != EXCEPTION):
        raise Conflict("invalid_state", f"the shipment is {current} ({reached}) already")
    return list(STEPS[start + 1 : wanted + 1]) or [target]


class CarrierService:
    def __init__(
        self,
        store: SqlCarrierStore,
        *,
        account: str,
        base_url: str,
        webhooks_enabled: bool,
        on_events: Callable[[], None],
        flush: Callable[[], int],
    ) -> None:
        self._store = store
        self._account = account
        self._base_url = base_url
        self._webhooks_enabled = webhooks_enabled
        self._on_events = on_events
        self._flush = flush

    async def create(
        self, *, key: str, payload: dict[str, Any], latency_seconds: float
    ) -> tuple[StoredResponse, bool]:
        """The answer to `POST /v1/shipments`, and whether it is a replay."""

        def operation(key: str, _attempt: int) -> StoredResponse:
            shipment = new_shipment(payload)
            self._store.add_shipment(shipment, account=self._account, key=key)
            return json_response(201, shipment.to_json(self._base_url))

        created: Operation = operation
        return await run_idempotent(
            self._store,
            account=self._account,
            key=key,
            path="/v1/shipments",
            payload=payload,
            latency_seconds=latency_seconds,
            operation=created,
        )

    def get(self, shipment_id: str) -> dict[str, Any]:
        shipment = self._get(shipment_id)
        return {**shipment.to_json(self._base_url), "tracking": self._store.tracking(shipment.id)}

    def _get(self, shipment_id: str) -> CarrierShipment:
        shipment = self._store.get_shipment(self._account, shipment_id)
        if shipment is None:
            raise NotFound("shipment_not_found", f"no shipment {shipment_id}")
        return shipment

    def advance(self, shipment_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Report the steps to `status`; faults: drop, duplicate, reorder, delay_ms."""
        unknown = set(payload) - _ADVANCE_FIELDS
        if unknown:
            raise InvalidRequest("invalid_request", f"unknown field(s): {sorted(unknown)}")
        faults = _faults(payload)
        location = payload.get("location", "Sandbox hub")
        if not isinstance(location, str) or len(location) > MAX_TEXT:
            raise InvalidRequest("invalid_request", f"location: a string of 0..{MAX_TEXT} chars")
        with self._store.transaction():
            shipment = self._get(shipment_id)
            target = text_of(payload, "status")
            steps = steps_to(shipment.status, target, reached=self._reached(shipment))
            events = self._emit(shipment, steps, location, faults)
            self._store.set_status(shipment.id, steps[-1], at=now_iso())
        self._on_events()
        if faults["reorder"]:
            self._flush()
        return {"shipment": self.get(shipment_id), "events": events}

    def auto_advance(self) -> int:
        """One step for each of this account's shipments not delivered yet (the auto-advance
        mode). A shipment that cannot move (it moved meanwhile) waits for the next round."""
        moved = 0
        for shipment in self._store.moving_shipments(self._account):
            target = STEPS[STEPS.index(self._reached(shipment)) + 1]
            try:
                self.advance(shipment.id, {"status": target})
            except SandboxError as error:
                logger.info("auto-advance skipped %s: %s", shipment.id, error.message)
                continue
            moved += 1
        return moved

    def _reached(self, shipment: CarrierShipment) -> str:
        """The last step the shipment reached: its status, or the step before its exception."""
        if shipment.status in STEPS:
            return shipment.status
        steps = [e["status"] for e in self._store.tracking(shipment.id) if e["status"] in STEPS]
        return steps[-1] if steps else STEPS[0]

    def label(self, shipment_id: str) -> str:
        """The shipment's label: a small plain-text document (what `label_url` serves)."""
        shipment = self._get(shipment_id)
        lines = "\n".join(
            f"  {line['quantity']} x {line['sku']}" for line in orjson.loads(shipment.lines)
        )
        return (
            f"SANDBOX CARRIER LABEL\nTracking: {shipment.tracking_number}\n"
            f"Shipment: {shipment.id}\nReference: {shipment.reference}\n"
            f"To: {shipment.postal_code} {shipment.country}\nContents:\n{lines}\n"
        )

    def _emit(
        self, shipment: CarrierShipment, steps: list[str], location: str, faults: dict[str, Any]
    ) -> list[dict[str, Any]]:
        started = datetime.now(UTC)
        events = []
        for index, status in enumerate(steps):
            occurred_at = (started + timedelta(milliseconds=index)).isoformat()
            event_id = new_id("evt_")
            data = {
                "shipment_id": shipment.id,
                "reference": shipment.reference,
                "tracking_number": shipment.tracking_number,
                "status": status,
                "occurred_at": occurred_at,
                "location": location,
            }
            self._store.add_tracking(
                shipment.id,
                event_id=event_id,
                status=status,
                occurred_at=occurred_at,
                location=location,
            )
            events.append({"id": event_id, **data})
            if self._webhooks_enabled:
                self._enqueue(event_id, shipment.id, data, faults)
        return events

    def _enqueue(
        self, event_id: str, shipment_id: str, data: dict[str, Any], faults: dict[str, Any]
    ) -> None:
        created = time.time()
        body = orjson.dumps(
            {"id": event_id, "type": "shipment.tracking", "created": int(created), "data": data}
        )
        state = "dropped" if faults["drop"] else "held" if faults["reorder"] else "pending"
        for _ in range(2 if faults["duplicate"] else 1):
            self._store.add_event(
                event_id,
                "shipment.tracking",
                shipment_id,
                body,
                state=state,
                due=created + faults["delay_ms"] / 1000,
            )

    def webhook_events(self) -> list[dict[str, Any]]:
        return self._store.events()


def _faults(payload: dict[str, Any]) -> dict[str, Any]:
    faults: dict[str, Any] = {}
    for name in ("duplicate", "reorder", "drop"):
        value = payload.get(name, False)
        if not isinstance(value, bool):
            raise InvalidRequest("invalid_request", f"{name} must be a boolean")
        faults[name] = value
    delay = payload.get("delay_ms", 0)
    if type(delay) is not int or not 0 <= delay <= MAX_DELAY_MS:
        raise InvalidRequest(
            "invalid_request", f"delay_ms must be an integer in [0, {MAX_DELAY_MS}]"
        )
    faults["delay_ms"] = delay
    return faults
