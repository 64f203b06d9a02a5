"""Checkout's TCC branches: each adapts a context's port to the coordinator's participant shape.

The payloads are what `checkout._begin` stored with the global transaction, so recovery in
another process (or after a restart) drives the same calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ironcart.inventory.client import InventoryClient
from ironcart.ordering.domain import KnownOrder
from ironcart.ordering.service import OrderingService
from ironcart.payments.client import PaymentsClient


class InventoryBranch:
    """try = reserve every line, confirm = sell, cancel = release."""

    def __init__(self, inventory: InventoryClient) -> None:
        self._inventory = inventory

    async def try_(self, xid: str, payload: Mapping[str, Any]) -> None:
        lines = [(str(sku), int(quantity)) for sku, quantity in payload["lines"]]
        await self._inventory.try_reserve(
            xid=xid, lines=lines, ttl_seconds=int(payload["ttl_seconds"])
        )

    async def confirm(self, xid: str, payload: Mapping[str, Any]) -> None:
        await self._inventory.confirm_reservations(xid=xid)

    async def cancel(self, xid: str, payload: Mapping[str, Any]) -> None:
        await self._inventory.cancel_reservations(xid=xid)


class PaymentBranch:
    """try = authorize, confirm = capture, cancel = void."""

    def __init__(self, payments: PaymentsClient) -> None:
        self._payments = payments

    async def try_(self, xid: str, payload: Mapping[str, Any]) -> None:
        await self._payments.try_authorize(
            xid=xid,
            order_id=str(payload["order_id"]),
            amount=Decimal(str(payload["amount"])),
            currency=str(payload["currency"]),
            card_token=str(payload["card_token"]),
        )

    async def confirm(self, xid: str, payload: Mapping[str, Any]) -> None:
        await self._payments.confirm_capture(xid=xid)

    async def cancel(self, xid: str, payload: Mapping[str, Any]) -> None:
        await self._payments.cancel_void(xid=xid)


class OrderBranch:
    """try = awaiting payment, confirm = paid, cancel = cancelled (the order's own state)."""

    def __init__(self, ordering: OrderingService) -> None:
        self._ordering = ordering

    async def try_(self, xid: str, payload: Mapping[str, Any]) -> None:
        await self._ordering.branch_try(str(payload["order_id"]), _known(payload))

    async def confirm(self, xid: str, payload: Mapping[str, Any]) -> None:
        await self._ordering.branch_confirm(str(payload["order_id"]), _known(payload))

    async def cancel(self, xid: str, payload: Mapping[str, Any]) -> None:
        await self._ordering.branch_cancel(str(payload["order_id"]))


def _known(payload: Mapping[str, Any]) -> KnownOrder | None:
    if "customer_id" not in payload:  # stored before the payload carried it
        return None
    return KnownOrder(
        order_id=str(payload["order_id"]),
        customer_id=str(payload["customer_id"]),
        total=Decimal(str(payload["total"])),
        currency=str(payload["currency"]),
    )
