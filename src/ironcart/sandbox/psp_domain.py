"""The sandbox PSP's rules: payments and their transitions, card tokens, request checks, errors.

Plain Python, no I/O. Every error (the shared `sandbox.common` hierarchy, its root named
`PspError` here) carries an HTTP `status` and a stable `code`:

    PspError
     ├── InvalidRequest (400)         invalid_request, missing_idempotency_key,
     │                                invalid_idempotency_key, invalid_card_token,
     │                                amount_exceeds_authorized
     ├── Unauthorized (401)           unauthorized
     ├── NotFound (404)               payment_not_found, not_found (no such route)
     ├── Conflict (409)               invalid_state, already_captured,
     │                                refund_exceeds_captured, idempotency_key_in_use
     ├── IdempotencyKeyReused (422)   idempotency_key_reused
     ├── InjectedFault (500)          internal_error
     └── TryAgain (503)               try_again
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from ironcart.sandbox.common import (
    Conflict,
    IdempotencyKeyReused,
    InjectedFault,
    InvalidRequest,
    NotFound,
    TryAgain,
    Unauthorized,
    idempotency_key_of,
    new_id,
    now_iso,
    text_of,
)
from ironcart.sandbox.common import SandboxError as PspError

AUTHORIZED = "authorized"
DECLINED = "declined"
CAPTURED = "captured"
VOIDED = "voided"
PARTIALLY_REFUNDED = "partially_refunded"
REFUNDED = "refunded"
# Once money has been captured, a capture is a repeat, not a state error.
CAPTURED_STATES = frozenset({CAPTURED, PARTIALLY_REFUNDED, REFUNDED})

APPROVED_TOKENS = frozenset({"tok_visa", "tok_mastercard"})
DECLINE_CODES = {"tok_decline": "card_declined", "tok_insufficient_funds": "insufficient_funds"}
RETRY_TOKEN = "tok_retry"  # noqa: S105 - a test card, not a secret

MAX_AMOUNT = 10**12
MAX_TEXT = 200
_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True, slots=True)
class Payment:
    id: str
    status: str
    amount: int
    currency: str
    amount_captured: int
    amount_refunded: int
    reference: str
    card_token: str
    decline_code: str | None
    created_at: str
    updated_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "amount": self.amount,
            "currency": self.currency,
            "amount_captured": self.amount_captured,
            "amount_refunded": self.amount_refunded,
            "reference": self.reference,
            "card_token": self.card_token,
            "decline_code": self.decline_code,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class Refund:
    id: str
    payment_id: str
    amount: int
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "payment_id": self.payment_id,
            "amount": self.amount,
            "status": "succeeded",
        }


def new_payment(payload: dict[str, Any]) -> Payment:
    """An authorized or declined payment for a `POST /v1/payments` body (tok_retry approves)."""
    amount = amount_of(payload, "amount")
    currency = payload.get("currency")
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise InvalidRequest("invalid_request", "currency must be an ISO 4217 code such as USD")
    reference = text_of(payload, "reference")
    token = text_of(payload, "card_token")
    if token not in APPROVED_TOKENS and token not in DECLINE_CODES and token != RETRY_TOKEN:
        raise InvalidRequest("invalid_card_token", f"unknown card token {token!r}")
    decline_code = DECLINE_CODES.get(token)
    now = now_iso()
    return Payment(
        id=new_id("pay_"),
        status=DECLINED if decline_code else AUTHORIZED,
        amount=amount,
        currency=currency,
        amount_captured=0,
        amount_refunded=0,
        reference=reference,
        card_token=token,
        decline_code=decline_code,
        created_at=now,
        updated_at=now,
    )


def captured(payment: Payment, payload: dict[str, Any]) -> Payment:
    if payment.status in CAPTURED_STATES:
        raise Conflict("already_captured", f"payment {payment.id} is already captured")
    if payment.status != AUTHORIZED:
        raise Conflict("invalid_state", f"cannot capture a {payment.status} payment")
    amount = payment.amount if payload.get("amount") is None else amount_of(payload, "amount")
    if amount > payment.amount:
        raise InvalidRequest(
            "amount_exceeds_authorized", f"cannot capture {amount}, authorized {payment.amount}"
        )
    return replace(payment, status=CAPTURED, amount_captured=amount, updated_at=now_iso())


def voided(payment: Payment) -> Payment | None:
    """The voided payment, or None when it is already voided (a void is then a no-op)."""
    if payment.status == VOIDED:
        return None
    if payment.status != AUTHORIZED:
        raise Conflict("invalid_state", f"cannot void a {payment.status} payment")
    return replace(payment, status=VOIDED, updated_at=now_iso())


def refunded(payment: Payment, payload: dict[str, Any]) -> tuple[Payment, Refund]:
    amount = amount_of(payload, "amount")
    total = payment.amount_refunded + amount
    if total > payment.amount_captured:
        raise Conflict(
            "refund_exceeds_captured",
            f"refunds would total {total}, captured {payment.amount_captured}",
        )
    now = now_iso()
    status = REFUNDED if total == payment.amount_captured else PARTIALLY_REFUNDED
    changed = replace(payment, status=status, amount_refunded=total, updated_at=now)
    return changed, Refund(id=new_id("re_"), payment_id=payment.id, amount=amount, created_at=now)


def amount_of(payload: dict[str, Any], field: str) -> int:
    value = payload.get(field)
    if type(value) is not int or not 0 < value <= MAX_AMOUNT:
        raise InvalidRequest("invalid_request", f"{field} must be a positive integer (minor units)")
    return value


__all__ = [
    "Conflict",
    "IdempotencyKeyReused",
    "InjectedFault",
    "InvalidRequest",
    "NotFound",
    "PspError",
    "TryAgain",
    "Unauthorized",
    "idempotency_key_of",
    "new_id",
    "now_iso",
    "text_of",
]
