"""What other contexts may know of orders: the events ordering publishes through its outbox."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class OrderLineSummary:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class OrderPlaced:
    """An order was created from a checkout (payment not yet taken)."""

    order_id: str
    customer_id: str
    total: Decimal
    currency: str
    lines: tuple[OrderLineSummary, ...]


@dataclass(frozen=True, slots=True)
class OrderPaid:
    """The order's payment was captured and its stock sold: it may be fulfilled."""

    order_id: str
    customer_id: str
    total: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class OrderCancelled:
    """The order will not be fulfilled; its stock was released and its payment voided/refunded."""

    order_id: str
    customer_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class OrderRefunded:
    """Money went back to the customer (`amount`); `fully` when nothing captured is left."""

    order_id: str
    customer_id: str
    amount: Decimal
    currency: str
    fully: bool


@dataclass(frozen=True, slots=True)
class OrderStatusChanged:
    """Every transition of the order state machine, with who and why."""

    order_id: str
    customer_id: str
    from_status: str
    to_status: str
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class OrderForFulfilment:
    """What shipping needs of an order: who owns it, where it stands, what was ordered, where
    it goes (`lines` as (sku, quantity) pairs, one per SKU)."""

    order_id: str
    customer_id: str
    status: str
    lines: tuple[tuple[str, int], ...]
    country: str
    postal_code: str
