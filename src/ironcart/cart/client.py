"""The port other contexts use to reach carts (checkout reads a customer's cart, then closes it)."""

from __future__ import annotations

from typing import Protocol

from ironcart.cart.service import CartService
from ironcart.contracts.cart import CartSnapshot


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
