"""What other contexts may know of the catalog: sellable variants and their current price."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class VariantSnapshot:
    """A variant as a buyer sees it now. `price` is in major units of `currency`."""

    sku: str
    product_id: str
    product_name: str
    variant_name: str
    price: Decimal
    currency: str
    published: bool
    weight_grams: int


@dataclass(frozen=True, slots=True)
class ProductChanged:
    """Published after a product, one of its variants or its prices changed."""

    product_id: str
    skus: tuple[str, ...]
    slugs: tuple[str, ...] = ()
    listing_changed: bool = True
