"""Shipping's tables, declared on the shared metadata, and their row mappers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from ironcart.platform.database import Timestamp, metadata
from ironcart.platform.money import Money
from ironcart.platform.outbox import outbox_table
from ironcart.shipping.domain import (
    Shipment,
    ShipmentStatus,
    ShippingMethod,
    TrackingEvent,
    WeightBand,
    Zone,
)

zones = Table(
    "shipping_zones",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    # JSON arrays: a zone is read whole, never searched by country in SQL (zones are few).
    Column("countries", Text, nullable=False),
    Column("postal_prefixes", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

methods = Table(
    "shipping_methods",
    metadata,
    Column(
        "zone_id",
        String(36),
        ForeignKey("shipping_zones.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("code", String(32), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("name", String(100), nullable=False),
    Column("currency", String(3), nullable=False),
    # JSON [[up_to_grams, price_minor], ...], increasing.
    Column("bands", Text, nullable=False),
    Column("free_over_minor", BigInteger, nullable=True),
)

# What shipping knows of an order it ships: its owner, and per SKU what was ordered and how
# much is on shipments. `shipped` only grows by a conditional UPDATE (`shipped + q <= ordered`)
# and counts shipments still waiting for the carrier (the over-ship guard); `labelled` counts
# only those the carrier labelled (an order is fully shipped when it reaches `ordered`).
orders = Table(
    "shipping_orders",
    metadata,
    Column("order_id", String(36), primary_key=True),
    Column("customer_id", String(36), nullable=False),
    # Bumped by every delivery: concurrent deliveries of one order's shipments take turns.
    Column("version", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

order_lines = Table(
    "shipping_order_lines",
    metadata,
    Column("order_id", String(36), ForeignKey("shipping_orders.order_id"), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("ordered", Integer, nullable=False),
    Column("shipped", Integer, nullable=False),
    Column("labelled", Integer, nullable=False),
    CheckConstraint("shipped >= 0 AND shipped <= ordered", name="shipped_within_ordered"),
    CheckConstraint("labelled >= 0 AND labelled <= shipped", name="labelled_within_shipped"),
)

shipments = Table(
    "shipping_shipments",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("order_id", String(36), ForeignKey("shipping_orders.order_id"), nullable=False),
    Column("customer_id", String(36), nullable=False),
    Column("carrier", String(32), nullable=False),
    Column("carrier_shipment_id", String(100), nullable=True),
    Column("tracking_number", String(100), nullable=True),
    Column("label_url", String(500), nullable=True),
    Column("status", String(24), nullable=False),
    Column("status_rank", Integer, nullable=False),
    # When the carrier event that set the status happened (exceptions are ordered by it).
    Column("status_at", Timestamp, nullable=True),
    Column("failure_code", String(64), nullable=True),
    Column("version", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Index("ix_shipping_shipments_order_id", "order_id"),
    # Webhooks find their shipment by the carrier's id.
    Index("ix_shipping_shipments_carrier_shipment", "carrier", "carrier_shipment_id"),
)

shipment_lines = Table(
    "shipping_shipment_lines",
    metadata,
    Column("shipment_id", String(36), ForeignKey("shipping_shipments.id"), primary_key=True),
    Column("sku", String(64), primary_key=True),
    Column("quantity", Integer, nullable=False),
    CheckConstraint("quantity > 0", name="quantity_positive"),
)

# Every carrier event received, applied or not: the primary key deduplicates deliveries.
tracking_events = Table(
    "shipping_tracking_events",
    metadata,
    Column("carrier", String(32), primary_key=True),
    Column("event_id", String(100), primary_key=True),
    Column("shipment_id", String(36), nullable=True),
    Column("status", String(24), nullable=False),
    Column("occurred_at", Timestamp, nullable=False),
    Column("location", String(200), nullable=True),
    # Whether it moved the status (a late or repeated report is history only).
    Column("applied", Boolean, nullable=False),
    Column("received_at", Timestamp, nullable=False),
    Index("ix_shipping_tracking_events_shipment_occurred", "shipment_id", "occurred_at"),
)

shipping_outbox = outbox_table(metadata, "shipping")


def utc(value: datetime) -> datetime:
    """SQLite and MariaDB hand back naive datetimes; everything we store is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def rowcount(result: object) -> int:
    return int(result.rowcount)  # type: ignore[attr-defined]


def encode_bands(method: ShippingMethod) -> str:
    return orjson.dumps(
        [[band.up_to_grams, band.price.to_minor()] for band in method.bands]
    ).decode()


def method_of(row: Any) -> ShippingMethod:
    bands = tuple(
        WeightBand(int(grams), Money.from_minor(int(minor), row.currency))
        for grams, minor in orjson.loads(row.bands)
    )
    free = row.free_over_minor
    return ShippingMethod(
        code=row.code,
        name=row.name,
        currency=row.currency,
        bands=bands,
        free_over=None if free is None else Money.from_minor(int(free), row.currency),
    )


def zone_of(row: Any, zone_methods: list[ShippingMethod]) -> Zone:
    return Zone(
        id=row.id,
        name=row.name,
        countries=tuple(orjson.loads(row.countries)),
        postal_prefixes=tuple(orjson.loads(row.postal_prefixes)),
        methods=tuple(zone_methods),
        version=int(row.version),
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
    )


def shipment_of(
    row: Any, lines: tuple[tuple[str, int], ...], history: tuple[TrackingEvent, ...] = ()
) -> Shipment:
    return Shipment(
        id=row.id,
        order_id=row.order_id,
        customer_id=row.customer_id,
        carrier=row.carrier,
        status=ShipmentStatus(row.status),
        status_rank=int(row.status_rank),
        version=int(row.version),
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
        lines=lines,
        carrier_shipment_id=row.carrier_shipment_id,
        tracking_number=row.tracking_number,
        label_url=row.label_url,
        status_at=None if row.status_at is None else utc(row.status_at),
        failure_code=row.failure_code,
        history=history,
    )


def tracking_event_of(row: Any) -> TrackingEvent:
    return TrackingEvent(
        event_id=row.event_id,
        status=ShipmentStatus(row.status),
        occurred_at=utc(row.occurred_at),
        location=row.location,
        applied=bool(row.applied),
    )


def minor_or_none(value: Money | None) -> int | None:
    return None if value is None else value.to_minor()
