"""The port other contexts use to reach payments (checkout's coordinator, ordering's refunds)."""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from ironcart.contracts.payments import PaymentSnapshot, RefundSnapshot
from ironcart.payments.service import PaymentService


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
