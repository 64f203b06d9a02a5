"""Shipping rules: zones and their rates, the quote, shipments and their tracking statuses.

Pure Python, no I/O. Money is `Money`; weights are whole grams.

Zones. A zone lists ISO 3166 alpha-2 countries and, optionally, postal-code prefixes. A
destination matches a zone when its country is listed (a zone with no countries is "the
rest of the world" and matches every country) and, if the zone has prefixes, its postal
code (upper-cased, spaces removed) starts with one of them. **The most specific matching
zone wins**: the longest matching postal prefix first, then a zone naming countries before
the rest of the world, then the zone listing fewer countries, then the name (so the choice
is always the same). Only the winner's methods are offered.

Rates. A method has weight bands `up_to_grams -> price` (inclusive, increasing): a parcel
costs the price of the first band it fits in; a parcel heavier than the last band is not
offered that method. A method with `free_over` ships free when the subtotal is at least
that much. A method is offered only in its own currency.

Shipments.

    requested ──> created ──> picked_up ──> in_transit ──> out_for_delivery ──> delivered
        │            (each may also go to `exception`, a side state later events leave)
        └──> failed (the carrier refused it: nothing was shipped)

A shipment stays `requested`, holding its quantities, while the carrier's answer is unknown
(it could not be reached): it is asked again, with the same idempotency key, until it labels
or refuses the shipment. Only labelled shipments count as shipped for the order.

Carrier events move a shipment forward only, by rank: a late `in_transit` after
`delivered` is kept in the tracking history but does not move the status back.

IronCartError
 ├── NotFound
 │    ├── ZoneNotFound               code shipping.zone_not_found
 │    ├── ShipmentNotFound           code shipping.shipment_not_found
 │    ├── OrderNotFound              code shipping.order_not_found
 │    └── UnknownCarrier             code shipping.unknown_carrier (webhook path, carrier)
 ├── Conflict
 │    ├── ZoneNameTaken              code shipping.zone_name_taken
 │    ├── OrderNotShippable          code shipping.order_not_shippable (status)
 │    └── ExceedsOrdered             code shipping.exceeds_ordered (sku, requested, left)
 ├── InvalidRequest
 │    ├── InvalidShippingData        code shipping.invalid
 │    ├── MethodNotOffered           code shipping.method_not_offered (method)
 │    └── CarrierRejected            code shipping.carrier_rejected (carrier_code)
 ├── PreconditionFailed
 │    └── ZoneChanged                code shipping.zone_changed (stale If-Match)
 ├── BadRequest
 │    ├── InvalidWebhookSignature    code shipping.webhook_signature_invalid
 │    ├── WebhookOutsideTolerance    code shipping.webhook_timestamp_out_of_tolerance
 │    └── InvalidWebhookPayload      code shipping.webhook_payload_invalid
 └── ServiceUnavailable
      ├── CarrierUnavailable         code shipping.carrier_unavailable
      └── ShippingContention         code shipping.contention (lost every database retry)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from ironcart.platform.errors import (
    BadRequest,
    Conflict,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    ServiceUnavailable,
)
from ironcart.platform.money import Money, MoneyError

MAX_WEIGHT_GRAMS = 1_000_000  # one tonne: beyond any parcel
MAX_COUNTRIES = 250
MAX_PREFIXES = 100
MAX_METHODS = 20
MAX_BANDS = 50
MAX_PRICE = Decimal("1000000")
MAX_LINES = 200
MAX_QUANTITY = 100_000
CARRIER_PATTERN = r"^[a-z0-9_-]{1,32}$"
_COUNTRY = re.compile(r"[A-Z]{2}")
_PREFIX = re.compile(r"[A-Z0-9]{1,10}")
_CODE = re.compile(r"[a-z0-9_-]{1,32}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_POSTAL = re.compile(r"[A-Z0-9-]{0,12}")


class ZoneNotFound(NotFound):
    code = "shipping.zone_not_found"
    title = "Shipping zone not found"


class ShipmentNotFound(NotFound):
    code = "shipping.shipment_not_found"
    title = "Shipment not found"


class OrderNotFound(NotFound):
    code = "shipping.order_not_found"
    title = "Order not found"


class UnknownCarrier(NotFound):
    code = "shipping.unknown_carrier"
    title = "Unknown carrier"


class ZoneNameTaken(Conflict):
    code = "shipping.zone_name_taken"
    title = "A shipping zone has this name already"


class OrderNotShippable(Conflict):
    code = "shipping.order_not_shippable"
    title = "The order cannot be shipped"

    def __init__(self, status: str) -> None:
        super().__init__(f"An order in status {status!r} cannot be shipped.", order_status=status)


class ExceedsOrdered(Conflict):
    code = "shipping.exceeds_ordered"
    title = "More would be shipped than was ordered"

    def __init__(self, *, sku: str, requested: int, left: int) -> None:
        super().__init__(
            f"{requested} x {sku} requested, {left} left to ship.",
            sku=sku,
            requested=requested,
            left=left,
        )


class InvalidShippingData(InvalidRequest):
    code = "shipping.invalid"
    title = "Invalid shipping data"


class MethodNotOffered(InvalidRequest):
    code = "shipping.method_not_offered"
    title = "The shipping method is not offered for this destination and parcel"

    def __init__(self, method: str) -> None:
        super().__init__(
            f"Shipping method {method!r} is not offered for this destination, weight and currency.",
            method=method,
        )


class CarrierRejected(InvalidRequest):
    code = "shipping.carrier_rejected"
    title = "The carrier refused the shipment"

    def __init__(self, carrier_code: str) -> None:
        super().__init__(
            f"The carrier refused the shipment ({carrier_code}).", carrier_code=carrier_code
        )


class ZoneChanged(PreconditionFailed):
    code = "shipping.zone_changed"
    title = "The shipping zone changed since it was read"


class InvalidWebhookSignature(BadRequest):
    code = "shipping.webhook_signature_invalid"
    title = "Invalid webhook signature"


class WebhookOutsideTolerance(BadRequest):
    code = "shipping.webhook_timestamp_out_of_tolerance"
    title = "Webhook timestamp outside the tolerance"


class InvalidWebhookPayload(BadRequest):
    code = "shipping.webhook_payload_invalid"
    title = "Invalid webhook payload"


class CarrierUnavailable(ServiceUnavailable):
    code = "shipping.carrier_unavailable"
    title = "The carrier cannot be reached"

    def __init__(self, detail: str = "The carrier cannot be reached; retry.") -> None:
        super().__init__(detail, headers={"Retry-After": "5"})


class ShippingContention(ServiceUnavailable):
    code = "shipping.contention"
    title = "Too much contention; retry"

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "1"})


# -- zones, methods and the quote ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WeightBand:
    up_to_grams: int
    price: Money


@dataclass(frozen=True, slots=True)
class ShippingMethod:
    code: str
    name: str
    currency: str
    bands: tuple[WeightBand, ...]
    free_over: Money | None = None

    def price_for(self, *, weight_grams: int, subtotal: Money) -> Money | None:
        """The price of a parcel of this weight and subtotal; None when it is too heavy."""
        if subtotal.currency != self.currency:
            return None
        band = next((band for band in self.bands if weight_grams <= band.up_to_grams), None)
        if band is None:
            return None
        if self.free_over is not None and subtotal.amount >= self.free_over.amount:
            return Money.zero(self.currency)
        return band.price


@dataclass(frozen=True, slots=True)
class Zone:
    id: str
    name: str
    countries: tuple[str, ...]
    postal_prefixes: tuple[str, ...]
    methods: tuple[ShippingMethod, ...]
    version: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def specificity(self, destination: Destination) -> tuple[int, int, int] | None:
        """How closely this zone fits (bigger is closer); None when it does not match."""
        if self.countries and destination.country not in self.countries:
            return None
        prefix = 0
        if self.postal_prefixes:
            matching = [p for p in self.postal_prefixes if destination.postal_code.startswith(p)]
            if not matching:
                return None
            prefix = max(len(p) for p in matching)
        return (prefix, int(bool(self.countries)), -len(self.countries))


@dataclass(frozen=True, slots=True)
class Destination:
    country: str
    postal_code: str = ""


@dataclass(frozen=True, slots=True)
class Quote:
    method_code: str
    method_name: str
    zone_id: str
    zone_name: str
    price: Money


def destination(country: str, postal_code: str | None = None) -> Destination:
    """A checked destination: an ISO 3166 alpha-2 country, a normalised postal code."""
    if not isinstance(country, str) or not _COUNTRY.fullmatch(country):
        raise InvalidShippingData("country must be an ISO 3166 alpha-2 code, e.g. GB.")
    postal = normalise_postal_code(postal_code or "")
    if not _POSTAL.fullmatch(postal):
        raise InvalidShippingData("postal_code must be up to 12 letters, digits or dashes.")
    return Destination(country, postal)


def normalise_postal_code(value: str) -> str:
    return "".join(value.split()).upper()


def parcel_weight(weight_grams: int) -> int:
    if isinstance(weight_grams, bool) or not 0 <= weight_grams <= MAX_WEIGHT_GRAMS:
        raise InvalidShippingData(f"weight_grams must be in [0, {MAX_WEIGHT_GRAMS}].")
    return weight_grams


def matching_zone(zones: Iterable[Zone], where: Destination) -> Zone | None:
    """The most specific zone containing the destination (the rule in the module docstring)."""
    ranked = [(fit, zone) for zone in zones if (fit := zone.specificity(where)) is not None]
    if not ranked:
        return None
    # Highest specificity first; among equals, the first name in order.
    ranked.sort(key=lambda item: (tuple(-part for part in item[0]), item[1].name))
    return ranked[0][1]


def quote(
    zones: Iterable[Zone], where: Destination, *, weight_grams: int, subtotal: Money
) -> list[Quote]:
    """The methods offered for this destination, weight and subtotal, with their prices.

    Empty when no zone contains the destination, or none of its methods takes the parcel.
    """
    zone = matching_zone(zones, where)
    if zone is None:
        return []
    offers = []
    for method in zone.methods:
        price = method.price_for(weight_grams=weight_grams, subtotal=subtotal)
        if price is not None:
            offers.append(Quote(method.code, method.name, zone.id, zone.name, price))
    return offers


# -- drafts: what staff send, checked ------------------------------------------------------------


def check_zone(
    *,
    name: str,
    countries: Sequence[str],
    postal_prefixes: Sequence[str],
    methods: Sequence[ShippingMethod],
) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(name, countries, prefixes) checked and normalised, or `InvalidShippingData`."""
    clean = " ".join(name.split())
    if not 1 <= len(clean) <= 100:
        raise InvalidShippingData("name must be 1 to 100 characters.")
    if len(countries) > MAX_COUNTRIES or len(set(countries)) != len(countries):
        raise InvalidShippingData(f"countries must be distinct, at most {MAX_COUNTRIES}.")
    if any(not _COUNTRY.fullmatch(country) for country in countries):
        raise InvalidShippingData("countries must be ISO 3166 alpha-2 codes, e.g. GB.")
    prefixes = tuple(dict.fromkeys(normalise_postal_code(p) for p in postal_prefixes))
    if len(prefixes) > MAX_PREFIXES or any(not _PREFIX.fullmatch(p) for p in prefixes):
        raise InvalidShippingData(
            f"postal_prefixes: at most {MAX_PREFIXES}, each 1 to 10 letters or digits."
        )
    if prefixes and not countries:
        raise InvalidShippingData("postal_prefixes need the countries they belong to.")
    if not 1 <= len(methods) <= MAX_METHODS:
        raise InvalidShippingData(f"a zone has 1 to {MAX_METHODS} methods.")
    if len({method.code for method in methods}) != len(methods):
        raise InvalidShippingData("method codes must be distinct within a zone.")
    return clean, tuple(countries), prefixes


def method(
    *,
    code: str,
    name: str,
    currency: str,
    bands: Sequence[tuple[int, Decimal]],
    free_over: Decimal | None = None,
) -> ShippingMethod:
    """A checked method: bands increasing by weight, prices non-negative in its currency."""
    if not _CODE.fullmatch(code):
        raise InvalidShippingData("a method code is 1 to 32 of a-z, 0-9, _ and -.")
    if not 1 <= len(name.strip()) <= 100:
        raise InvalidShippingData("a method name is 1 to 100 characters.")
    if not _CURRENCY.fullmatch(currency):
        raise InvalidShippingData("currency must be an ISO 4217 code, e.g. GBP.")
    if not 1 <= len(bands) <= MAX_BANDS:
        raise InvalidShippingData(f"a method has 1 to {MAX_BANDS} weight bands.")
    weights = [grams for grams, _price in bands]
    if any(not 0 < grams <= MAX_WEIGHT_GRAMS for grams in weights) or weights != sorted(
        set(weights)
    ):
        raise InvalidShippingData(
            f"up_to_grams must increase from band to band, within (0, {MAX_WEIGHT_GRAMS}]."
        )
    checked = tuple(WeightBand(grams, _price(price, currency)) for grams, price in bands)
    threshold = None if free_over is None else _price(free_over, currency)
    return ShippingMethod(code, name.strip(), currency, checked, threshold)


def _price(amount: Decimal, currency: str) -> Money:
    try:
        price = Money(amount, currency)
    except MoneyError as error:
        raise InvalidShippingData(str(error)) from None
    if not Decimal(0) <= price.amount <= MAX_PRICE:
        raise InvalidShippingData(f"prices must be in [0, {MAX_PRICE}].")
    return price


# -- shipments -----------------------------------------------------------------------------------


class ShipmentStatus(StrEnum):
    REQUESTED = "requested"  # stored, quantities held; the carrier has not answered yet
    CREATED = "created"  # the carrier made a label and a tracking number
    PICKED_UP = "picked_up"
    IN_TRANSIT = "in_transit"
    OUT_FOR_DELIVERY = "out_for_delivery"
    DELIVERED = "delivered"
    EXCEPTION = "exception"  # a problem on the way (a side state, not an end)
    FAILED = "failed"  # the carrier refused it: quantities given back


RANK: dict[ShipmentStatus, int] = {
    ShipmentStatus.REQUESTED: -1,
    ShipmentStatus.CREATED: 0,
    ShipmentStatus.PICKED_UP: 1,
    ShipmentStatus.IN_TRANSIT: 2,
    ShipmentStatus.OUT_FOR_DELIVERY: 3,
    ShipmentStatus.DELIVERED: 4,
}
# What a carrier's tracking event may report.
TRACKED = frozenset(
    {
        ShipmentStatus.PICKED_UP,
        ShipmentStatus.IN_TRANSIT,
        ShipmentStatus.OUT_FOR_DELIVERY,
        ShipmentStatus.DELIVERED,
        ShipmentStatus.EXCEPTION,
    }
)


@dataclass(frozen=True, slots=True)
class TrackingEvent:
    event_id: str
    status: ShipmentStatus
    occurred_at: datetime
    location: str | None = None
    applied: bool = False


@dataclass(frozen=True, slots=True)
class Shipment:
    id: str
    order_id: str
    customer_id: str
    carrier: str
    status: ShipmentStatus
    status_rank: int
    version: int
    created_at: datetime
    updated_at: datetime
    lines: tuple[tuple[str, int], ...]
    carrier_shipment_id: str | None = None
    tracking_number: str | None = None
    label_url: str | None = None
    status_at: datetime | None = None
    failure_code: str | None = None
    history: tuple[TrackingEvent, ...] = field(default=())


def tracked_move(
    shipment: Shipment, reported: ShipmentStatus, *, occurred_at: datetime
) -> tuple[ShipmentStatus, int] | None:
    """(status, rank) the shipment moves to on this carrier event; None: it stays.

    Forward by rank only. `exception` keeps the rank reached and is left by any later event
    of that rank or more; it never follows `delivered`, nor an event that happened after it.
    """
    if shipment.status is ShipmentStatus.FAILED or reported not in TRACKED:
        return None
    after_current = shipment.status_at is None or occurred_at >= shipment.status_at
    if reported is ShipmentStatus.EXCEPTION:
        if shipment.status is ShipmentStatus.DELIVERED or not after_current:
            return None
        return reported, shipment.status_rank
    rank = RANK[reported]
    resumed = shipment.status is ShipmentStatus.EXCEPTION and after_current
    if rank > shipment.status_rank or (resumed and rank >= shipment.status_rank):
        return reported, rank
    return None


def shipment_lines(lines: Iterable[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    """Lines merged by SKU and sorted (the lock order), each quantity positive."""
    merged: dict[str, int] = {}
    for sku, quantity in lines:
        if not 1 <= len(sku) <= 64 or sku != sku.strip():
            raise InvalidShippingData("a sku is 1 to 64 characters.")
        if isinstance(quantity, bool) or not 1 <= quantity <= MAX_QUANTITY:
            raise InvalidShippingData(f"a quantity is in [1, {MAX_QUANTITY}].")
        merged[sku] = merged.get(sku, 0) + quantity
    if not 1 <= len(merged) <= MAX_LINES:
        raise InvalidShippingData(f"a shipment has 1 to {MAX_LINES} lines.")
    return tuple(sorted(merged.items()))


def check_shippable(
    ordered: dict[str, int], shipped: dict[str, int], lines: Sequence[tuple[str, int]]
) -> None:
    """Each line is of the order and within what is left to ship (`ExceedsOrdered`)."""
    for sku, quantity in lines:
        left = ordered.get(sku, 0) - shipped.get(sku, 0)
        if quantity > left:
            raise ExceedsOrdered(sku=sku, requested=quantity, left=max(left, 0))
