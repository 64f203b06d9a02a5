"""Cart's internal API: what `HttpCartClient` calls (checkout reads and closes a customer's
cart), for services holding the `service:cart` scope only."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request, Response
from fastapi import Path as InPath
from pydantic import Field

from ironcart.cart.client import InProcessCartClient
from ironcart.contracts.cart import CartSnapshot
from ironcart.platform.http.auth import internal_router
from ironcart.platform.http.schemas import StrictModel

router = internal_router("cart")


async def _carts(request: Request) -> InProcessCartClient:
    return InProcessCartClient(request.app.state.container.cart)


Carts = Annotated[InProcessCartClient, Depends(_carts)]
CartId = Annotated[str, InPath(min_length=1, max_length=64)]
UserId = Annotated[str, Field(min_length=1, max_length=64)]


class CloseRequest(StrictModel):
    user_id: UserId
    version: int


@router.get("/carts/{cart_id}")
async def customer_cart(
    cart_id: CartId, carts: Carts, user_id: Annotated[str, Query(min_length=1, max_length=64)]
) -> CartSnapshot:
    return await carts.customer_cart(cart_id=cart_id, user_id=user_id)


@router.put("/carts/{cart_id}/closure", status_code=204)
async def close_cart(cart_id: CartId, body: CloseRequest, carts: Carts) -> Response:
    await carts.close_cart(cart_id=cart_id, user_id=body.user_id, version=body.version)
    return Response(status_code=204)
