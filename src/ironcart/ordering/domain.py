"""Orders: the state machine, totals and the errors of the ordering context. No I/O.

IronCartError
 ├── OrderNotFound               404 (also another customer's order)
 ├── IllegalTransition           409 (the state machine refuses the move)
 ├── CheckoutInProgress          409 (same Idempotency-Key, first request still running)
 ├── IdempotencyKeyReused        422 (same key, different body)
 ├── EmptyCheckout               422
 ├── UnsellableItems             422 (unknown / unpublished SKU, mixed currencies)
 └── RefundExceedsCaptured       409
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

from ironcart.platform.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from ironcart.platform.money import Money, exponent

MAX_LINES = 100
MAX_LINE_QUANTITY = 99


class OrderStatus(StrEnum):
    PENDING = "pending"  # created; stock and payment are being tried
    AWAITING_PAYMENT = "awaiting_payment"  # stock held and payment authorized; capture pending
    PAID = "paid"
    PARTIALLY_FULFILLED = "partially_fulfilled"
    FULFILLED = "fulfilled"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


S = OrderStatus
TRANSITIONS: Mapping[OrderStatus, frozenset[OrderStatus]] = {
    S.PENDING: frozenset({S.AWAITING_PAYMENT, S.CANCELLED}),
    S.AWAITING_PAYMENT: frozenset({S.PAID, S.CANCELLED}),
    S.PAID: frozenset(
        {S.PARTIALLY_FULFILLED, S.FULFILLED, S.CANCELLED, S.PARTIALLY_REFUNDED, S.REFUNDED}
    ),
    S.PARTIALLY_FULFILLED: frozenset({S.FULFILLED, S.PARTIALLY_REFUNDED, S.REFUNDED}),
    S.FULFILLED: frozenset({S.DELIVERED, S.PARTIALLY_REFUNDED, S.REFUNDED}),
    S.DELIVERED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED}),
    S.PARTIALLY_REFUNDED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED}),
    S.REFUNDED: frozenset(),
    S.CANCELLED: frozenset(),
}
# A customer may cancel until the order ships (until staff start shipping it: see
# `Order.fulfilment_started`); money captured is then refunded in full.
CANCELLABLE = frozenset({S.PAID})
# Staff may ship (some of) what is left of these.
SHIPPABLE = frozenset({S.PAID, S.PARTIALLY_FULFILLED})
REFUNDABLE = frozenset(
    {S.PAID, S.PARTIALLY_FULFILLED, S.FULFILLED, S.DELIVERED, S.PARTIALLY_REFUNDED}
)


@dataclass(frozen=True, slots=True)
class KnownOrder:
    """What checkout stores about its order with the TCC transaction (the order branch's
    payload): enough to move the order and announce it without reading it first."""

    order_id: str
    customer_id: str
    total: Decimal
    currency: str


class OrderNotFound(NotFound):
    code = "ordering.order_not_found"
    title = "Order not found"


class IllegalTransition(Conflict):
    code = "ordering.illegal_transition"
    title = "Illegal order transition"


class CheckoutInProgress(Conflict):
    code = "ordering.checkout_in_progress"
    title = "Checkout in progress"


class CheckoutBusy(ServiceUnavailable):
    code = "ordering.checkout_busy"
    title = "Checkout busy"


class CheckoutAborted(Conflict):
    code = "ordering.checkout_aborted"
    title = "Checkout cancelled"


class IdempotencyKeyReused(InvalidRequest):
    code = "ordering.idempotency_key_reused"
    title = "Idempotency key reused"


class EmptyCheckout(InvalidRequest):
    code = "ordering.empty_checkout"
    title = "Nothing to order"


class UnsellableItems(InvalidRequest):
    code = "ordering.unsellable_items"
    title = "Items cannot be sold"


class RefundExceedsCaptured(Conflict):
    code = "ordering.refund_exceeds_captured"
    title = "Refund exceeds what was paid"


def check_transition(current: OrderStatus, target: OrderStatus) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(
            f"An order that is {current.value} cannot become {target.value}.",
            current=current.value,
            target=target.value,
        )


@dataclass(frozen=True, slots=True)
class PricedItem:
    """A line as checkout prices it: the catalog's current price, never the client's."""

    sku: str
    product_name: str
    variant_name: str
    quantity: int
    unit_price: Money
    weight_grams: int

    @property
    def total(self) -> Money:
        return self.unit_price.times(self.quantity)


@dataclass(frozen=True, slots=True)
class Totals:
    subtotal: Money
    shipping: Money
    tax: Money
    total: Money


def compute_totals(items: Sequence[PricedItem], *, shipping: Money, tax_rate: Decimal) -> Totals:
    """Subtotal + shipping, tax on both at `tax_rate`, rounded half-up to the minor unit."""
    currency = shipping.currency
    subtotal = Money.zero(currency)
    for item in items:
        subtotal = subtotal + item.total
    taxable = (subtotal + shipping).amount
    quantum = Decimal(1).scaleb(-exponent(currency))
    tax = Money((taxable * tax_rate).quantize(quantum, rounding=ROUND_HALF_UP), currency)
    return Totals(subtotal, shipping, tax, subtotal + shipping + tax)


def merge_lines(lines: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """One line per SKU (quantities added), in first-seen order; bounded."""
    merged: dict[str, int] = {}
    for sku, quantity in lines:
        merged[sku] = merged.get(sku, 0) + quantity
    if not merged:
        raise EmptyCheckout("There is nothing to order.")
    if len(merged) > MAX_LINES:
        raise EmptyCheckout(f"An order holds at most {MAX_LINES} different items.")
    too_many = [sku for sku, quantity in merged.items() if quantity > MAX_LINE_QUANTITY]
    if too_many:
        raise UnsellableItems(f"At most {MAX_LINE_QUANTITY} of one item per order.", skus=too_many)
    return list(merged.items())


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku: str
    product_name: str
    variant_name: str
    quantity: int
    unit_price: Money

    @property
    def total(self) -> Money:
        return self.unit_price.times(self.quantity)


@dataclass(frozen=True, slots=True)
class Transition:
    from_status: str
    to_status: str
    actor: str
    reason: str
    at: datetime


@dataclass(slots=True)
class Order:
    id: str
    customer_id: str
    status: OrderStatus
    currency: str
    subtotal: Money
    shipping: Money
    tax: Money
    total: Money
    refunded: Money
    shipping_method: str
    shipping_address: dict[str, str]
    xid: str
    version: int
    created_at: datetime
    updated_at: datetime
    lines: list[OrderLine] = field(default_factory=list)
    history: list[Transition] = field(default_factory=list)
    fulfilment_started: bool = False  # staff began shipping: no more customer cancellation

    def refundable(self) -> Money:
        return self.total - self.refunded
