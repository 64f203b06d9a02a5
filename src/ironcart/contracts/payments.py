"""What other contexts may know of payments: a payment as checkout sees it, refunds, events.

Amounts are `Decimal` in major units of `currency` (`Decimal("19.99")`, "USD").
Statuses: authorizing, authorized, declined, capturing, captured, voided,
partially_refunded, refunded, failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class PaymentSnapshot:
    """One payment of an order (one per checkout attempt) as it is stored now."""

    order_id: str
    status: str
    amount: Decimal
    currency: str
    amount_captured: Decimal
    amount_refunded: Decimal
    provider_payment_id: str | None
    id: str = ""
    xid: str = ""
    decline_code: str | None = None


@dataclass(frozen=True, slots=True)
class RefundSnapshot:
    """A refund of (part of) a captured payment: status pending, succeeded or failed."""

    id: str
    payment_id: str
    order_id: str
    amount: Decimal
    currency: str
    status: str


@dataclass(frozen=True, slots=True)
class PaymentAuthorized:
    """The provider holds `amount` on the customer's card (try of checkout succeeded)."""

    payment_id: str
    order_id: str
    amount: Decimal
    currency: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class PaymentCaptured:
    """The held money was taken (`amount` captured)."""

    payment_id: str
    order_id: str
    amount: Decimal
    currency: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class PaymentVoided:
    """The authorization was released; the customer was not charged."""

    payment_id: str
    order_id: str
    amount: Decimal
    currency: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class PaymentRefunded:
    """`amount` of a captured payment went back to the customer (one refund)."""

    payment_id: str
    order_id: str
    amount: Decimal
    currency: str
    occurred_at: datetime
    refund_id: str = ""


@dataclass(frozen=True, slots=True)
class PaymentFailed:
    """The authorization was declined or refused by the provider; nothing is held."""

    payment_id: str
    order_id: str
    amount: Decimal
    currency: str
    occurred_at: datetime
    decline_code: str | None = None
