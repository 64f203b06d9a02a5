"""Payments' internal API: what `HttpPaymentsClient` calls (checkout's TCC branch, ordering's
refunds), for services holding the `service:payments` scope only.

The TCC moves are PUTs: each is idempotent per transaction id (the participant's fences),
so the caller may retry them. A refund carries the caller's Idempotency-Key.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi import Path as InPath
from pydantic import Field

from ironcart.contracts.payments import PaymentSnapshot, RefundSnapshot
from ironcart.payments.client import InProcessPaymentsClient
from ironcart.platform.http.auth import internal_router
from ironcart.platform.http.schemas import StrictModel

router = internal_router("payments")


async def _payments(request: Request) -> InProcessPaymentsClient:
    return InProcessPaymentsClient(request.app.state.container.payments)


Payments = Annotated[InProcessPaymentsClient, Depends(_payments)]
Id = Annotated[str, InPath(min_length=1, max_length=200)]
Text = Annotated[str, Field(min_length=1, max_length=200)]


class AuthorizeRequest(StrictModel):
    order_id: Text
    amount: Decimal
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    card_token: Text


class RefundRequest(StrictModel):
    amount: Decimal


@router.put("/transactions/{xid}/try")
async def try_authorize(xid: Id, body: AuthorizeRequest, payments: Payments) -> PaymentSnapshot:
    return await payments.try_authorize(
        xid=xid,
        order_id=body.order_id,
        amount=body.amount,
        currency=body.currency,
        card_token=body.card_token,
    )


@router.put("/transactions/{xid}/confirm")
async def confirm_capture(xid: Id, payments: Payments) -> PaymentSnapshot:
    return await payments.confirm_capture(xid=xid)


@router.put("/transactions/{xid}/cancel")
async def cancel_void(xid: Id, payments: Payments) -> PaymentSnapshot | None:
    return await payments.cancel_void(xid=xid)


@router.post("/orders/{order_id}/refunds", status_code=201)
async def refund(
    order_id: Id,
    body: RefundRequest,
    payments: Payments,
    idempotency_key: Annotated[str, Header(min_length=1, max_length=200)],
) -> RefundSnapshot:
    return await payments.refund(
        order_id=order_id, amount=body.amount, idempotency_key=idempotency_key
    )


@router.get("/orders/{order_id}/payment")
async def payment_for_order(order_id: Id, payments: Payments) -> PaymentSnapshot | None:
    return await payments.payment_for_order(order_id)
