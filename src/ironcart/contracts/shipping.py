"""What other contexts may know of shipping: quotes for checkout, and the events shipping
publishes through its outbox (ordering moves an order to fulfilled / delivered on them)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class ShippingQuote:
    """One method offered for a destination and parcel, with its price."""

    method_code: str
    method_name: str
    zone_name: str
    price: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class ShipmentCreated:
    """The carrier labelled a shipment of some or all lines of a paid order.

    `lines` are (sku, quantity) pairs, sorted by SKU. `order_fully_shipped`: with this
    shipment every ordered unit is on a shipment the carrier labelled (the order may move to
    fulfilled; otherwise to partially fulfilled).
    """

    shipment_id: str
    order_id: str
    customer_id: str
    carrier: str
    tracking_number: str
    lines: tuple[tuple[str, int], ...]
    order_fully_shipped: bool


@dataclass(frozen=True, slots=True)
class ShipmentDelivered:
    """The carrier delivered a shipment. `all_delivered`: the order is fully shipped and every
    shipment of it is delivered (the order may move to delivered)."""

    shipment_id: str
    order_id: str
    customer_id: str
    all_delivered: bool
