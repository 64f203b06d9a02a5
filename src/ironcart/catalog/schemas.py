"""Catalog request schemas (validated) and the JSON encoding of read models (not validated:
read paths encode straight from domain objects with orjson, once, and cache the bytes)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, Field, StringConstraints

from ironcart.catalog.domain import Category, Product, Variant
from ironcart.catalog.search import ListingPage
from ironcart.platform.http.schemas import StrictModel
from ironcart.platform.money import Money

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$", max_length=120)]
Sku = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"\S")]
AttributeName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
AttributeValue = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Attributes = Annotated[dict[AttributeName, AttributeValue], Field(max_length=50)]
ProductId = Annotated[str, Field(max_length=36)]
ImageUrl = Annotated[str, StringConstraints(pattern=r"^https://[^\s]{1,1000}$")]


class MoneyIn(StrictModel):
    amount: Annotated[
        Decimal, Field(ge=0, le=Decimal("99999999.99"), max_digits=12, decimal_places=3)
    ]
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]

    def to_money(self) -> Money:
        return Money.of(self.amount, self.currency)


class VariantCreate(StrictModel):
    sku: Sku
    name: Name
    price: MoneyIn
    weight_grams: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    barcode: Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z-]{1,64}$")] | None = None
    attributes: Attributes = Field(default_factory=dict)


class VariantUpdate(StrictModel):
    name: Name | None = None
    price: MoneyIn | None = None
    weight_grams: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    barcode: Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z-]{1,64}$")] | None = None
    attributes: Attributes | None = None


class ProductCreate(StrictModel):
    name: Name
    slug: Slug | None = None
    description: Annotated[str, Field(max_length=20_000)] = ""
    published: bool = False
    category: Annotated[str, Field(max_length=120)] | None = None
    images: Annotated[list[ImageUrl], Field(max_length=20)] = Field(default_factory=list)
    attributes: Attributes = Field(default_factory=dict)
    variants: Annotated[list[VariantCreate], Field(max_length=100)] = Field(default_factory=list)


class ProductUpdate(StrictModel):
    name: Name | None = None
    slug: Slug | None = None
    description: Annotated[str, Field(max_length=20_000)] | None = None
    published: bool | None = None
    category: Annotated[str, Field(max_length=120)] | None = None
    images: Annotated[list[ImageUrl], Field(max_length=20)] | None = None
    attributes: Attributes | None = None


class CategoryCreate(StrictModel):
    name: Name
    slug: Slug | None = None
    parent: Annotated[str, Field(max_length=120)] | None = None
    position: Annotated[int, Field(ge=0, le=100_000)] = 0


class CategoryUpdate(StrictModel):
    name: Name | None = None
    slug: Slug | None = None
    position: Annotated[int, Field(ge=0, le=100_000)] | None = None


class CollectionCreate(StrictModel):
    name: Name
    slug: Slug | None = None
    product_ids: Annotated[list[ProductId], Field(max_length=500)] = Field(default_factory=list)


def _variant(variant: Variant, available: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sku": variant.sku,
        "name": variant.name,
        "price": variant.price.to_json(),
        "weight_grams": variant.weight_grams,
        "barcode": variant.barcode,
        "attributes": variant.attributes,
        "version": variant.version,
    }
    if available is not None:
        body["available"] = available
        body["in_stock"] = available > 0
    return body


def product_json(product: Product, availability: dict[str, int] | None) -> dict[str, Any]:
    price_range = product.price_range()
    return {
        "id": product.id,
        "slug": product.slug,
        "name": product.name,
        "description": product.description,
        "published": product.published,
        "category_id": product.category_id,
        "images": product.images,
        "attributes": product.attributes,
        "price": None
        if price_range is None
        else {"min": price_range[0].to_json(), "max": price_range[1].to_json()},
        "variants": [
            _variant(v, None if availability is None else availability.get(v.sku, 0))
            for v in product.variants
        ],
        "available": None if availability is None else sum(availability.values()),
        "version": product.version,
        "created_at": product.created_at,
        "updated_at": product.updated_at,
    }


def encode_product(product: Product, availability: dict[str, int] | None) -> bytes:
    return orjson.dumps(product_json(product, availability))


def encode_variant(variant: Variant) -> bytes:
    return orjson.dumps(_variant(variant, None))


def encode_listing(page: ListingPage, next_cursor: str | None) -> bytes:
    items = []
    for row in page.rows:
        currency = row["currency"]
        images = orjson.loads(row["images"]) if row["images"] else []
        items.append(
            {
                "id": row["id"],
                "slug": row["slug"],
                "name": row["name"],
                "price": {
                    "min": Money.from_minor(int(row["min_price_minor"]), currency).to_json(),
                    "max": Money.from_minor(int(row["max_price_minor"]), currency).to_json(),
                },
                "in_stock": bool(row["in_stock"]),
                "image": images[0] if images else None,
            }
        )
    return orjson.dumps({"items": items, "next_cursor": next_cursor, "sort": page.sort.value})


def encode_category_tree(categories: list[Category]) -> bytes:
    nodes: dict[str, dict[str, Any]] = {
        c.id: {
            "id": c.id,
            "slug": c.slug,
            "name": c.name,
            "position": c.position,
            "version": c.version,
            "children": [],
        }
        for c in categories
    }
    roots: list[dict[str, Any]] = []
    for category in categories:
        parent = nodes.get(category.parent_id) if category.parent_id else None
        (parent["children"] if parent else roots).append(nodes[category.id])
    return orjson.dumps({"items": roots})


def encode_category(category: Category) -> bytes:
    return orjson.dumps(
        {
            "id": category.id,
            "slug": category.slug,
            "name": category.name,
            "parent_id": category.parent_id,
            "position": category.position,
            "version": category.version,
        }
    )


class MoneyRead(BaseModel):
    amount: str
    currency: str


class VariantRead(BaseModel):
    sku: str
    name: str
    price: MoneyRead
    weight_grams: int
    barcode: str | None
    attributes: dict[str, str]
    version: int
    available: int | None = None
    in_stock: bool | None = None


class PriceRange(BaseModel):
    min: MoneyRead
    max: MoneyRead


class ProductRead(BaseModel):
    """Documentation of the product JSON (the read path encodes without validating)."""

    id: str
    slug: str
    name: str
    description: str
    published: bool
    category_id: str | None
    images: list[str]
    attributes: dict[str, str]
    price: PriceRange | None
    variants: list[VariantRead]
    available: int | None
    version: int
    created_at: datetime
    updated_at: datetime


class ProductSummary(BaseModel):
    id: str
    slug: str
    name: str
    price: PriceRange
    in_stock: bool
    image: str | None


class ProductPage(BaseModel):
    items: list[ProductSummary]
    next_cursor: str | None
    sort: str
