"""Catalog rules: products, variants (SKUs), categories. Pure Python, no I/O.

IronCartError
 ├── NotFound
 │    ├── ProductNotFound        code catalog.product_not_found
 │    ├── VariantNotFound        code catalog.variant_not_found
 │    └── CategoryNotFound       code catalog.category_not_found
 ├── Conflict
 │    ├── SlugTaken              code catalog.slug_taken
 │    ├── SkuTaken               code catalog.sku_taken
 │    └── CategoryInUse          code catalog.category_in_use
 └── InvalidRequest
      ├── InvalidCursor          code catalog.invalid_cursor
      └── InvalidCatalogData     code catalog.invalid_data (mixed currencies, cycles...)
"""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from ironcart.platform.errors import Conflict, InvalidRequest, NotFound
from ironcart.platform.money import Money

SLUG_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
SKU_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_PAGE_SIZE = 100


class ProductNotFound(NotFound):
    code = "catalog.product_not_found"
    title = "Product not found"


class VariantNotFound(NotFound):
    code = "catalog.variant_not_found"
    title = "Variant not found"


class CategoryNotFound(NotFound):
    code = "catalog.category_not_found"
    title = "Category not found"


class SlugTaken(Conflict):
    code = "catalog.slug_taken"
    title = "Slug already in use"


class SkuTaken(Conflict):
    code = "catalog.sku_taken"
    title = "SKU already in use"


class CategoryInUse(Conflict):
    code = "catalog.category_in_use"
    title = "Category still has products or subcategories"


class InvalidCursor(InvalidRequest):
    code = "catalog.invalid_cursor"
    title = "Invalid pagination cursor"


class InvalidCatalogData(InvalidRequest):
    code = "catalog.invalid_data"
    title = "Invalid catalog data"


def slugify(text: str) -> str:
    """`"Red Running Shoe 42"` -> `"red-running-shoe-42"` (ASCII, lower case, hyphens)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:120] or "item"


class Sort(StrEnum):
    RELEVANCE = "relevance"
    PRICE = "price"
    PRICE_DESC = "-price"
    NEWEST = "newest"


@dataclass(frozen=True, slots=True)
class Variant:
    sku: str
    product_id: str
    name: str
    price: Money
    weight_grams: int
    barcode: str | None
    attributes: dict[str, str]
    position: int
    version: int


@dataclass(frozen=True, slots=True)
class Product:
    id: str
    slug: str
    name: str
    description: str
    published: bool
    category_id: str | None
    images: list[str]
    attributes: dict[str, str]
    created_at: datetime
    updated_at: datetime
    version: int
    variants: list[Variant] = field(default_factory=list)

    def price_range(self) -> tuple[Money, Money] | None:
        if not self.variants:
            return None
        prices = sorted((variant.price for variant in self.variants), key=lambda m: m.amount)
        return prices[0], prices[-1]


@dataclass(frozen=True, slots=True)
class Category:
    id: str
    parent_id: str | None
    slug: str
    name: str
    path: str
    position: int
    version: int


def check_single_currency(prices: list[Money]) -> str | None:
    """A product's variants share one currency (listings filter and sort on one price axis)."""
    currencies = {price.currency for price in prices}
    if len(currencies) > 1:
        raise InvalidCatalogData("All variants of a product must use the same currency.")
    return next(iter(currencies), None)


def category_path(parent_path: str | None, category_id: str) -> str:
    """Materialised path `/<root id>/.../<id>/`: descendants share the prefix (an indexed LIKE)."""
    return f"{parent_path or '/'}{category_id}/"


@dataclass(frozen=True, slots=True)
class ListingQuery:
    text: str | None = None
    category_path: str | None = None
    collection_id: str | None = None
    min_price_minor: int | None = None
    max_price_minor: int | None = None
    attributes: tuple[tuple[str, str], ...] = ()
    in_stock_only: bool = False
    sort: Sort = Sort.NEWEST
    limit: int = 24
    after: tuple[Any, str] | None = None


def encode_cursor(sort: Sort, key: Any, product_id: str) -> str:
    raw = json.dumps([sort.value, _jsonable(key), product_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: Sort) -> tuple[Any, str]:
    """The keyset position after which the next page starts; refuses a cursor of another sort."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        sort_value, key, product_id = json.loads(raw)
    except (ValueError, TypeError):
        raise InvalidCursor("The cursor is malformed.") from None
    if sort_value != sort.value or not isinstance(product_id, str):
        raise InvalidCursor("The cursor belongs to another sort order.")
    if sort is Sort.NEWEST and isinstance(key, str):
        try:
            return datetime.fromisoformat(key), product_id
        except ValueError:
            raise InvalidCursor("The cursor is malformed.") from None
    if not isinstance(key, int | float) or isinstance(key, bool):
        raise InvalidCursor("The cursor is malformed.")
    return key, product_id


def _jsonable(key: Any) -> Any:
    if isinstance(key, datetime):
        return key.isoformat()
    if isinstance(key, Decimal):
        return float(key)
    return key
