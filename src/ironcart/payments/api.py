"""Payments HTTP API: the provider's webhooks, and the payments of an order for staff."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from pydantic import BaseModel

from ironcart.contracts.payments import PaymentSnapshot
from ironcart.payments.domain import ORDER_ID_MAX_LENGTH, SIGNATURE_MAX_LENGTH
from ironcart.payments.service import PaymentService
from ironcart.platform.http.auth import StaffOnly

SIGNATURE_HEADER = "Sandbox-Signature"
NO_STORE = "no-store"

router = APIRouter(tags=["payments"])


async def get_payment_service(request: Request) -> PaymentService:
    service: PaymentService = request.app.state.container.payments
    return service


Payments = Annotated[PaymentService, Depends(get_payment_service)]
Provider = Annotated[str, Path(pattern=r"^[a-z0-9_-]{1,32}$")]
OrderId = Annotated[str, Query(min_length=1, max_length=ORDER_ID_MAX_LENGTH, pattern=r"^\S+$")]
Signature = Annotated[str | None, Header(alias=SIGNATURE_HEADER, max_length=SIGNATURE_MAX_LENGTH)]


class WebhookReceived(BaseModel):
    received: bool
    duplicate: bool


class MoneyRead(BaseModel):
    amount: str
    currency: str

    @classmethod
    def of(cls, amount: Decimal, currency: str) -> MoneyRead:
        return cls(amount=str(amount), currency=currency)


class PaymentRead(BaseModel):
    id: str
    order_id: str
    xid: str
    status: str
    amount: MoneyRead
    amount_captured: MoneyRead
    amount_refunded: MoneyRead
    provider_payment_id: str | None
    decline_code: str | None

    @classmethod
    def of(cls, payment: PaymentSnapshot) -> PaymentRead:
        return cls(
            id=payment.id,
            order_id=payment.order_id,
            xid=payment.xid,
            status=payment.status,
            amount=MoneyRead.of(payment.amount, payment.currency),
            amount_captured=MoneyRead.of(payment.amount_captured, payment.currency),
            amount_refunded=MoneyRead.of(payment.amount_refunded, payment.currency),
            provider_payment_id=payment.provider_payment_id,
            decline_code=payment.decline_code,
        )


class PaymentList(BaseModel):
    data: list[PaymentRead]


@router.post("/api/v1/payments/webhooks/{provider}", response_model=WebhookReceived)
async def receive_webhook(
    provider: Provider, request: Request, payments: Payments, signature: Signature = None
) -> WebhookReceived:
    """A signed provider event. A duplicate delivery is acknowledged and changes nothing."""
    applied = await payments.handle_webhook(
        provider=provider, body=await request.body(), signature_header=signature
    )
    return WebhookReceived(received=True, duplicate=not applied)


@router.get("/api/v1/payments", response_model=PaymentList)
async def list_payments(
    order_id: OrderId, _staff: StaffOnly, payments: Payments, response: Response
) -> PaymentList:
    """Staff: every payment of an order (one per checkout attempt), oldest first."""
    response.headers["Cache-Control"] = NO_STORE
    found = await payments.payments_for_order(order_id)
    return PaymentList(data=[PaymentRead.of(payment) for payment in found])
