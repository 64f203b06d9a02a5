"""The port other contexts use to read orders (shipping reads what it may ship)."""

from __future__ import annotations

from typing import Protocol
from urllib.parse import quote

from pydantic import TypeAdapter

from ironcart.contracts.ordering import OrderForFulfilment
from ironcart.ordering.domain import Order, OrderNotFound
from ironcart.ordering.service import OrderingService
from ironcart.platform.http.service import ServiceClient

_FULFILMENT = TypeAdapter(OrderForFulfilment | None)


class OrderingClient(Protocol):
    async def order_for_fulfilment(self, order_id: str) -> OrderForFulfilment | None:
        """The order's owner, status, lines and destination; None when there is no such order."""
        ...

    async def begin_fulfilment(self, order_id: str) -> bool:
        """Staff start shipping it: no customer cancellation from now on. False if the order
        is not (or no longer) shippable."""
        ...


class InProcessOrderingClient:
    def __init__(self, service: OrderingService) -> None:
        self._service = service

    async def order_for_fulfilment(self, order_id: str) -> OrderForFulfilment | None:
        """Read through the ordering service in this process (the staff view: any customer)."""
        try:
            order = await self._service.get_order(order_id=order_id, customer_id=None)
        except OrderNotFound:
            return None
        return fulfilment_view(order)

    async def begin_fulfilment(self, order_id: str) -> bool:
        """Start it through the ordering service in this process."""
        return await self._service.begin_fulfilment(order_id)


def fulfilment_view(order: Order) -> OrderForFulfilment:
    quantities: dict[str, int] = {}
    for line in order.lines:
        quantities[line.sku] = quantities.get(line.sku, 0) + line.quantity
    address = order.shipping_address
    return OrderForFulfilment(
        order_id=order.id,
        customer_id=order.customer_id,
        status=order.status.value,
        lines=tuple(sorted(quantities.items())),
        country=address.get("country", ""),
        postal_code=address.get("postal_code", ""),
    )


class HttpOrderingClient:
    def __init__(self, service: ServiceClient) -> None:
        self._service = service

    async def order_for_fulfilment(self, order_id: str) -> OrderForFulfilment | None:
        """Read from the ordering service; None when there is no such order."""
        body = await self._service.request("GET", _fulfilment_path(order_id))
        return _FULFILMENT.validate_python(body)

    async def begin_fulfilment(self, order_id: str) -> bool:
        """Start it at the ordering service; never retried (a repeat would answer False)."""
        body = await self._service.request("POST", _fulfilment_path(order_id))
        return bool(body["started"])


def _fulfilment_path(order_id: str) -> str:
    return f"/internal/v1/ordering/orders/{quote(order_id, safe='')}/fulfilment"
