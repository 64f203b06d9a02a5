"""The port other contexts use to reach inventory (cart, ordering, catalog, flash sales)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol
from urllib.parse import quote

from pydantic import TypeAdapter
from sqlalchemy.ext.asyncio import AsyncConnection

from ironcart.contracts.inventory import Reservation
from ironcart.inventory.service import InventoryService
from ironcart.platform.http.service import ServiceClient

_RESERVATION = TypeAdapter(Reservation)
_RESERVATIONS = TypeAdapter(list[Reservation])
_AVAILABILITY = TypeAdapter(dict[str, int])


class InventoryClient(Protocol):
    async def availability(self, skus: Sequence[str]) -> dict[str, int]:
        """Units of each SKU that can be reserved now (0 for an unknown SKU)."""
        ...

    async def reserve(
        self, *, sku: str, quantity: int, owner: str, ttl_seconds: int
    ) -> Reservation:
        """Hold stock until the TTL ends; `InsufficientStock` (409) when there is not enough."""
        ...

    async def commit(self, *, reservation_id: str) -> None:
        """Sell the held stock; idempotent; raises `ReservationExpired` after expiry or release."""
        ...

    async def release(self, *, reservation_id: str) -> None:
        """Give the held stock back; idempotent."""
        ...

    async def try_reserve(
        self, *, xid: str, lines: Sequence[tuple[str, int]], ttl_seconds: int
    ) -> list[Reservation]:
        """TCC try: hold every (sku, quantity) line for `xid`, all or nothing; idempotent."""
        ...

    async def confirm_reservations(self, *, xid: str) -> None:
        """TCC confirm: sell what the try of `xid` holds; idempotent."""
        ...

    async def cancel_reservations(self, *, xid: str) -> None:
        """TCC cancel: release what the try of `xid` holds (a try after it is refused)."""
        ...

    async def return_sale(self, *, xid: str) -> None:
        """Put back on the shelf what checkout `xid` sold (a cancelled paid order); once."""
        ...

    async def check_available(self, *, lines: Sequence[tuple[str, int]]) -> None:
        """`InsufficientStock` (409) now if the lines cannot be held: a read, no hold."""
        ...

    async def sell_in_branch(
        self, connection: AsyncConnection, *, reference: str, lines: Sequence[tuple[str, int]]
    ) -> Callable[[], Awaitable[None]]:
        """XA branch on inventory's database: sell the lines, all or nothing (409), without
        committing; returns the announcement to await after the XA commit."""
        ...


class InProcessInventoryClient:
    def __init__(self, service: InventoryService) -> None:
        self._service = service

    async def availability(self, skus: Sequence[str]) -> dict[str, int]:
        """Availability read from inventory's own store."""
        return await self._service.availability(skus=skus)

    async def reserve(
        self, *, sku: str, quantity: int, owner: str, ttl_seconds: int
    ) -> Reservation:
        """Reserve through the inventory service in this process."""
        return await self._service.reserve(
            sku=sku, quantity=quantity, owner=owner, ttl_seconds=ttl_seconds
        )

    async def commit(self, *, reservation_id: str) -> None:
        """Commit through the inventory service in this process."""
        await self._service.commit(reservation_id=reservation_id)

    async def release(self, *, reservation_id: str) -> None:
        """Release through the inventory service in this process."""
        await self._service.release(reservation_id=reservation_id)

    async def try_reserve(
        self, *, xid: str, lines: Sequence[tuple[str, int]], ttl_seconds: int
    ) -> list[Reservation]:
        """Try through the inventory service in this process."""
        return await self._service.try_reserve(xid=xid, lines=lines, ttl_seconds=ttl_seconds)

    async def confirm_reservations(self, *, xid: str) -> None:
        """Confirm through the inventory service in this process."""
        await self._service.confirm_reservations(xid=xid)

    async def cancel_reservations(self, *, xid: str) -> None:
        """Cancel through the inventory service in this process."""
        await self._service.cancel_reservations(xid=xid)

    async def return_sale(self, *, xid: str) -> None:
        """Return through the inventory service in this process."""
        await self._service.return_sale(xid=xid)

    async def check_available(self, *, lines: Sequence[tuple[str, int]]) -> None:
        """Check through the inventory service in this process."""
        await self._service.check_available(lines=lines)

    async def sell_in_branch(
        self, connection: AsyncConnection, *, reference: str, lines: Sequence[tuple[str, int]]
    ) -> Callable[[], Awaitable[None]]:
        """Sell through the inventory service in this process, in the caller's XA branch."""
        return await self._service.sell_in_branch(connection, reference=reference, lines=lines)


class XaBranchOverHttp(RuntimeError):
    """`sell_in_branch` needs inventory's database connection: it cannot cross a network."""


class HttpInventoryClient:
    """Over the inventory service. Commands idempotent per id or `xid` are PUTs (retried);
    `reserve` is a POST (a repeat would hold twice), never retried."""

    def __init__(self, service: ServiceClient) -> None:
        self._service = service

    async def availability(self, skus: Sequence[str]) -> dict[str, int]:
        """Availability read from the inventory service."""
        answer = await self._service.request(
            "POST", f"{_BASE}/availability", json={"skus": list(skus)}, retryable=True
        )
        return _AVAILABILITY.validate_python(answer)

    async def reserve(
        self, *, sku: str, quantity: int, owner: str, ttl_seconds: int
    ) -> Reservation:
        """Reserve at the inventory service."""
        body = {"sku": sku, "quantity": quantity, "owner": owner, "ttl_seconds": ttl_seconds}
        answer = await self._service.request("POST", f"{_BASE}/reservations", json=body)
        return _RESERVATION.validate_python(answer)

    async def commit(self, *, reservation_id: str) -> None:
        """Commit at the inventory service."""
        await self._service.request("PUT", f"{_reservation(reservation_id)}/commit")

    async def release(self, *, reservation_id: str) -> None:
        """Release at the inventory service."""
        await self._service.request("PUT", f"{_reservation(reservation_id)}/release")

    async def try_reserve(
        self, *, xid: str, lines: Sequence[tuple[str, int]], ttl_seconds: int
    ) -> list[Reservation]:
        """Try at the inventory service."""
        body = {"lines": [list(line) for line in lines], "ttl_seconds": ttl_seconds}
        answer = await self._service.request("PUT", _branch(xid, "try"), json=body)
        return _RESERVATIONS.validate_python(answer)

    async def confirm_reservations(self, *, xid: str) -> None:
        """Confirm at the inventory service."""
        await self._service.request("PUT", _branch(xid, "confirm"))

    async def cancel_reservations(self, *, xid: str) -> None:
        """Cancel at the inventory service."""
        await self._service.request("PUT", _branch(xid, "cancel"))

    async def return_sale(self, *, xid: str) -> None:
        """Return at the inventory service."""
        await self._service.request("PUT", _branch(xid, "return"))

    async def check_available(self, *, lines: Sequence[tuple[str, int]]) -> None:
        """Check at the inventory service (a read: retried)."""
        body = {"lines": [list(line) for line in lines]}
        await self._service.request(
            "POST", f"{_BASE}/availability/check", json=body, retryable=True
        )

    async def sell_in_branch(
        self, connection: AsyncConnection, *, reference: str, lines: Sequence[tuple[str, int]]
    ) -> Callable[[], Awaitable[None]]:
        """Refused: settings forbid XA checkout with inventory as a separate service."""
        raise XaBranchOverHttp("an XA branch needs inventory in this process (checkout_txn=xa)")


_BASE = "/internal/v1/inventory"


def _reservation(reservation_id: str) -> str:
    return f"{_BASE}/reservations/{quote(reservation_id, safe='')}"


def _branch(xid: str, move: str) -> str:
    return f"{_BASE}/transactions/{quote(xid, safe='')}/{move}"
