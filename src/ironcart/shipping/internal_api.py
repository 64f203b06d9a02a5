"""Shipping's internal API: what `HttpShippingClient` calls (checkout prices the shipping of
an order), for services holding the `service:shipping` scope only."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import Depends, Request
from pydantic import BaseModel, Field

from ironcart.contracts.shipping import ShippingQuote
from ironcart.platform.http.auth import internal_router
from ironcart.platform.http.schemas import StrictModel
from ironcart.shipping.client import InProcessShippingClient

router = internal_router("shipping")


async def _shipping(request: Request) -> InProcessShippingClient:
    return InProcessShippingClient(request.app.state.container.shipping)


Shipping = Annotated[InProcessShippingClient, Depends(_shipping)]


class ParcelRequest(StrictModel):
    country: Annotated[str, Field(max_length=2)]
    postal_code: Annotated[str, Field(max_length=32)] | None = None
    weight_grams: int
    subtotal: Decimal
    currency: Annotated[str, Field(max_length=3)]


class QuoteRequest(ParcelRequest):
    method_code: Annotated[str, Field(min_length=1, max_length=32)]


class Price(BaseModel):
    price: Decimal


# Quotes are reads: POST only because the parcel travels as a body.
@router.post("/methods")
async def methods(body: ParcelRequest, shipping: Shipping) -> list[ShippingQuote]:
    return await shipping.methods(**body.model_dump())


@router.post("/quote")
async def quote(body: QuoteRequest, shipping: Shipping) -> Price:
    return Price(price=await shipping.quote(**body.model_dump()))
