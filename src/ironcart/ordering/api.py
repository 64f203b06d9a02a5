"""Orders HTTP API: checkout, a customer's own orders, cancel; staff views and refunds.

A customer sees and changes only their own orders: anything else is the 404 of an order
that does not exist. Requests are strict: a price, a total or a status in the body is an
unknown field (422), so nothing a client sends can set them.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from pydantic import Field, StringConstraints, model_validator

from ironcart.contracts.identity import Principal
from ironcart.ordering.checkout import CheckoutRequest, fingerprint
from ironcart.ordering.domain import MAX_LINE_QUANTITY, MAX_LINES, Order, OrderStatus
from ironcart.ordering.service import OrderingService
from ironcart.platform.errors import BadRequest, InvalidRequest
from ironcart.platform.http.auth import CurrentUser, StaffOnly
from ironcart.platform.http.schemas import StrictModel
from ironcart.platform.money import Money
from ironcart.platform.resilience.ratelimits import (
    admission_settings,
    hot_resource_limit,
    skus_of_lines,
)

router = APIRouter(tags=["orders"])

NO_STORE = "no-store"
Sku = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
Text200 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$"),
]
OrderId = Annotated[str, Path(min_length=1, max_length=64)]


class MissingIdempotencyKey(BadRequest):
    code = "ordering.idempotency_key_required"
    title = "Idempotency-Key required"


class BadCursor(InvalidRequest):
    code = "ordering.bad_cursor"
    title = "Bad cursor"


async def get_ordering(request: Request) -> OrderingService:
    service: OrderingService = request.app.state.container.ordering
    return service


Orders = Annotated[OrderingService, Depends(get_ordering)]
# Checking out a hot SKU is throttled per SKU across all buyers (explicit lines; a checkout
# of a cart was throttled when its lines were added).
HOT_SKUS = hot_resource_limit(admission_settings, skus_of_lines)


class LineIn(StrictModel):
    sku: Sku
    quantity: Annotated[int, Field(strict=True, ge=1, le=MAX_LINE_QUANTITY)]


class AddressIn(StrictModel):
    name: Text200
    line1: Text200
    line2: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = ""
    city: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    postal_code: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9 -]{2,12}$")]
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
    phone: Annotated[str, StringConstraints(pattern=r"^\+?[0-9 ()-]{5,20}$")] | None = None


class PaymentIn(StrictModel):
    card_token: Annotated[str, StringConstraints(pattern=r"^tok_[A-Za-z0-9_]{1,60}$")]


class OrderCreate(StrictModel):
    """Either `cart_id` (the customer's cart) or explicit `lines`, never both."""

    cart_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    lines: Annotated[list[LineIn], Field(min_length=1, max_length=MAX_LINES)] | None = None
    shipping_address: AddressIn
    shipping_method: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")]
    payment: PaymentIn

    @model_validator(mode="after")
    def _one_source(self) -> OrderCreate:
        if (self.cart_id is None) == (self.lines is None):
            raise ValueError("give either cart_id or lines")
        return self


class CancelIn(StrictModel):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = ""


class RefundIn(StrictModel):
    amount: Annotated[Decimal, Field(gt=0, max_digits=14, decimal_places=3)]
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = ""


def _money(value: Money) -> dict[str, str]:
    return value.to_json()


def order_json(order: Order) -> dict[str, Any]:
    return {
        "id": order.id,
        "status": order.status.value,
        "currency": order.currency,
        "lines": [
            {
                "sku": line.sku,
                "product_name": line.product_name,
                "variant_name": line.variant_name,
                "quantity": line.quantity,
                "unit_price": _money(line.unit_price),
                "total": _money(line.total),
            }
            for line in order.lines
        ],
        "subtotal": _money(order.subtotal),
        "shipping": _money(order.shipping),
        "tax": _money(order.tax),
        "total": _money(order.total),
        "refunded": _money(order.refunded),
        "shipping_method": order.shipping_method,
        "shipping_address": order.shipping_address,
        "created_at": order.created_at.isoformat(),
        "updated_at": order.updated_at.isoformat(),
        "history": [
            {
                "from": t.from_status,
                "to": t.to_status,
                "actor": t.actor,
                "reason": t.reason,
                "at": t.at.isoformat(),
            }
            for t in order.history
        ],
    }


def render(order: Order) -> bytes:
    return orjson.dumps(order_json(order))


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    merged = {"Cache-Control": NO_STORE, **(headers or {})}
    return Response(body, status_code=status, media_type="application/json", headers=merged)


@router.post("/api/v1/orders", status_code=201, dependencies=[HOT_SKUS])
async def place_order(
    user: CurrentUser,
    orders: Orders,
    payload: Annotated[OrderCreate, Body()],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Checkout from the customer's cart or explicit lines; needs an `Idempotency-Key`."""
    if idempotency_key is None:
        raise MissingIdempotencyKey("Send an Idempotency-Key header (e.g. a UUID) with checkout.")
    assert user.user_id is not None  # noqa: S101 - CurrentUser admits people only
    request = CheckoutRequest(
        customer_id=user.user_id,
        idempotency_key=idempotency_key,
        cart_id=payload.cart_id,
        lines=tuple((line.sku, line.quantity) for line in payload.lines or ()),
        shipping_method=payload.shipping_method,
        shipping_address=payload.shipping_address.model_dump(exclude_none=True),
        card_token=payload.payment.card_token,
        fingerprint=fingerprint(payload.model_dump(mode="json")),
    )
    answer = await orders.place_order(request, render=render)
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else {}
    if answer.order_id:
        headers["Location"] = f"/api/v1/orders/{answer.order_id}"
    return _json(answer.body, answer.status, headers)


def _encode_cursor(cursor: tuple[datetime, str] | None) -> str | None:
    if cursor is None:
        return None
    raw = f"{cursor[0].isoformat()}|{cursor[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, order_id = raw.split("|", 1)
        return datetime.fromisoformat(created_at), order_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor("The cursor is not one this API gave out.") from None


def _page(items: list[Order], cursor: tuple[datetime, str] | None) -> Response:
    summaries = []
    for order in items:
        body = order_json(order)
        body.pop("history")
        body.pop("shipping_address")
        summaries.append(body)
    return _json(orjson.dumps({"items": summaries, "next_cursor": _encode_cursor(cursor)}))


Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=200)]


@router.get("/api/v1/orders")
async def list_my_orders(
    user: CurrentUser, orders: Orders, limit: Limit = 20, cursor: Cursor = None
) -> Response:
    """The signed-in customer's orders, newest first, cursor-paginated."""
    page = await orders.list_orders(
        customer_id=user.user_id, after=_decode_cursor(cursor), limit=limit
    )
    return _page(page.items, page.next_cursor)


@router.get("/api/v1/staff/orders")
async def list_all_orders(
    _staff: StaffOnly,
    orders: Orders,
    status: Annotated[list[OrderStatus] | None, Query()] = None,
    customer_id: Annotated[str | None, Query(max_length=36)] = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Response:
    """Staff: every order, filtered by status, customer and creation date."""
    page = await orders.list_orders(
        customer_id=customer_id,
        statuses=[s.value for s in status or ()],
        created_from=created_from,
        created_to=created_to,
        after=_decode_cursor(cursor),
        limit=limit,
    )
    return _page(page.items, page.next_cursor)


def _own(principal: Principal) -> str | None:
    """Staff may act on any order; a customer only on their own."""
    return None if principal.has_scope("staff") else principal.user_id


@router.get("/api/v1/orders/{order_id}")
async def get_order(user: CurrentUser, orders: Orders, order_id: OrderId) -> Response:
    """One of the customer's orders (staff: any order); 404 for anyone else's."""
    order = await orders.get_order(order_id=order_id, customer_id=_own(user))
    return _json(render(order))


@router.post("/api/v1/orders/{order_id}/cancel")
async def cancel_order(
    user: CurrentUser,
    orders: Orders,
    order_id: OrderId,
    payload: Annotated[CancelIn | None, Body()] = None,
) -> Response:
    """Cancel a paid order that has not shipped: full refund, stock back. Idempotent."""
    reason = (payload.reason if payload else "") or "cancelled by the customer"
    order = await orders.cancel_order(
        order_id=order_id, customer_id=_own(user), actor=f"user:{user.user_id}", reason=reason
    )
    return _json(render(order))


@router.post("/api/v1/orders/{order_id}/refunds", status_code=201)
async def refund_order(
    staff: StaffOnly,
    orders: Orders,
    order_id: OrderId,
    payload: RefundIn,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Staff: refund part or all of what was captured (never more); needs an Idempotency-Key."""
    if idempotency_key is None:
        raise MissingIdempotencyKey("Send an Idempotency-Key header with a refund.")
    order = await orders.refund(
        order_id=order_id,
        amount=payload.amount,
        idempotency_key=idempotency_key,
        actor=f"staff:{staff.user_id or staff.client_id}",
        reason=payload.reason or "refund",
    )
    return _json(render(order), 201)
