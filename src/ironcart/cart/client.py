"""The port other contexts use to reach carts (checkout reads a customer's cart, then closes it)."""

from __future__ import annotations

from typing import Protocol
from urllib.parse import quote

from pydantic import TypeAdapter

from ironcart.cart.service import CartService
from ironcart.contracts.cart import CartSnapshot
from ironcart.platform.http.service import ServiceClient

_CART = TypeAdapter(CartSnapshot)


class CartClient(Protocol):
    async def customer_cart(self, *, cart_id: str, user_id: str) -> CartSnapshot:
        """The customer's open cart as stored; `CartNotFound` (404) if it is not theirs."""
        ...

    async def close_cart(self, *, cart_id: str, user_id: str, version: int) -> None:
        """Close the cart after checkout if still at `version` (`StaleCart`, 412, otherwise)."""
        ...


class InProcessCartClient:
    def __init__(self, service: CartService) -> None:
        self._service = service

    async def customer_cart(self, *, cart_id: str, user_id: str) -> CartSnapshot:
        """The cart, read through the cart service in this process."""
        return await self._service.customer_cart(cart_id=cart_id, user_id=user_id)

    async def close_cart(self, *, cart_id: str, user_id: str, version: int) -> None:
        """Close through the cart service in this process."""
        await self._service.close_cart(cart_id=cart_id, user_id=user_id, version=version)


class HttpCartClient:
    def __init__(self, service: ServiceClient) -> None:
        self._service = service

    async def customer_cart(self, *, cart_id: str, user_id: str) -> CartSnapshot:
        """The cart, read from the cart service."""
        body = await self._service.request(
            "GET", f"/internal/v1/cart/carts/{_segment(cart_id)}", params={"user_id": user_id}
        )
        return _CART.validate_python(body)

    async def close_cart(self, *, cart_id: str, user_id: str, version: int) -> None:
        """Close through the cart service (idempotent: a closed cart stays closed)."""
        await self._service.request(
            "PUT",
            f"/internal/v1/cart/carts/{_segment(cart_id)}/closure",
            json={"user_id": user_id, "version": version},
        )


def _segment(value: str) -> str:
    return quote(value, safe="")
