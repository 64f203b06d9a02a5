"""What payments publish through its outbox, written in the transaction of the change itself.

`PaymentAuthorized`, `PaymentCaptured`, `PaymentVoided`, `PaymentFailed` (declined or refused)
follow a payment's status moves; `PaymentRefunded` follows each refund. An event is recorded
by whichever writer made the move (API answer, webhook or reconciliation): the move is a
conditional UPDATE, so exactly one of them does.
"""

from __future__ import annotations

from datetime import datetime

from ironcart.contracts.payments import (
    PaymentAuthorized,
    PaymentCaptured,
    PaymentFailed,
    PaymentRefunded,
    PaymentSnapshot,
    PaymentVoided,
    RefundSnapshot,
)
from ironcart.payments.domain import Payment, PaymentStatus, Refund
from ironcart.platform.money import Money
from ironcart.platform.outbox import register_event

for _event in (PaymentAuthorized, PaymentCaptured, PaymentVoided, PaymentRefunded, PaymentFailed):
    register_event(_event)


def moved(
    payment: Payment,
    target: PaymentStatus,
    *,
    at: datetime,
    amount_captured_minor: int | None = None,
    decline_code: str | None = None,
    provider_payment_id: str | None = None,
) -> object | None:
    """The event announcing that `payment` moved to `target` (None: nothing to announce)."""
    base = (payment.id, payment.order_id, payment.amount.amount, payment.currency, at)
    if target is PaymentStatus.AUTHORIZED:
        return PaymentAuthorized(*base)
    if target is PaymentStatus.CAPTURED:
        captured = Money.from_minor(
            payment.amount.to_minor() if amount_captured_minor is None else amount_captured_minor,
            payment.currency,
        )
        return PaymentCaptured(payment.id, payment.order_id, captured.amount, payment.currency, at)
    if target is PaymentStatus.VOIDED:
        # A payment given up before anything was held voids nothing anybody has to hear of.
        held = provider_payment_id or payment.provider_payment_id
        return PaymentVoided(*base) if held else None
    if target in {PaymentStatus.DECLINED, PaymentStatus.FAILED}:
        return PaymentFailed(*base, decline_code=decline_code or payment.decline_code)
    return None


def refunded(refund: Refund, *, at: datetime) -> PaymentRefunded:
    return PaymentRefunded(
        refund.payment_id,
        refund.order_id,
        refund.amount.amount,
        refund.amount.currency,
        at,
        refund_id=refund.id,
    )


def snapshot(payment: Payment) -> PaymentSnapshot:
    return PaymentSnapshot(
        order_id=payment.order_id,
        status=payment.status.value,
        amount=payment.amount.amount,
        currency=payment.currency,
        amount_captured=Money.from_minor(payment.amount_captured_minor, payment.currency).amount,
        amount_refunded=Money.from_minor(payment.amount_refunded_minor, payment.currency).amount,
        provider_payment_id=payment.provider_payment_id,
        id=payment.id,
        xid=payment.xid,
        decline_code=payment.decline_code,
    )


def refund_snapshot(refund: Refund) -> RefundSnapshot:
    return RefundSnapshot(
        id=refund.id,
        payment_id=refund.payment_id,
        order_id=refund.order_id,
        amount=refund.amount.amount,
        currency=refund.amount.currency,
        status=refund.status.value,
    )
