"""Catalog tables and their writes and lookups. Listing and search queries live in `search.py`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ironcart.catalog.domain import Category, Product, SkuTaken, SlugTaken, Variant
from ironcart.platform.database import Timestamp, UnitOfWork, metadata
from ironcart.platform.money import Money

categories = Table(
    "catalog_categories",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("parent_id", String(36), ForeignKey("catalog_categories.id"), nullable=True),
    Column("slug", String(120), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("path", String(512), nullable=False, index=True),
    Column("position", Integer, nullable=False, default=0),
    Column("version", Integer, nullable=False, default=1),
)

products = Table(
    "catalog_products",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("slug", String(120), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("published", Boolean, nullable=False),
    Column("category_id", String(36), ForeignKey("catalog_categories.id"), nullable=True),
    Column("category_path", String(512), nullable=True),
    Column("images", Text, nullable=False),
    Column("attributes", Text, nullable=False),
    # Denormalised from the variants for filtering and sorting without a join.
    Column("currency", String(3), nullable=True),
    Column("min_price_minor", BigInteger, nullable=True),
    Column("max_price_minor", BigInteger, nullable=True),
    # Read model of inventory's availability, fed by StockChanged events.
    Column("in_stock", Boolean, nullable=False, default=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("version", Integer, nullable=False, default=1),
    Index("ix_catalog_products_listing_newest", "published", "created_at", "id"),
    Index("ix_catalog_products_listing_price", "published", "min_price_minor", "id"),
    Index("ix_catalog_products_category_path", "category_path", "published"),
)

variants = Table(
    "catalog_variants",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column(
        "product_id",
        String(36),
        ForeignKey("catalog_products.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("name", String(200), nullable=False),
    Column("price_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("weight_grams", Integer, nullable=False),
    Column("barcode", String(64), nullable=True),
    Column("attributes", Text, nullable=False),
    Column("position", Integer, nullable=False),
    Column("available", Integer, nullable=False, default=0),
    Column("version", Integer, nullable=False, default=1),
)

product_attributes = Table(
    "catalog_product_attributes",
    metadata,
    Column(
        "product_id",
        String(36),
        ForeignKey("catalog_products.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("name", String(64), primary_key=True),
    Column("value", String(128), primary_key=True),
    Index("ix_catalog_product_attributes_lookup", "name", "value", "product_id"),
)

collections = Table(
    "catalog_collections",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("slug", String(120), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
)

collection_products = Table(
    "catalog_collection_products",
    metadata,
    Column(
        "collection_id",
        String(36),
        ForeignKey("catalog_collections.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "product_id",
        String(36),
        ForeignKey("catalog_products.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("position", Integer, nullable=False, default=0),
    Index("ix_catalog_collection_products_product", "product_id"),
)


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else {}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def variant_from_row(row: Any) -> Variant:
    return Variant(
        sku=row["sku"],
        product_id=row["product_id"],
        name=row["name"],
        price=Money.from_minor(int(row["price_minor"]), row["currency"]),
        weight_grams=int(row["weight_grams"]),
        barcode=row["barcode"],
        attributes=_loads(row["attributes"]),
        position=int(row["position"]),
        version=int(row["version"]),
    )


def _product(row: Any, product_variants: list[Variant]) -> Product:
    return Product(
        id=row["id"],
        slug=row["slug"],
        name=row["name"],
        description=row["description"],
        published=bool(row["published"]),
        category_id=row["category_id"],
        images=_loads(row["images"]) or [],
        attributes=_loads(row["attributes"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=int(row["version"]),
        variants=product_variants,
    )


class SqlProductRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, product: Product, *, category_path: str | None) -> None:
        try:
            await self._session.execute(
                insert(products).values(
                    id=product.id,
                    slug=product.slug,
                    name=product.name,
                    description=product.description,
                    published=product.published,
                    category_id=product.category_id,
                    category_path=category_path,
                    images=_dumps(product.images),
                    attributes=_dumps(product.attributes),
                    in_stock=False,
                    created_at=product.created_at,
                    updated_at=product.updated_at,
                    version=product.version,
                )
            )
        except IntegrityError:
            raise SlugTaken(f"The slug {product.slug!r} is already in use.") from None

    async def add_variant(self, variant: Variant) -> None:
        try:
            await self._session.execute(
                insert(variants).values(
                    sku=variant.sku,
                    product_id=variant.product_id,
                    name=variant.name,
                    price_minor=variant.price.to_minor(),
                    currency=variant.price.currency,
                    weight_grams=variant.weight_grams,
                    barcode=variant.barcode,
                    attributes=_dumps(variant.attributes),
                    position=variant.position,
                    available=0,
                    version=variant.version,
                )
            )
        except IntegrityError:
            raise SkuTaken(f"The SKU {variant.sku!r} is already in use.") from None

    async def get(self, product_id: str) -> Product | None:
        return await self._one(products.c.id == product_id)

    async def get_by_slug(self, slug: str) -> Product | None:
        return await self._one(products.c.slug == slug)

    async def _one(self, condition: Any) -> Product | None:
        row = (await self._session.execute(select(products).where(condition))).mappings().first()
        if row is None:
            return None
        variant_rows = await self._session.execute(
            select(variants)
            .where(variants.c.product_id == row["id"])
            .order_by(variants.c.position, variants.c.sku)
        )
        return _product(row, [variant_from_row(v) for v in variant_rows.mappings()])

    async def page(self, id_or_slug: str) -> tuple[Product, dict[str, int]] | None:
        """A product, its variants and their availability in one round trip (the hot read)."""
        variant_columns = [column.label(f"v_{column.name}") for column in variants.c]
        query = (
            select(products, *variant_columns)
            .outerjoin(variants, variants.c.product_id == products.c.id)
            .where(or_(products.c.id == id_or_slug, products.c.slug == id_or_slug))
            .order_by(products.c.id, variants.c.position, variants.c.sku)
        )
        rows = list((await self._session.execute(query)).mappings())
        if not rows:
            return None
        first = [row for row in rows if row["id"] == id_or_slug] or rows
        product_id = first[0]["id"]
        mine = [row for row in rows if row["id"] == product_id]
        found = [
            {column.name: row[f"v_{column.name}"] for column in variants.c}
            for row in mine
            if row["v_sku"] is not None
        ]
        product = _product(mine[0], [variant_from_row(v) for v in found])
        return product, {v["sku"]: int(v["available"]) for v in found}

    async def count(self) -> int:
        return int(
            (await self._session.execute(select(func.count()).select_from(products))).scalar_one()
        )

    async def availability(self, product_id: str) -> dict[str, int]:
        rows = await self._session.execute(
            select(variants.c.sku, variants.c.available).where(variants.c.product_id == product_id)
        )
        return {sku: int(available) for sku, available in rows}

    async def update(
        self,
        product_id: str,
        *,
        expected_version: int,
        values: dict[str, Any],
        category_path: str | object | None = None,
    ) -> bool:
        """Apply `values` if the product is still at `expected_version` (optimistic lock)."""
        changes = dict(values)
        for key in ("images", "attributes"):
            if key in changes:
                changes[key] = _dumps(changes[key])
        if category_path is not None:
            changes["category_path"] = category_path
        try:
            result = await self._session.execute(
                update(products)
                .where(products.c.id == product_id, products.c.version == expected_version)
                .values(**changes, version=products.c.version + 1)
            )
        except IntegrityError:
            raise SlugTaken("The slug is already in use.") from None
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def touch(self, product_id: str, *, now: datetime) -> None:
        """Bump the product's version after a change to one of its variants."""
        await self._session.execute(
            update(products)
            .where(products.c.id == product_id)
            .values(version=products.c.version + 1, updated_at=now)
        )

    async def refresh_price_range(self, product_id: str) -> None:
        stats = (
            await self._session.execute(
                select(
                    func.min(variants.c.price_minor),
                    func.max(variants.c.price_minor),
                    func.min(variants.c.currency),
                    func.max(variants.c.available),
                ).where(variants.c.product_id == product_id)
            )
        ).one()
        await self._session.execute(
            update(products)
            .where(products.c.id == product_id)
            .values(
                min_price_minor=stats[0],
                max_price_minor=stats[1],
                currency=stats[2],
                in_stock=bool(stats[3] and stats[3] > 0),
            )
        )

    async def delete(self, product_id: str, *, expected_version: int) -> bool:
        await self._session.execute(
            delete(product_attributes).where(product_attributes.c.product_id == product_id)
        )
        await self._session.execute(
            delete(collection_products).where(collection_products.c.product_id == product_id)
        )
        await self._session.execute(delete(variants).where(variants.c.product_id == product_id))
        result = await self._session.execute(
            delete(products).where(
                products.c.id == product_id, products.c.version == expected_version
            )
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def get_variant(self, sku: str) -> Variant | None:
        row = (
            (await self._session.execute(select(variants).where(variants.c.sku == sku)))
            .mappings()
            .first()
        )
        return None if row is None else variant_from_row(row)

    async def variants_by_sku(self, skus: list[str]) -> list[tuple[Variant, str, bool]]:
        """(variant, product name, product published) for each known SKU."""
        rows = await self._session.execute(
            select(variants, products.c.name.label("product_name"), products.c.published)
            .join(products, products.c.id == variants.c.product_id)
            .where(variants.c.sku.in_(skus))
        )
        return [
            (variant_from_row(r), r["product_name"], bool(r["published"])) for r in rows.mappings()
        ]

    async def update_variant(
        self, sku: str, *, expected_version: int, values: dict[str, Any]
    ) -> bool:
        changes = dict(values)
        if "attributes" in changes:
            changes["attributes"] = _dumps(changes["attributes"])
        if "price" in changes:
            price: Money = changes.pop("price")
            changes["price_minor"] = price.to_minor()
            changes["currency"] = price.currency
        result = await self._session.execute(
            update(variants)
            .where(variants.c.sku == sku, variants.c.version == expected_version)
            .values(**changes, version=variants.c.version + 1)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def delete_variant(self, sku: str) -> None:
        await self._session.execute(delete(variants).where(variants.c.sku == sku))

    async def set_available(self, sku: str, available: int) -> tuple[str, str, bool] | None:
        """Record inventory's availability of a SKU.

        Returns (product id, product slug, whether the product's in-stock flag flipped),
        or None for an unknown SKU.
        """
        row = (
            await self._session.execute(
                select(products.c.id, products.c.slug, products.c.in_stock)
                .join(variants, variants.c.product_id == products.c.id)
                .where(variants.c.sku == sku)
            )
        ).first()
        if row is None:
            return None
        product_id, slug, was_in_stock = str(row[0]), str(row[1]), bool(row[2])
        await self._session.execute(
            update(variants).where(variants.c.sku == sku).values(available=max(0, available))
        )
        best = (
            await self._session.execute(
                select(func.max(variants.c.available)).where(variants.c.product_id == product_id)
            )
        ).scalar()
        in_stock = bool(best and best > 0)
        await self._session.execute(
            update(products).where(products.c.id == product_id).values(in_stock=in_stock)
        )
        return product_id, slug, in_stock != was_in_stock

    async def skus_after(self, after: str, *, limit: int) -> list[str]:
        rows = await self._session.execute(
            select(variants.c.sku)
            .where(variants.c.sku > after)
            .order_by(variants.c.sku)
            .limit(limit)
        )
        return list(rows.scalars())

    async def set_available_many(self, available: dict[str, int]) -> None:
        await self._session.execute(
            update(variants)
            .where(variants.c.sku == bindparam("b_sku"))
            .values(available=bindparam("b_available")),
            [{"b_sku": sku, "b_available": max(0, count)} for sku, count in available.items()],
        )

    async def refresh_in_stock_all(self) -> None:
        in_stock = exists().where(variants.c.product_id == products.c.id, variants.c.available > 0)
        await self._session.execute(update(products).values(in_stock=in_stock))

    async def replace_search_attributes(self, product_id: str, attributes: dict[str, str]) -> None:
        """The (name, value) pairs a listing can filter on: the product's and its variants'."""
        await self._session.execute(
            delete(product_attributes).where(product_attributes.c.product_id == product_id)
        )
        if attributes:
            await self._session.execute(
                insert(product_attributes),
                [
                    {"product_id": product_id, "name": name, "value": value}
                    for name, value in attributes.items()
                ],
            )


class SqlCategoryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, category: Category) -> None:
        try:
            await self._session.execute(
                insert(categories).values(
                    id=category.id,
                    parent_id=category.parent_id,
                    slug=category.slug,
                    name=category.name,
                    path=category.path,
                    position=category.position,
                    version=category.version,
                )
            )
        except IntegrityError:
            raise SlugTaken(f"The slug {category.slug!r} is already in use.") from None

    async def get(self, id_or_slug: str) -> Category | None:
        row = (
            (
                await self._session.execute(
                    select(categories).where(
                        (categories.c.id == id_or_slug) | (categories.c.slug == id_or_slug)
                    )
                )
            )
            .mappings()
            .first()
        )
        return None if row is None else _category(row)

    async def list_all(self) -> list[Category]:
        rows = await self._session.execute(
            select(categories).order_by(categories.c.position, categories.c.name)
        )
        return [_category(row) for row in rows.mappings()]

    async def update(
        self, category_id: str, *, expected_version: int, values: dict[str, Any]
    ) -> bool:
        try:
            result = await self._session.execute(
                update(categories)
                .where(categories.c.id == category_id, categories.c.version == expected_version)
                .values(**values, version=categories.c.version + 1)
            )
        except IntegrityError:
            raise SlugTaken("The slug is already in use.") from None
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def in_use(self, category_id: str) -> bool:
        child = await self._session.execute(
            select(categories.c.id).where(categories.c.parent_id == category_id).limit(1)
        )
        product = await self._session.execute(
            select(products.c.id).where(products.c.category_id == category_id).limit(1)
        )
        return child.first() is not None or product.first() is not None

    async def delete(self, category_id: str, *, expected_version: int) -> bool:
        result = await self._session.execute(
            delete(categories).where(
                categories.c.id == category_id, categories.c.version == expected_version
            )
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def _category(row: Any) -> Category:
    return Category(
        id=row["id"],
        parent_id=row["parent_id"],
        slug=row["slug"],
        name=row["name"],
        path=row["path"],
        position=int(row["position"]),
        version=int(row["version"]),
    )


class SqlCollectionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, *, collection_id: str, slug: str, name: str) -> None:
        try:
            await self._session.execute(
                insert(collections).values(id=collection_id, slug=slug, name=name)
            )
        except IntegrityError:
            raise SlugTaken(f"The slug {slug!r} is already in use.") from None

    async def get_id(self, slug: str) -> str | None:
        row = (
            await self._session.execute(select(collections.c.id).where(collections.c.slug == slug))
        ).first()
        return None if row is None else str(row[0])

    async def set_products(self, collection_id: str, product_ids: list[str]) -> None:
        await self._session.execute(
            delete(collection_products).where(collection_products.c.collection_id == collection_id)
        )
        if product_ids:
            await self._session.execute(
                insert(collection_products),
                [
                    {"collection_id": collection_id, "product_id": pid, "position": i}
                    for i, pid in enumerate(product_ids)
                ],
            )


class CatalogUnitOfWork(UnitOfWork):
    products: SqlProductRepository
    categories: SqlCategoryRepository
    collections: SqlCollectionRepository

    def _open_repositories(self, session: AsyncSession) -> None:
        self.products = SqlProductRepository(session)
        self.categories = SqlCategoryRepository(session)
        self.collections = SqlCollectionRepository(session)
