"""The port other contexts use to reach payments (checkout's coordinator, ordering's refunds)."""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol
from urllib.parse import quote

from pydantic import TypeAdapter

from ironcart.contracts.payments import PaymentSnapshot, RefundSnapshot
from ironcart.payments.service import PaymentService
from ironcart.platform.http.service import ServiceClient

_PAYMENT = TypeAdapter(PaymentSnapshot)
_MAYBE_PAYMENT = TypeAdapter(PaymentSnapshot | None)
_REFUND = TypeAdapter(RefundSnapshot)


class PaymentsClient(Protocol):
    async def try_authorize(
        self, *, xid: str, order_id: str, amount: Decimal, currency: str, card_token: str
    ) -> PaymentSnapshot:
        """TCC try: hold the amount; `PaymentDeclined` (402), `PaymentProviderUnavailable`
        (503), `Suspended` when the branch was cancelled first."""
        ...

    async def confirm_capture(self, *, xid: str) -> PaymentSnapshot:
        """TCC confirm: capture; idempotent; `FenceConflict` after a cancel."""
        ...

    async def cancel_void(self, *, xid: str) -> PaymentSnapshot | None:
        """TCC cancel: void what the try held (None: no try came); idempotent."""
        ...

    async def refund(
        self, *, order_id: str, amount: Decimal, idempotency_key: str
    ) -> RefundSnapshot:
        """Refund part of the captured amount; `RefundExceedsCaptured` (409) beyond it."""
        ...

    async def payment_for_order(self, order_id: str) -> PaymentSnapshot | None:
        """The order's latest payment, or None."""
        ...


class InProcessPaymentsClient:
    def __init__(self, service: PaymentService) -> None:
        self._service = service

    async def try_authorize(
        self, *, xid: str, order_id: str, amount: Decimal, currency: str, card_token: str
    ) -> PaymentSnapshot:
        """Authorize through the payments service in this process."""
        return await self._service.try_authorize(
            xid=xid, order_id=order_id, amount=amount, currency=currency, card_token=card_token
        )

    async def confirm_capture(self, *, xid: str) -> PaymentSnapshot:
        """Capture through the payments service in this process."""
        return await self._service.confirm_capture(xid=xid)

    async def cancel_void(self, *, xid: str) -> PaymentSnapshot | None:
        """Void through the payments service in this process."""
        return await self._service.cancel_void(xid=xid)

    async def refund(
        self, *, order_id: str, amount: Decimal, idempotency_key: str
    ) -> RefundSnapshot:
        """Refund through the payments service in this process."""
        return await self._service.refund(
            order_id=order_id, amount=amount, idempotency_key=idempotency_key
        )

    async def payment_for_order(self, order_id: str) -> PaymentSnapshot | None:
        """The order's latest payment, read from the payments store."""
        return await self._service.payment_for_order(order_id)


class HttpPaymentsClient:
    """Over the payments service. The TCC moves are idempotent per `xid` (PUT, retried)."""

    def __init__(self, service: ServiceClient) -> None:
        self._service = service

    async def try_authorize(
        self, *, xid: str, order_id: str, amount: Decimal, currency: str, card_token: str
    ) -> PaymentSnapshot:
        """Authorize at the payments service."""
        body = {
            "order_id": order_id,
            "amount": str(amount),
            "currency": currency,
            "card_token": card_token,
        }
        answer = await self._service.request("PUT", _branch(xid, "try"), json=body)
        return _PAYMENT.validate_python(answer)

    async def confirm_capture(self, *, xid: str) -> PaymentSnapshot:
        """Capture at the payments service."""
        return _PAYMENT.validate_python(await self._service.request("PUT", _branch(xid, "confirm")))

    async def cancel_void(self, *, xid: str) -> PaymentSnapshot | None:
        """Void at the payments service."""
        answer = await self._service.request("PUT", _branch(xid, "cancel"))
        return _MAYBE_PAYMENT.validate_python(answer)

    async def refund(
        self, *, order_id: str, amount: Decimal, idempotency_key: str
    ) -> RefundSnapshot:
        """Refund at the payments service, under the caller's idempotency key."""
        answer = await self._service.request(
            "POST",
            f"{_order(order_id)}/refunds",
            json={"amount": str(amount)},
            idempotency_key=idempotency_key,
        )
        return _REFUND.validate_python(answer)

    async def payment_for_order(self, order_id: str) -> PaymentSnapshot | None:
        """The order's latest payment, read from the payments service."""
        answer = await self._service.request("GET", f"{_order(order_id)}/payment")
        return _MAYBE_PAYMENT.validate_python(answer)


def _branch(xid: str, move: str) -> str:
    return f"/internal/v1/payments/transactions/{quote(xid, safe='')}/{move}"


def _order(order_id: str) -> str:
    return f"/internal/v1/payments/orders/{quote(order_id, safe='')}"
