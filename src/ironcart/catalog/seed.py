"""A realistic demo catalog, generated quickly: `ironcart seed --products N`.

Deterministic for a given N (seeded random), bulk-inserted in batches of one transaction
each; products get 1-3 variants (size/colour), categories a two-level tree.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from ironcart.catalog.domain import category_path, slugify
from ironcart.catalog.repository import (
    CatalogUnitOfWork,
    categories,
    product_attributes,
    products,
    variants,
)

ADJECTIVES = (
    "Classic",
    "Urban",
    "Trail",
    "Compact",
    "Premium",
    "Everyday",
    "Vintage",
    "Smart",
    "Ultralight",
    "Organic",
    "Rugged",
    "Minimal",
    "Cosy",
    "Pro",
    "Eco",
    "Retro",
)
MATERIALS = (
    "Cotton",
    "Wool",
    "Leather",
    "Steel",
    "Bamboo",
    "Ceramic",
    "Linen",
    "Carbon",
    "Oak",
    "Glass",
    "Canvas",
    "Titanium",
    "Denim",
    "Cork",
    "Silk",
    "Walnut",
)
CATALOG_TREE = {
    "Clothing": ("T-Shirt", "Jacket", "Sweater", "Jeans", "Scarf", "Hoodie"),
    "Footwear": ("Sneaker", "Boot", "Sandal", "Running Shoe", "Slipper"),
    "Kitchen": ("Kettle", "Mug", "Skillet", "Knife", "Teapot", "Cutting Board"),
    "Outdoor": ("Backpack", "Tent", "Water Bottle", "Headlamp", "Sleeping Bag"),
    "Home": ("Lamp", "Cushion", "Blanket", "Vase", "Clock", "Rug"),
    "Electronics": ("Headphone", "Speaker", "Charger", "Keyboard", "Monitor", "Webcam"),
}
COLOURS = ("black", "white", "red", "blue", "green", "grey", "navy", "olive")
SIZES = ("XS", "S", "M", "L", "XL")
SENTENCES = (
    "Built to last and designed for everyday use.",
    "Made from responsibly sourced {material}.",
    "A favourite of our customers for its comfort and durability.",
    "Easy to care for; machine washable where the label says so.",
    "Pairs well with the rest of the {kind} range.",
    "Ships in plastic-free packaging.",
)
BATCH = 1000
KIND_OF_CATEGORY = {f"{kind}s": kind for kinds in CATALOG_TREE.values() for kind in kinds}


def _category_rows() -> tuple[list[dict[str, Any]], dict[str, tuple[str, str]]]:
    rows, leaves = [], {}
    for position, (root_name, kinds) in enumerate(CATALOG_TREE.items()):
        root_id = str(uuid.uuid4())
        root_path = category_path(None, root_id)
        rows.append(
            {
                "id": root_id,
                "parent_id": None,
                "slug": slugify(root_name),
                "name": root_name,
                "path": root_path,
                "position": position,
                "version": 1,
            }
        )
        for child_position, kind in enumerate(kinds):
            child_id = str(uuid.uuid4())
            path = category_path(root_path, child_id)
            rows.append(
                {
                    "id": child_id,
                    "parent_id": root_id,
                    "slug": slugify(f"{root_name} {kind}s"),
                    "name": f"{kind}s",
                    "path": path,
                    "position": child_position,
                    "version": 1,
                }
            )
            leaves[kind] = (child_id, path)
    return rows, leaves


def _product(
    index: int, rng: random.Random, leaves: dict[str, tuple[str, str]], now: datetime, currency: str
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    kind = rng.choice(list(leaves))
    material = rng.choice(MATERIALS)
    name = f"{rng.choice(ADJECTIVES)} {material} {kind}"
    product_id = str(uuid.uuid4())
    description = " ".join(
        s.format(material=material.lower(), kind=kind.lower()) for s in rng.sample(SENTENCES, 3)
    )
    base_price = rng.randint(199, 49999)
    colours = rng.sample(COLOURS, rng.randint(1, 3))
    sized = kind in {"T-Shirt", "Jacket", "Sweater", "Jeans", "Hoodie", "Sneaker", "Boot"}
    variant_rows, attributes = [], {"material": material.lower()}
    for position, colour in enumerate(colours):
        size = rng.choice(SIZES) if sized else None
        variant_attributes = {"colour": colour, **({"size": size} if size else {})}
        variant_rows.append(
            {
                "sku": f"S{index:07d}-{position}",
                "product_id": product_id,
                "name": " / ".join(variant_attributes.values()),
                "price_minor": base_price + 100 * position,
                "currency": currency,
                "weight_grams": rng.randint(50, 5000),
                "barcode": f"{4000000000000 + index * 10 + position}",
                "attributes": json.dumps(variant_attributes, sort_keys=True, separators=(",", ":")),
                "position": position,
                "available": 0,
                "version": 1,
            }
        )
    category_id, path = leaves[kind]
    created = now - timedelta(seconds=index)
    product = {
        "id": product_id,
        "slug": f"{slugify(name)}-{index}",
        "name": name,
        "description": description,
        "published": rng.random() > 0.02,
        "category_id": category_id,
        "category_path": path,
        "images": json.dumps([f"https://img.ironcart.example/{index}.jpg"]),
        "attributes": json.dumps(attributes, sort_keys=True, separators=(",", ":")),
        "currency": currency,
        "min_price_minor": base_price,
        "max_price_minor": base_price + 100 * (len(colours) - 1),
        "in_stock": False,
        "created_at": created,
        "updated_at": created,
        "version": 1,
    }
    pairs = {("material", material.lower())} | {("colour", c) for c in colours}
    if sized:
        pairs |= {("size", json.loads(str(v["attributes"]))["size"]) for v in variant_rows}
    attribute_rows = [{"product_id": product_id, "name": n, "value": v} for n, v in sorted(pairs)]
    return product, variant_rows, attribute_rows


def _batches(count: int, start: int) -> Iterator[range]:
    for first in range(start, start + count, BATCH):
        yield range(first, min(first + BATCH, start + count))


async def seed_catalog(
    uow_factory: Callable[[], CatalogUnitOfWork], *, count: int, currency: str
) -> list[str]:
    """Add `count` products (after any already there); returns every new SKU."""
    now = datetime.now(UTC)
    async with uow_factory() as uow:
        existing = await uow.products.count()
        leaves = await _existing_leaves(uow)
        if not leaves:
            rows, leaves = _category_rows()
            await uow.session.execute(insert(categories), rows)
            await uow.commit()
    rng = random.Random(existing + count)  # noqa: S311 - demo data, not security
    skus: list[str] = []
    for batch in _batches(count, existing):
        product_rows, variant_rows, attribute_rows = [], [], []
        for index in batch:
            product, product_variants, attributes = _product(index, rng, leaves, now, currency)
            product_rows.append(product)
            variant_rows.extend(product_variants)
            attribute_rows.extend(attributes)
        async with uow_factory() as uow:
            await uow.session.execute(insert(products), product_rows)
            await uow.session.execute(insert(variants), variant_rows)
            await uow.session.execute(insert(product_attributes), attribute_rows)
            await uow.commit()
        skus.extend(row["sku"] for row in variant_rows)
    return skus


async def _existing_leaves(uow: CatalogUnitOfWork) -> dict[str, tuple[str, str]]:
    rows = await uow.session.execute(
        select(categories.c.id, categories.c.name, categories.c.path).where(
            categories.c.parent_id.is_not(None)
        )
    )
    return {
        KIND_OF_CATEGORY[name]: (category_id, path)
        for category_id, name, path in rows
        if name in KIND_OF_CATEGORY
    }
