"""Shipping's request and response schemas: `ZoneWrite` / `ZoneRead`, `QuoteRequest` /
`QuoteList`, `ShipmentCreate` / `ShipmentRead`. Amounts travel as strings."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from ironcart.platform.http.schemas import StrictModel
from ironcart.shipping.domain import (
    CARRIER_PATTERN,
    MAX_BANDS,
    MAX_COUNTRIES,
    MAX_LINES,
    MAX_METHODS,
    MAX_PREFIXES,
    MAX_QUANTITY,
    MAX_WEIGHT_GRAMS,
    Quote,
    Shipment,
    ShippingMethod,
    Zone,
    method,
)

Amount = Annotated[str, StringConstraints(pattern=r"^\d{1,10}(\.\d{1,4})?$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Country = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
Grams = Annotated[int, Field(strict=True, ge=0, le=MAX_WEIGHT_GRAMS)]


class BandIn(StrictModel):
    up_to_grams: Annotated[int, Field(strict=True, ge=1, le=MAX_WEIGHT_GRAMS)]
    price: Amount


class MethodIn(StrictModel):
    code: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]{1,32}$")]
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    currency: Currency
    bands: Annotated[list[BandIn], Field(min_length=1, max_length=MAX_BANDS)]
    free_over: Amount | None = None

    def to_domain(self) -> ShippingMethod:
        return method(
            code=self.code,
            name=self.name,
            currency=self.currency,
            bands=[(band.up_to_grams, Decimal(band.price)) for band in self.bands],
            free_over=None if self.free_over is None else Decimal(self.free_over),
        )


class ZoneWrite(StrictModel):
    """A zone with all its methods (PUT replaces them all)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    countries: Annotated[list[Country], Field(default_factory=list, max_length=MAX_COUNTRIES)]
    postal_prefixes: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=12)]],
        Field(default_factory=list, max_length=MAX_PREFIXES),
    ]
    methods: Annotated[list[MethodIn], Field(min_length=1, max_length=MAX_METHODS)]


class MoneyRead(BaseModel):
    amount: str
    currency: str


class BandRead(BaseModel):
    up_to_grams: int
    price: MoneyRead


class MethodRead(BaseModel):
    code: str
    name: str
    currency: str
    bands: list[BandRead]
    free_over: MoneyRead | None

    @classmethod
    def of(cls, item: ShippingMethod) -> MethodRead:
        return cls(
            code=item.code,
            name=item.name,
            currency=item.currency,
            bands=[
                BandRead(up_to_grams=band.up_to_grams, price=MoneyRead(**band.price.to_json()))
                for band in item.bands
            ],
            free_over=None if item.free_over is None else MoneyRead(**item.free_over.to_json()),
        )


class ZoneRead(BaseModel):
    id: str
    name: str
    countries: list[str]
    postal_prefixes: list[str]
    methods: list[MethodRead]
    version: int

    @classmethod
    def of(cls, zone: Zone) -> ZoneRead:
        return cls(
            id=zone.id,
            name=zone.name,
            countries=list(zone.countries),
            postal_prefixes=list(zone.postal_prefixes),
            methods=[MethodRead.of(item) for item in zone.methods],
            version=zone.version,
        )


class ZoneList(BaseModel):
    data: list[ZoneRead]


class QuoteRequest(StrictModel):
    country: Country
    postal_code: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9 -]{0,12}$")] = ""
    weight_grams: Grams
    subtotal: Amount
    currency: Currency


class QuoteRead(BaseModel):
    method_code: str
    method_name: str
    zone_id: str
    zone_name: str
    price: MoneyRead

    @classmethod
    def of(cls, offer: Quote) -> QuoteRead:
        return cls(
            method_code=offer.method_code,
            method_name=offer.method_name,
            zone_id=offer.zone_id,
            zone_name=offer.zone_name,
            price=MoneyRead(**offer.price.to_json()),
        )


class QuoteList(BaseModel):
    data: list[QuoteRead]


class LineIn(StrictModel):
    sku: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    quantity: Annotated[int, Field(strict=True, ge=1, le=MAX_QUANTITY)]


class ShipmentCreate(StrictModel):
    lines: Annotated[list[LineIn], Field(min_length=1, max_length=MAX_LINES)]
    carrier: Annotated[str, StringConstraints(pattern=CARRIER_PATTERN)] = "sandbox"


class LineRead(BaseModel):
    sku: str
    quantity: int


class TrackingRead(BaseModel):
    event_id: str
    status: str
    occurred_at: str
    location: str | None
    applied: bool


class ShipmentRead(BaseModel):
    id: str
    order_id: str
    carrier: str
    status: str
    tracking_number: str | None
    label_url: str | None
    lines: list[LineRead]
    tracking: list[TrackingRead]
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, shipment: Shipment) -> ShipmentRead:
        return cls(
            id=shipment.id,
            order_id=shipment.order_id,
            carrier=shipment.carrier,
            status=shipment.status.value,
            tracking_number=shipment.tracking_number,
            label_url=shipment.label_url,
            lines=[LineRead(sku=sku, quantity=quantity) for sku, quantity in shipment.lines],
            tracking=[
                TrackingRead(
                    event_id=event.event_id,
                    status=event.status.value,
                    occurred_at=event.occurred_at.isoformat(),
                    location=event.location,
                    applied=event.applied,
                )
                for event in shipment.history
            ],
            created_at=shipment.created_at.isoformat(),
            updated_at=shipment.updated_at.isoformat(),
        )


class ShipmentList(BaseModel):
    data: list[ShipmentRead]


class WebhookReceived(BaseModel):
    received: bool
    duplicate: bool
