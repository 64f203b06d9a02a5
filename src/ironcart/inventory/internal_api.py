"""Inventory's internal API: what `HttpInventoryClient` calls, for services holding the
`service:inventory` scope only (401 without a token, 403 without the scope).

Each route calls the in-process port, so both wirings share one behaviour and one set of
errors. The XA branch (`sell_in_branch`) runs on a database connection: it has no route.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi import Path as InPath
from pydantic import Field

from ironcart.contracts.inventory import Reservation
from ironcart.inventory.client import InProcessInventoryClient
from ironcart.platform.http.auth import internal_router
from ironcart.platform.http.schemas import StrictModel

MAX_LINES = 500

router = internal_router("inventory")


async def _inventory(request: Request) -> InProcessInventoryClient:
    return InProcessInventoryClient(request.app.state.container.inventory)


Inventory = Annotated[InProcessInventoryClient, Depends(_inventory)]
Text = Annotated[str, Field(min_length=1, max_length=200)]
Id = Annotated[str, InPath(min_length=1, max_length=200)]
Line = tuple[Annotated[str, Field(max_length=64)], Annotated[int, Field(ge=-(2**31), le=2**31)]]


class SkuList(StrictModel):
    skus: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=MAX_LINES)]


class ReserveRequest(StrictModel):
    sku: Annotated[str, Field(max_length=64)]
    quantity: int
    owner: Text
    ttl_seconds: int


class LinesRequest(StrictModel):
    lines: Annotated[list[Line], Field(max_length=MAX_LINES)]


class TryRequest(LinesRequest):
    ttl_seconds: int


def _done() -> Response:
    return Response(status_code=204)


@router.post("/availability")
async def availability(body: SkuList, inventory: Inventory) -> dict[str, int]:
    return await inventory.availability(body.skus)


@router.post("/availability/check", status_code=204)
async def check_available(body: LinesRequest, inventory: Inventory) -> Response:
    await inventory.check_available(lines=body.lines)
    return _done()


@router.post("/reservations", status_code=201)
async def reserve(body: ReserveRequest, inventory: Inventory) -> Reservation:
    return await inventory.reserve(
        sku=body.sku, quantity=body.quantity, owner=body.owner, ttl_seconds=body.ttl_seconds
    )


@router.put("/reservations/{reservation_id}/commit", status_code=204)
async def commit(reservation_id: Id, inventory: Inventory) -> Response:
    await inventory.commit(reservation_id=reservation_id)
    return _done()


@router.put("/reservations/{reservation_id}/release", status_code=204)
async def release(reservation_id: Id, inventory: Inventory) -> Response:
    await inventory.release(reservation_id=reservation_id)
    return _done()


@router.put("/transactions/{xid}/try")
async def try_reserve(xid: Id, body: TryRequest, inventory: Inventory) -> list[Reservation]:
    return await inventory.try_reserve(xid=xid, lines=body.lines, ttl_seconds=body.ttl_seconds)


@router.put("/transactions/{xid}/confirm", status_code=204)
async def confirm_reservations(xid: Id, inventory: Inventory) -> Response:
    await inventory.confirm_reservations(xid=xid)
    return _done()


@router.put("/transactions/{xid}/cancel", status_code=204)
async def cancel_reservations(xid: Id, inventory: Inventory) -> Response:
    await inventory.cancel_reservations(xid=xid)
    return _done()


@router.put("/transactions/{xid}/return", status_code=204)
async def return_sale(xid: Id, inventory: Inventory) -> Response:
    await inventory.return_sale(xid=xid)
    return _done()
