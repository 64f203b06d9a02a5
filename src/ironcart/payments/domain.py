"""Payment rules: statuses and their forward-only transitions, refund limits, idempotency keys.

Pure Python. A payment is one authorization attempt of an order (one per checkout global
transaction `xid`); its amounts are integer minor units of its currency.

    authorizing ─┬─> authorized ─┬─> capturing ──> captured ─┬─> partially_refunded ─> refunded
                 │               │                 ^         └─────────────────────────^
                 │               └─> voided        │ (a provider report may skip steps)
                 ├─> declined / failed / voided    │
                 └─────────────────────────────────┘

A status only ever moves forward: a late or repeated provider report never undoes what is known.

IronCartError
 ├── NotFound
 │    ├── PaymentNotFound             code payments.not_found
 │    └── UnknownProvider             code payments.unknown_provider (webhook path)
 ├── Conflict
 │    ├── RefundExceedsCaptured       code payments.refund_exceeds_captured (requested, refundable)
 │    ├── RefundRejected              code payments.refund_rejected (provider_code)
 │    ├── PaymentNotCapturable        code payments.not_capturable (status)
 │    ├── PaymentNotRefundable        code payments.not_refundable (no captured payment)
 │    └── IdempotencyKeyReused        code payments.idempotency_key_reused (same key, other amount)
 ├── InvalidRequest
 │    └── InvalidPayment              code payments.invalid (amount, currency, card token, key)
 ├── BadRequest
 │    ├── InvalidWebhookSignature     code payments.webhook_signature_invalid
 │    ├── WebhookOutsideTolerance     code payments.webhook_timestamp_out_of_tolerance (replay)
 │    └── InvalidWebhookPayload       code payments.webhook_payload_invalid
 ├── PaymentRequired
 │    └── PaymentDeclined             code payments.declined (decline_code) -> 402
 └── ServiceUnavailable
      ├── PaymentProviderUnavailable  code payments.provider_unavailable (Retry-After)
      └── PaymentContention           code payments.contention (lost every database retry)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from ironcart.platform.errors import (
    BadRequest,
    Conflict,
    InvalidRequest,
    NotFound,
    PaymentRequired,
    ServiceUnavailable,
)
from ironcart.platform.money import Money, MoneyError

BRANCH = "payment"  # this participant's branch name in a checkout's global transaction
MAX_AMOUNT_MINOR = 10**12
KEY_MAX_LENGTH = 200
CARD_TOKEN_MAX_LENGTH = 100
ORDER_ID_MAX_LENGTH = 64
SIGNATURE_MAX_LENGTH = 1000


class PaymentNotFound(NotFound):
    code = "payments.not_found"
    title = "Payment not found"


class UnknownProvider(NotFound):
    code = "payments.unknown_provider"
    title = "Unknown payment provider"


class RefundExceedsCaptured(Conflict):
    code = "payments.refund_exceeds_captured"
    title = "The refund exceeds what is left to refund"

    def __init__(self, *, requested: Money, refundable: Money) -> None:
        super().__init__(
            f"{requested.amount} {requested.currency} requested, at most "
            f"{refundable.amount} {refundable.currency} can be refunded.",
            requested=str(requested.amount),
            refundable=str(refundable.amount),
            currency=requested.currency,
        )


class RefundRejected(Conflict):
    code = "payments.refund_rejected"
    title = "The payment provider refused the refund"

    def __init__(self, provider_code: str) -> None:
        super().__init__(
            f"The provider refused the refund ({provider_code}).", provider_code=provider_code
        )


class PaymentNotCapturable(Conflict):
    code = "payments.not_capturable"
    title = "The payment cannot be captured"

    def __init__(self, status: str, detail: str | None = None) -> None:
        super().__init__(detail or f"A {status} payment cannot be captured.", status=status)


class PaymentNotRefundable(Conflict):
    code = "payments.not_refundable"
    title = "Nothing was captured for this order"


class IdempotencyKeyReused(Conflict):
    code = "payments.idempotency_key_reused"
    title = "This idempotency key was used for another request"


class InvalidPayment(InvalidRequest):
    code = "payments.invalid"
    title = "Invalid payment request"


class InvalidWebhookSignature(BadRequest):
    code = "payments.webhook_signature_invalid"
    title = "Invalid webhook signature"


class WebhookOutsideTolerance(BadRequest):
    code = "payments.webhook_timestamp_out_of_tolerance"
    title = "Webhook timestamp outside the tolerance"


class InvalidWebhookPayload(BadRequest):
    code = "payments.webhook_payload_invalid"
    title = "Invalid webhook payload"


class PaymentDeclined(PaymentRequired):
    code = "payments.declined"
    title = "The payment was declined"

    def __init__(self, decline_code: str) -> None:
        self.decline_code = decline_code
        super().__init__(f"The card was declined ({decline_code}).", decline_code=decline_code)


class PaymentProviderUnavailable(ServiceUnavailable):
    code = "payments.provider_unavailable"
    title = "The payment provider is unavailable"

    def __init__(self, detail: str = "The payment provider cannot be reached; retry.") -> None:
        super().__init__(detail, headers={"Retry-After": "5"})


class PaymentContention(ServiceUnavailable):
    code = "payments.contention"
    title = "Payments are too contended right now"

    def __init__(self) -> None:
        super().__init__("Too many concurrent changes of this payment; retry.")


class PaymentStatus(StrEnum):
    AUTHORIZING = "authorizing"
    AUTHORIZED = "authorized"
    DECLINED = "declined"
    CAPTURING = "capturing"
    CAPTURED = "captured"
    VOIDED = "voided"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    FAILED = "failed"


class ProviderStatus(StrEnum):
    """A payment's status at the provider (the provider-neutral vocabulary of the gateway)."""

    AUTHORIZED = "authorized"
    DECLINED = "declined"
    CAPTURED = "captured"
    VOIDED = "voided"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


class RefundStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


S = PaymentStatus
P = ProviderStatus

# The statuses a payment may move to `target` from (every other move is refused).
SOURCES: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    S.AUTHORIZED: frozenset({S.AUTHORIZING}),
    S.DECLINED: frozenset({S.AUTHORIZING}),
    S.FAILED: frozenset({S.AUTHORIZING}),
    S.CAPTURING: frozenset({S.AUTHORIZED}),
    S.CAPTURED: frozenset({S.AUTHORIZING, S.AUTHORIZED, S.CAPTURING}),
    # From capturing only on the provider's word (e.g. the hold expired): cancel refuses it.
    S.VOIDED: frozenset({S.AUTHORIZING, S.AUTHORIZED, S.CAPTURING}),
}
CAPTURED_STATUSES = frozenset({S.CAPTURED, S.PARTIALLY_REFUNDED, S.REFUNDED})
PENDING_STATUSES = frozenset({S.AUTHORIZING, S.CAPTURING})
# Nothing is (or will be) held at the provider for these: an authorization found for one
# of them is an orphan and must be voided.
NOT_HOLDING = frozenset({S.VOIDED, S.FAILED, S.DECLINED})

# What the provider's status means for ours, before asking whether that is a forward move.
_REPORTED = {
    P.AUTHORIZED: S.AUTHORIZED,
    P.DECLINED: S.DECLINED,
    P.CAPTURED: S.CAPTURED,
    # Refund amounts are ours (one row per refund); a refunded provider payment was captured.
    P.PARTIALLY_REFUNDED: S.CAPTURED,
    P.REFUNDED: S.CAPTURED,
    P.VOIDED: S.VOIDED,
}


def can_move(current: PaymentStatus, target: PaymentStatus) -> bool:
    return current in SOURCES.get(target, frozenset())


def reported_target(current: PaymentStatus, reported: ProviderStatus) -> PaymentStatus | None:
    """The status a provider's report moves `current` to, or None: never a step backwards."""
    target = _REPORTED[reported]
    return target if can_move(current, target) else None


def is_orphan(current: PaymentStatus, reported: ProviderStatus, *, cancelled: bool) -> bool:
    """An authorization that nobody will capture: its payment (or its branch) was given up."""
    if reported is not P.AUTHORIZED:
        return False
    return current in NOT_HOLDING or (cancelled and current not in CAPTURED_STATUSES)


def status_after_refunds(*, captured_minor: int, refunded_minor: int) -> PaymentStatus:
    if refunded_minor <= 0:
        return S.CAPTURED
    return S.REFUNDED if refunded_minor >= captured_minor else S.PARTIALLY_REFUNDED


def authorize_key(order_id: str, xid: str) -> str:
    return f"{order_id}:authorize:{xid}"


def capture_key(order_id: str, xid: str) -> str:
    return f"{order_id}:capture:{xid}"


def void_key(order_id: str, xid: str) -> str:
    return f"{order_id}:void:{xid}"


def refund_key(order_id: str, refund_id: str) -> str:
    return f"{order_id}:refund:{refund_id}"


def payment_amount(amount: Decimal, currency: str) -> Money:
    """A positive amount in `currency`, with no more decimals than the currency has."""
    try:
        money = Money.of(amount, currency)
    except MoneyError as error:
        raise InvalidPayment(str(error)) from None
    if not 0 < money.to_minor() <= MAX_AMOUNT_MINOR:
        raise InvalidPayment("The amount must be positive and below the maximum.")
    return money


def check_text(name: str, value: str, maximum: int) -> str:
    if not 1 <= len(value) <= maximum or not value.isprintable() or value != value.strip():
        raise InvalidPayment(f"The {name} must be 1 to {maximum} printable characters.")
    return value


@dataclass(frozen=True, slots=True)
class Payment:
    id: str
    order_id: str
    xid: str
    provider: str
    provider_payment_id: str | None
    status: PaymentStatus
    amount: Money
    amount_captured_minor: int
    amount_refunded_minor: int
    amount_refund_pending_minor: int
    authorize_key: str
    decline_code: str | None
    version: int
    created_at: datetime
    updated_at: datetime

    @property
    def currency(self) -> str:
        return self.amount.currency

    @property
    def capture_key(self) -> str:
        return capture_key(self.order_id, self.xid)

    @property
    def void_key(self) -> str:
        return void_key(self.order_id, self.xid)

    @property
    def refundable(self) -> Money:
        """What may still be refunded: captured minus refunded minus refunds in flight."""
        left = (
            self.amount_captured_minor
            - self.amount_refunded_minor
            - self.amount_refund_pending_minor
        )
        return Money.from_minor(max(left, 0), self.currency)

    def check_refund(self, amount: Money) -> None:
        """`RefundExceedsCaptured` unless `amount` fits in what is left to refund."""
        if self.status not in CAPTURED_STATUSES:
            raise PaymentNotRefundable(f"A {self.status.value} payment cannot be refunded.")
        if amount.currency != self.currency:
            raise InvalidPayment(f"This payment was taken in {self.currency}.")
        if amount.to_minor() <= 0:
            raise InvalidPayment("A refund must be positive.")
        if amount.to_minor() > self.refundable.to_minor():
            raise RefundExceedsCaptured(requested=amount, refundable=self.refundable)


@dataclass(frozen=True, slots=True)
class Refund:
    id: str
    payment_id: str
    order_id: str
    amount: Money
    status: RefundStatus
    idempotency_key: str
    provider_refund_id: str | None
    failure_code: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def provider_key(self) -> str:
        return refund_key(self.order_id, self.id)
