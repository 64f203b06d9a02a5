"""The port other contexts use to reach shipping (checkout prices the shipping of an order)."""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from pydantic import TypeAdapter

from ironcart.contracts.shipping import ShippingQuote
from ironcart.platform.http.service import ServiceClient
from ironcart.shipping.domain import MethodNotOffered
from ironcart.shipping.service import ShippingService

_QUOTES = TypeAdapter(list[ShippingQuote])


class ShippingClient(Protocol):
    async def methods(
        self,
        *,
        country: str,
        postal_code: str | None,
        weight_grams: int,
        subtotal: Decimal,
        currency: str,
    ) -> list[ShippingQuote]:
        """Every method offered for this destination and parcel, with its price."""
        ...

    async def quote(
        self,
        *,
        method_code: str,
        country: str,
        postal_code: str | None,
        weight_grams: int,
        subtotal: Decimal,
        currency: str,
    ) -> Decimal:
        """The price of one method; `MethodNotOffered` (422) when it is not offered."""
        ...


class InProcessShippingClient:
    def __init__(self, service: ShippingService) -> None:
        self._service = service

    async def methods(
        self,
        *,
        country: str,
        postal_code: str | None,
        weight_grams: int,
        subtotal: Decimal,
        currency: str,
    ) -> list[ShippingQuote]:
        """Quote through the shipping service in this process."""
        offers = await self._service.quote(
            country=country,
            postal_code=postal_code,
            weight_grams=weight_grams,
            subtotal=subtotal,
            currency=currency,
        )
        return [
            ShippingQuote(
                method_code=offer.method_code,
                method_name=offer.method_name,
                zone_name=offer.zone_name,
                price=offer.price.amount,
                currency=offer.price.currency,
            )
            for offer in offers
        ]

    async def quote(
        self,
        *,
        method_code: str,
        country: str,
        postal_code: str | None,
        weight_grams: int,
        subtotal: Decimal,
        currency: str,
    ) -> Decimal:
        """The price of one method, quoted through the shipping service in this process."""
        offers = await self.methods(
            country=country,
            postal_code=postal_code,
            weight_grams=weight_grams,
            subtotal=subtotal,
            currency=currency,
        )
        for offer in offers:
            if offer.method_code == method_code:
                return offer.price
        raise MethodNotOffered(method_code)


class HttpShippingClient:
    """Over the shipping service; quotes are reads (POST with a body, retried)."""

    def __init__(self, service: ServiceClient) -> None:
        self._service = service

    async def methods(
        self,
        *,
        country: str,
        postal_code: str | None,
        weight_grams: int,
        subtotal: Decimal,
        currency: str,
    ) -> list[ShippingQuote]:
        """The offered methods, quoted by the shipping service."""
        parcel = _parcel(country, postal_code, weight_grams, subtotal, currency)
        answer = await self._service.request(
            "POST", "/internal/v1/shipping/methods", json=parcel, retryable=True
        )
        return _QUOTES.validate_python(answer)

    async def quote(
        self,
        *,
        method_code: str,
        country: str,
        postal_code: str | None,
        weight_grams: int,
        subtotal: Decimal,
        currency: str,
    ) -> Decimal:
        """The price of one method, quoted by the shipping service."""
        parcel = _parcel(country, postal_code, weight_grams, subtotal, currency)
        answer = await self._service.request(
            "POST",
            "/internal/v1/shipping/quote",
            json={**parcel, "method_code": method_code},
            retryable=True,
        )
        return Decimal(str(answer["price"]))


def _parcel(
    country: str, postal_code: str | None, weight_grams: int, subtotal: Decimal, currency: str
) -> dict[str, object]:
    return {
        "country": country,
        "postal_code": postal_code,
        "weight_grams": weight_grams,
        "subtotal": str(subtotal),
        "currency": currency,
    }
