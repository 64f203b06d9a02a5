"""The port to a carrier, in the carrier-neutral terms the service uses.

Creating a shipment carries an idempotency key (our shipment id), so an adapter may retry
it and the carrier makes one label. Adapters raise only these errors:

CarrierError
 ├── CarrierRefused        a 4xx: the carrier will not take this shipment (`code`, `status`)
 └── CarrierDown           5xx, timeouts, connection errors, after the adapter's retries

Webhooks are checked by a `TrackingVerifier` of the same carrier (signature, age, shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CarrierLabel:
    """What the carrier answers to a new shipment."""

    id: str
    tracking_number: str
    label_url: str | None
    reference: str


@dataclass(frozen=True, slots=True)
class TrackingReport:
    """A verified carrier event about one shipment (its status when the event happened)."""

    event_id: str
    carrier_shipment_id: str
    reference: str
    status: str
    occurred_at: datetime
    location: str | None


class CarrierError(Exception):
    """Something the carrier said, or could not say."""


class CarrierRefused(CarrierError):
    def __init__(self, status: int, code: str, message: str = "") -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"{status} {code}: {message}")


class CarrierDown(CarrierError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class CarrierGateway(Protocol):
    async def create_shipment(
        self,
        *,
        reference: str,
        country: str,
        postal_code: str,
        lines: Sequence[tuple[str, int]],
        idempotency_key: str,
    ) -> CarrierLabel:
        """A label and tracking number for a parcel with these lines to this destination."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class TrackingVerifier(Protocol):
    def verify(self, body: bytes, signature_header: str | None, *, now: float) -> TrackingReport:
        """The event if signed by the carrier within the tolerance; a domain error otherwise."""
        ...
