"""Demo zones and methods, in the shop's currency: GB (standard, express, pickup), the EU, and
the rest of the world. Checkout quotes the shipping of every order from these zones."""

from __future__ import annotations

from decimal import Decimal

from ironcart.shipping.domain import method
from ironcart.shipping.service import ShippingService
from ironcart.shipping.zoning import ZoneDraft

EU = ("AT", "BE", "DE", "DK", "ES", "FI", "FR", "IE", "IT", "NL", "PL", "PT", "SE")


def demo_zones(currency: str) -> list[ZoneDraft]:
    def bands(*pairs: tuple[int, str]) -> list[tuple[int, Decimal]]:
        return [(grams, Decimal(price)) for grams, price in pairs]

    return [
        ZoneDraft(
            name="GB domestic",
            countries=["GB"],
            postal_prefixes=[],
            methods=[
                method(
                    code="standard",
                    name="Standard (2-4 days)",
                    currency=currency,
                    bands=bands((2000, "5.00"), (10000, "8.00"), (30000, "15.00")),
                    free_over=Decimal("75.00"),
                ),
                method(
                    code="express",
                    name="Express (next day)",
                    currency=currency,
                    bands=bands((2000, "15.00"), (10000, "22.00")),
                ),
                method(
                    code="pickup",
                    name="Pick up in store",
                    currency=currency,
                    bands=bands((30000, "0.00")),
                ),
            ],
        ),
        ZoneDraft(
            name="EU",
            countries=list(EU),
            postal_prefixes=[],
            methods=[
                method(
                    code="standard",
                    name="EU standard (3-7 days)",
                    currency=currency,
                    bands=bands((2000, "12.00"), (10000, "20.00"), (30000, "35.00")),
                    free_over=Decimal("150.00"),
                ),
                method(
                    code="express",
                    name="EU express (1-2 days)",
                    currency=currency,
                    bands=bands((2000, "30.00"), (10000, "45.00")),
                ),
            ],
        ),
        ZoneDraft(
            name="Rest of world",
            countries=[],
            postal_prefixes=[],
            methods=[
                method(
                    code="standard",
                    name="International (5-15 days)",
                    currency=currency,
                    bands=bands((2000, "25.00"), (10000, "60.00")),
                ),
            ],
        ),
    ]


async def seed_zones(shipping: ShippingService, *, currency: str) -> list[str]:
    """Create the demo zones unless some zone exists already."""
    if await shipping.list_zones():
        return ["shipping zones already exist"]
    drafts = demo_zones(currency)
    for draft in drafts:
        await shipping.create_zone(draft)
    return [f"created {len(drafts)} shipping zones ({', '.join(d.name for d in drafts)})"]
