"""Ordering's internal API: what `HttpOrderingClient` calls (shipping reads the order it
ships and starts its fulfilment), for services holding the `service:ordering` scope only."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as InPath
from pydantic import BaseModel

from ironcart.contracts.ordering import OrderForFulfilment
from ironcart.ordering.client import InProcessOrderingClient
from ironcart.platform.http.auth import internal_router

router = internal_router("ordering")


async def _orders(request: Request) -> InProcessOrderingClient:
    return InProcessOrderingClient(request.app.state.container.ordering)


Orders = Annotated[InProcessOrderingClient, Depends(_orders)]
OrderId = Annotated[str, InPath(min_length=1, max_length=64)]


class FulfilmentStarted(BaseModel):
    started: bool


@router.get("/orders/{order_id}/fulfilment")
async def order_for_fulfilment(order_id: OrderId, orders: Orders) -> OrderForFulfilment | None:
    return await orders.order_for_fulfilment(order_id)


# Not idempotent for the caller: a repeat answers False (already started). Never retried.
@router.post("/orders/{order_id}/fulfilment")
async def begin_fulfilment(order_id: OrderId, orders: Orders) -> FulfilmentStarted:
    return FulfilmentStarted(started=await orders.begin_fulfilment(order_id))
