"""Cart HTTP API. An anonymous cart is reached with its `X-Cart-Token`, a customer's cart by
its owner's bearer token; anyone else gets the 404 of a cart that does not exist.

Writes take an optional `If-Match` (412 when stale). Answers carry the cart's ETag and
`Cache-Control: no-store` (a cart is private and priced live).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Path, Request, Response
from pydantic import BaseModel, Field, StringConstraints

from ironcart.cart.domain import (
    MAX_LINE_QUANTITY,
    TOKEN_MAX_LENGTH,
    Access,
    PricedCart,
    PricedLine,
)
from ironcart.cart.service import CartService
from ironcart.platform.http.auth import CurrentUserId, current_principal
from ironcart.platform.http.preconditions import required_version, version_etag
from ironcart.platform.http.schemas import StrictModel
from ironcart.platform.money import Money
from ironcart.platform.resilience.ratelimits import (
    admission_settings,
    hot_resource_limit,
    skus_of_line,
)

CART_TOKEN_HEADER = "X-Cart-Token"  # noqa: S105 - a header name, not a secret
SKU_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
NO_STORE = "no-store"

router = APIRouter(tags=["cart"])


async def get_cart_service(request: Request) -> CartService:
    service: CartService = request.app.state.container.cart
    return service


async def optional_user_id(request: Request) -> str | None:
    """The signed-in person when a bearer token came (a bad token is still a 401), else None."""
    if "authorization" not in request.headers:
        return None
    principal = await current_principal(request)
    return principal.user_id


Carts = Annotated[CartService, Depends(get_cart_service)]
# A hot SKU (a sale everyone wants) is throttled per SKU, across all buyers.
HOT_SKU = hot_resource_limit(admission_settings, skus_of_line)
OptionalUserId = Annotated[str | None, Depends(optional_user_id)]
CartToken = Annotated[str | None, Header(alias=CART_TOKEN_HEADER, max_length=TOKEN_MAX_LENGTH)]
CartId = Annotated[str, Path(min_length=1, max_length=64)]
SkuInPath = Annotated[str, Path(pattern=SKU_PATTERN)]


async def cart_access(user_id: OptionalUserId, token: CartToken = None) -> Access:
    return Access(user_id=user_id, token=token)


CartAccess = Annotated[Access, Depends(cart_access)]


Sku = Annotated[str, StringConstraints(pattern=SKU_PATTERN)]


class LineAdd(StrictModel):
    sku: Sku
    quantity: Annotated[int, Field(strict=True, ge=1, le=MAX_LINE_QUANTITY)] = 1


class LineUpdate(StrictModel):
    quantity: Annotated[int, Field(strict=True, ge=0, le=MAX_LINE_QUANTITY)]


class MoneyRead(BaseModel):
    amount: str
    currency: str

    @classmethod
    def of(cls, money: Money | None) -> MoneyRead | None:
        return None if money is None else cls(amount=str(money.amount), currency=money.currency)


class CartLineRead(BaseModel):
    sku: str
    name: str
    variant_name: str
    quantity: int
    price_seen: MoneyRead
    current_price: MoneyRead | None
    price_changed: bool
    available: int
    availability_changed: bool
    insufficient_stock: bool
    purchasable: bool
    line_total: MoneyRead | None

    @classmethod
    def of(cls, line: PricedLine) -> CartLineRead:
        return cls(
            sku=line.sku,
            name=line.name,
            variant_name=line.variant_name,
            quantity=line.quantity,
            price_seen=MoneyRead(
                amount=str(line.price_seen.amount), currency=line.price_seen.currency
            ),
            current_price=MoneyRead.of(line.current_price),
            price_changed=line.price_changed,
            available=line.available,
            availability_changed=line.availability_changed,
            insufficient_stock=line.insufficient_stock,
            purchasable=line.purchasable,
            line_total=MoneyRead.of(line.line_total),
        )


class CartRead(BaseModel):
    id: str
    kind: str
    version: int
    currency: str | None
    lines: list[CartLineRead]
    item_count: int
    subtotal: MoneyRead | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, priced: PricedCart) -> CartRead:
        cart = priced.cart
        return cls(
            id=cart.id,
            kind="anonymous" if cart.is_anonymous else "customer",
            version=cart.version,
            currency=cart.currency,
            lines=[CartLineRead.of(line) for line in priced.lines],
            item_count=sum(line.quantity for line in priced.lines),
            subtotal=MoneyRead.of(priced.subtotal),
            created_at=cart.created_at,
            updated_at=cart.updated_at,
        )


class CartCreated(CartRead):
    """A new anonymous cart: its `token` (also in `X-Cart-Token`) is shown this once."""

    token: str | None = None


def _cart_response(priced: PricedCart, *, status: int = 200, token: str | None = None) -> Response:
    body: dict[str, Any] = CartRead.of(priced).model_dump(mode="json")
    headers = {"ETag": version_etag(priced.cart.version), "Cache-Control": NO_STORE}
    if status == 201:
        headers["Location"] = f"/api/v1/carts/{priced.cart.id}"
    if token is not None:
        body["token"] = token
        headers[CART_TOKEN_HEADER] = token
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def _expected_version(request: Request) -> int | None:
    """The version named by an optional If-Match (`*` names whatever is current)."""
    header = request.headers.get("if-match")
    if header is None or header.strip() == "*":
        return None
    return required_version(request)


@router.post(
    "/api/v1/carts",
    status_code=201,
    responses={201: {"model": CartCreated}, 200: {"model": CartRead}},
)
async def create_cart(user_id: OptionalUserId, carts: Carts) -> Response:
    """Anonymous: a new cart and its token. Signed in: your open cart (201 when just created)."""
    if user_id is None:
        priced, token = await carts.create_anonymous_cart()
        return _cart_response(priced, status=201, token=token)
    priced, created = await carts.open_customer_cart(user_id=user_id)
    return _cart_response(priced, status=201 if created else 200)


@router.get("/api/v1/carts/{cart_id}", responses={200: {"model": CartRead}})
async def read_cart(cart_id: CartId, access: CartAccess, carts: Carts) -> Response:
    """The cart, repriced against the catalog and stock of this moment."""
    return _cart_response(await carts.get_cart(cart_id=cart_id, access=access))


@router.post(
    "/api/v1/carts/{cart_id}/items",
    responses={200: {"model": CartRead}},
    dependencies=[HOT_SKU],
)
async def add_item(
    cart_id: CartId, body: LineAdd, request: Request, access: CartAccess, carts: Carts
) -> Response:
    """Add units of a SKU: a new line, or more of the line it already has."""
    priced = await carts.add_item(
        cart_id=cart_id,
        access=access,
        sku=body.sku,
        quantity=body.quantity,
        expected_version=_expected_version(request),
    )
    return _cart_response(priced)


@router.patch("/api/v1/carts/{cart_id}/items/{sku}", responses={200: {"model": CartRead}})
async def update_item(
    cart_id: CartId,
    sku: SkuInPath,
    body: LineUpdate,
    request: Request,
    access: CartAccess,
    carts: Carts,
) -> Response:
    """Set a line's quantity; 0 removes the line."""
    priced = await carts.set_quantity(
        cart_id=cart_id,
        access=access,
        sku=sku,
        quantity=body.quantity,
        expected_version=_expected_version(request),
    )
    return _cart_response(priced)


@router.delete("/api/v1/carts/{cart_id}/items/{sku}", responses={200: {"model": CartRead}})
async def remove_item(
    cart_id: CartId, sku: SkuInPath, request: Request, access: CartAccess, carts: Carts
) -> Response:
    """Remove a line; answers with the cart (and its new ETag)."""
    priced = await carts.remove_item(
        cart_id=cart_id, access=access, sku=sku, expected_version=_expected_version(request)
    )
    return _cart_response(priced)


@router.post("/api/v1/carts/{cart_id}/merge", responses={200: {"model": CartRead}})
async def merge_cart(
    cart_id: CartId,
    request: Request,
    user_id: CurrentUserId,
    carts: Carts,
    token: Annotated[
        str, Header(alias=CART_TOKEN_HEADER, min_length=1, max_length=TOKEN_MAX_LENGTH)
    ],
) -> Response:
    """After sign-in: fold the anonymous cart of `X-Cart-Token` into your cart (idempotent)."""
    priced = await carts.merge(
        cart_id=cart_id,
        user_id=user_id,
        token=token,
        expected_version=_expected_version(request),
    )
    return _cart_response(priced)
