"""Catalog use cases: staff edits with optimistic locking, reads for shoppers and other contexts."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ironcart.catalog.domain import (
    SKU_PATTERN,
    Category,
    CategoryInUse,
    CategoryNotFound,
    InvalidCatalogData,
    ListingQuery,
    Product,
    ProductNotFound,
    Variant,
    VariantNotFound,
    category_path,
    check_single_currency,
    slugify,
)
from ironcart.catalog.repository import CatalogUnitOfWork
from ironcart.catalog.search import ListingPage, list_products
from ironcart.contracts.catalog import ProductChanged, VariantSnapshot
from ironcart.platform.errors import PreconditionFailed
from ironcart.platform.events import EventBus
from ironcart.platform.money import Money


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class VariantDraft:
    sku: str
    name: str
    price: Money
    weight_grams: int = 0
    barcode: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProductDraft:
    name: str
    description: str = ""
    slug: str | None = None
    published: bool = False
    category: str | None = None
    images: list[str] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)
    variants: list[VariantDraft] = field(default_factory=list)


def _search_attributes(product: Product) -> dict[str, str]:
    """Product and variant attributes, so `size=42` finds a product with a size-42 variant."""
    merged = dict(product.attributes)
    for variant in product.variants:
        merged.update(variant.attributes)
    return merged


class CatalogService:
    def __init__(
        self,
        *,
        uow_factory: Callable[[], CatalogUnitOfWork],
        bus: EventBus,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._uow = uow_factory
        self._bus = bus
        self._clock = clock

    # -- products --------------------------------------------------------------------------

    async def create_product(self, *, draft: ProductDraft) -> Product:
        """Create a product and its variants in one transaction."""
        check_single_currency([variant.price for variant in draft.variants])
        now = self._clock()
        product_id = str(uuid.uuid4())
        variants = [
            Variant(
                sku=v.sku,
                product_id=product_id,
                name=v.name,
                price=v.price,
                weight_grams=v.weight_grams,
                barcode=v.barcode,
                attributes=v.attributes,
                position=i,
                version=1,
            )
            for i, v in enumerate(draft.variants)
        ]
        product = Product(
            id=product_id,
            slug=draft.slug or slugify(draft.name),
            name=draft.name,
            description=draft.description,
            published=draft.published,
            category_id=None,
            images=draft.images,
            attributes=draft.attributes,
            created_at=now,
            updated_at=now,
            version=1,
            variants=variants,
        )
        async with self._uow() as uow:
            category = await self._category(uow, draft.category)
            slug = product.slug
            if draft.slug is None and await uow.products.get_by_slug(slug) is not None:
                slug = f"{slug[:113]}-{secrets.token_hex(3)}"  # a generated slug never collides
            product = replace(product, slug=slug, category_id=category.id if category else None)
            await uow.products.add(product, category_path=category.path if category else None)
            for variant in variants:
                await uow.products.add_variant(variant)
            await self._reindex(uow, product.id)
            await uow.commit()
        await self._changed(product, product)
        return await self.get_product(id_or_slug=product.id, include_unpublished=True)

    async def update_product(
        self, *, product_id: str, expected_version: int, changes: dict[str, Any]
    ) -> Product:
        """Change a product's fields if nobody changed it since `expected_version`."""
        async with self._uow() as uow:
            current = await uow.products.get(product_id)
            if current is None:
                raise ProductNotFound
            values = {k: v for k, v in changes.items() if k != "category"}
            path: Any = None
            if "category" in changes:
                category = await self._category(uow, changes["category"])
                values["category_id"] = category.id if category else None
                path = category.path if category else ""
            values["updated_at"] = self._clock()
            if not await uow.products.update(
                product_id,
                expected_version=expected_version,
                values=values,
                category_path=path or None,
            ):
                raise PreconditionFailed("The product was changed since you read it.")
            await self._reindex(uow, product_id)
            await uow.commit()
        updated = await self.get_product(id_or_slug=product_id, include_unpublished=True)
        await self._changed(current, updated)
        return updated

    async def delete_product(self, *, product_id: str, expected_version: int) -> None:
        """Delete a product and its variants."""
        async with self._uow() as uow:
            current = await uow.products.get(product_id)
            if current is None:
                raise ProductNotFound
            if not await uow.products.delete(product_id, expected_version=expected_version):
                raise PreconditionFailed("The product was changed since you read it.")
            await uow.commit()
        await self._changed(current, current)

    async def get_product(self, *, id_or_slug: str, include_unpublished: bool = False) -> Product:
        """A product with its variants, by id or slug; unpublished ones only for staff."""
        async with self._uow().reading() as uow:
            product = await uow.products.get(id_or_slug) or await uow.products.get_by_slug(
                id_or_slug
            )
        if product is None or not (product.published or include_unpublished):
            raise ProductNotFound
        return product

    async def product_page(self, *, id_or_slug: str) -> tuple[Product, dict[str, int]]:
        """A published product and its availability per SKU, read in one query (for shoppers)."""
        async with self._uow().reading() as uow:
            found = await uow.products.page(id_or_slug)
        if found is None or not found[0].published:
            raise ProductNotFound
        return found

    async def count_products(self) -> int:
        """How many products the catalog holds (published or not)."""
        async with self._uow().reading() as uow:
            return await uow.products.count()

    async def availability(self, *, product_id: str) -> dict[str, int]:
        """Sellable units per SKU of a product, as last reported by inventory."""
        async with self._uow().reading() as uow:
            return await uow.products.availability(product_id)

    async def list_products(self, *, query: ListingQuery) -> ListingPage:
        """One page of a listing or a search."""
        async with self._uow().reading() as uow:
            if query.category_path is not None:
                category = await uow.categories.get(query.category_path)
                if category is None:
                    raise CategoryNotFound
                query = replace(query, category_path=category.path)
            return await list_products(uow.session, query)

    async def collection_id(self, *, slug: str) -> str:
        """The id of the collection named by `slug`."""
        async with self._uow().reading() as uow:
            collection_id = await uow.collections.get_id(slug)
        if collection_id is None:
            raise CategoryNotFound("No such collection.")
        return collection_id

    # -- variants ---------------------------------------------------------------------------

    async def add_variant(
        self, *, product_id: str, expected_version: int, draft: VariantDraft
    ) -> Product:
        """Add a SKU to a product (the product's version guards against concurrent edits)."""
        async with self._uow() as uow:
            product = await uow.products.get(product_id)
            if product is None:
                raise ProductNotFound
            if product.version != expected_version:
                raise PreconditionFailed("The product was changed since you read it.")
            check_single_currency([v.price for v in product.variants] + [draft.price])
            await uow.products.add_variant(
                Variant(
                    sku=draft.sku,
                    product_id=product_id,
                    name=draft.name,
                    price=draft.price,
                    weight_grams=draft.weight_grams,
                    barcode=draft.barcode,
                    attributes=draft.attributes,
                    position=len(product.variants),
                    version=1,
                )
            )
            await uow.products.touch(product_id, now=self._clock())
            await self._reindex(uow, product_id)
            await uow.commit()
        updated = await self.get_product(id_or_slug=product_id, include_unpublished=True)
        await self._changed(product, updated)
        return updated

    async def update_variant(
        self, *, sku: str, expected_version: int, changes: dict[str, Any]
    ) -> Variant:
        """Change a variant (price, name, weight...) under its own version."""
        async with self._uow() as uow:
            variant = await uow.products.get_variant(sku)
            if variant is None:
                raise VariantNotFound
            if "price" in changes:
                product = await uow.products.get(variant.product_id)
                others = [v.price for v in (product.variants if product else []) if v.sku != sku]
                check_single_currency([*others, changes["price"]])
            if not await uow.products.update_variant(
                sku, expected_version=expected_version, values=changes
            ):
                raise PreconditionFailed("The variant was changed since you read it.")
            await uow.products.touch(variant.product_id, now=self._clock())
            await self._reindex(uow, variant.product_id)
            updated = await uow.products.get_variant(sku)
            product = await uow.products.get(variant.product_id)
            await uow.commit()
        if product is not None:
            await self._changed(product, product)
        assert updated is not None  # noqa: S101 - read back inside the same transaction
        return updated

    async def delete_variant(self, *, sku: str, expected_version: int) -> None:
        """Remove a SKU from its product."""
        async with self._uow() as uow:
            variant = await uow.products.get_variant(sku)
            if variant is None:
                raise VariantNotFound
            if variant.version != expected_version:
                raise PreconditionFailed("The variant was changed since you read it.")
            await uow.products.delete_variant(sku)
            await uow.products.touch(variant.product_id, now=self._clock())
            await self._reindex(uow, variant.product_id)
            product = await uow.products.get(variant.product_id)
            await uow.commit()
        if product is not None:
            await self._changed(product, product, extra_skus=(sku,))

    async def variants(self, *, skus: Sequence[str]) -> dict[str, VariantSnapshot]:
        """Current name, price and publication of each known SKU (for carts and checkout)."""
        wanted = [sku for sku in dict.fromkeys(skus) if SKU_PATTERN.match(sku)][:500]
        if not wanted:
            return {}
        async with self._uow().reading() as uow:
            found = await uow.products.variants_by_sku(wanted)
        return {
            variant.sku: VariantSnapshot(
                sku=variant.sku,
                product_id=variant.product_id,
                product_name=product_name,
                variant_name=variant.name,
                price=variant.price.amount,
                currency=variant.price.currency,
                published=published,
                weight_grams=variant.weight_grams,
            )
            for variant, product_name, published in found
        }

    async def record_availability(self, *, sku: str, available: int) -> None:
        """Update the availability read model from inventory's StockChanged event."""
        async with self._uow() as uow:
            changed = await uow.products.set_available(sku, available)
            await uow.commit()
        if changed is not None:
            product_id, slug, in_stock_flipped = changed
            await self._bus.publish(
                [
                    ProductChanged(
                        product_id=product_id,
                        skus=(sku,),
                        slugs=(slug,),
                        listing_changed=in_stock_flipped,
                    )
                ]
            )

    async def sync_availability(
        self,
        *,
        availability: Callable[[Sequence[str]], Awaitable[dict[str, int]]],
        batch: int = 1000,
    ) -> int:
        """Re-read every SKU's availability from inventory (repairs missed events); returns SKUs."""
        after, synced = "", 0
        while True:
            async with self._uow().reading() as uow:
                skus = await uow.products.skus_after(after, limit=batch)
            if not skus:
                break
            counts = await availability(skus)
            async with self._uow() as uow:
                await uow.products.set_available_many({sku: counts.get(sku, 0) for sku in skus})
                await uow.commit()
            synced += len(skus)
            after = skus[-1]
        async with self._uow() as uow:
            await uow.products.refresh_in_stock_all()
            await uow.commit()
        await self._bus.publish([ProductChanged(product_id="", skus=(), listing_changed=True)])
        return synced

    # -- categories and collections ---------------------------------------------------------

    async def create_category(
        self, *, name: str, slug: str | None, parent: str | None, position: int = 0
    ) -> Category:
        """Create a category under `parent` (id or slug), or at the top."""
        category_id = str(uuid.uuid4())
        async with self._uow() as uow:
            parent_category = await self._category(uow, parent)
            category = Category(
                id=category_id,
                parent_id=parent_category.id if parent_category else None,
                slug=slug or slugify(name),
                name=name,
                path=category_path(parent_category.path if parent_category else None, category_id),
                position=position,
                version=1,
            )
            await uow.categories.add(category)
            await uow.commit()
        await self._bus.publish([ProductChanged(product_id="", skus=(), listing_changed=True)])
        return category

    async def update_category(
        self, *, category_id: str, expected_version: int, changes: dict[str, Any]
    ) -> Category:
        """Rename or reorder a category (moving it to another parent is not supported)."""
        async with self._uow() as uow:
            if await uow.categories.get(category_id) is None:
                raise CategoryNotFound
            if not await uow.categories.update(
                category_id, expected_version=expected_version, values=changes
            ):
                raise PreconditionFailed("The category was changed since you read it.")
            category = await uow.categories.get(category_id)
            await uow.commit()
        await self._bus.publish([ProductChanged(product_id="", skus=(), listing_changed=True)])
        assert category is not None  # noqa: S101 - read back inside the same transaction
        return category

    async def delete_category(self, *, category_id: str, expected_version: int) -> None:
        """Delete an empty category."""
        async with self._uow() as uow:
            if await uow.categories.get(category_id) is None:
                raise CategoryNotFound
            if await uow.categories.in_use(category_id):
                raise CategoryInUse
            if not await uow.categories.delete(category_id, expected_version=expected_version):
                raise PreconditionFailed("The category was changed since you read it.")
            await uow.commit()
        await self._bus.publish([ProductChanged(product_id="", skus=(), listing_changed=True)])

    async def categories(self) -> list[Category]:
        """Every category, in display order (the API nests them into a tree)."""
        async with self._uow().reading() as uow:
            return await uow.categories.list_all()

    async def get_category(self, *, id_or_slug: str) -> Category:
        """One category by id or slug."""
        async with self._uow().reading() as uow:
            category = await uow.categories.get(id_or_slug)
        if category is None:
            raise CategoryNotFound
        return category

    async def create_collection(
        self, *, name: str, slug: str | None, product_ids: list[str]
    ) -> str:
        """Create a hand-picked collection of products; returns its id."""
        collection_id = str(uuid.uuid4())
        async with self._uow() as uow:
            await uow.collections.add(
                collection_id=collection_id, slug=slug or slugify(name), name=name
            )
            for product_id in product_ids:
                if await uow.products.get(product_id) is None:
                    raise ProductNotFound(f"No product {product_id!r}.")
            await uow.collections.set_products(collection_id, product_ids)
            await uow.commit()
        await self._bus.publish([ProductChanged(product_id="", skus=(), listing_changed=True)])
        return collection_id

    # -- helpers ------------------------------------------------------------------------------

    async def _category(self, uow: CatalogUnitOfWork, id_or_slug: str | None) -> Category | None:
        if not id_or_slug:
            return None
        category = await uow.categories.get(id_or_slug)
        if category is None:
            raise InvalidCatalogData(f"No category {id_or_slug!r}.")
        return category

    async def _reindex(self, uow: CatalogUnitOfWork, product_id: str) -> None:
        product = await uow.products.get(product_id)
        if product is None:
            return
        await uow.products.replace_search_attributes(product_id, _search_attributes(product))
        await uow.products.refresh_price_range(product_id)

    async def _changed(
        self, before: Product, after: Product, *, extra_skus: tuple[str, ...] = ()
    ) -> None:
        skus = {v.sku for v in before.variants} | {v.sku for v in after.variants} | set(extra_skus)
        await self._bus.publish(
            [
                ProductChanged(
                    product_id=after.id,
                    skus=tuple(sorted(skus)),
                    slugs=tuple(sorted({before.slug, after.slug})),
                )
            ]
        )
