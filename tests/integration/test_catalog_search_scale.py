"""Search and listings over 100,000 products on PostgreSQL: relevance, and plans that use indexes."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, text

from ironcart.catalog.domain import ListingQuery, Sort
from ironcart.catalog.repository import CatalogUnitOfWork, products
from ironcart.catalog.search import listing_statement
from ironcart.catalog.seed import seed_catalog
from ironcart.catalog.service import CatalogService, ProductDraft, VariantDraft
from ironcart.platform.database import create_engine, session_factory
from ironcart.platform.events import EventBus
from ironcart.platform.money import Money

pytestmark = [pytest.mark.anyio, pytest.mark.integration]
PRODUCTS = 100_000


def _draft(name: str, description: str, sku: str) -> ProductDraft:
    return ProductDraft(
        name=name,
        description=description,
        published=True,
        variants=[VariantDraft(sku=sku, name="Default", price=Money(Decimal("30.00"), "USD"))],
    )


async def _plan(connection: Any, query: ListingQuery) -> str:
    statement, _sort = listing_statement("postgresql", query)
    compiled = statement.compile(dialect=connection.dialect)
    parameters = tuple(compiled.params[name] for name in compiled.positiontup or ())
    result = await connection.exec_driver_sql(
        "EXPLAIN (FORMAT JSON) " + compiled.string, parameters
    )
    return json.dumps(result.scalar_one())


async def test_search_and_listings_over_100k_products(postgres_url: str) -> None:
    engine = create_engine(postgres_url, pool_size=4)
    sessions = session_factory(engine)
    catalog = CatalogService(uow_factory=lambda: CatalogUnitOfWork(sessions), bus=EventBus())
    try:
        started = time.perf_counter()
        await seed_catalog(lambda: CatalogUnitOfWork(sessions), count=PRODUCTS, currency="USD")
        seeded_in = time.perf_counter() - started
        in_name = await catalog.create_product(
            draft=_draft("Zanzibarite Teapot", "A teapot glazed with zanzibarite.", "ZAN-1")
        )
        in_description = await catalog.create_product(
            draft=_draft("Glazed Teapot", "Glazed in the zanzibarite style.", "ZAN-2")
        )
        await catalog.create_product(draft=_draft("Plain Teapot", "A plain teapot.", "ZAN-3"))
        async with engine.connect() as connection:
            await connection.execute(text("ANALYZE"))

        found = await catalog.list_products(
            query=ListingQuery(text="zanzibarite", sort=Sort.RELEVANCE)
        )
        assert [row["id"] for row in found.rows] == [in_name.id, in_description.id]
        broad = await catalog.list_products(
            query=ListingQuery(text="walnut kettle", sort=Sort.RELEVANCE, limit=10)
        )
        assert len(broad.rows) == 10
        assert all("Walnut" in row["name"] and "Kettle" in row["name"] for row in broad.rows[:3])

        async with engine.connect() as connection:
            deep = (
                await connection.execute(
                    select(products.c.created_at, products.c.id)
                    .where(products.c.published)
                    .order_by(products.c.created_at.desc(), products.c.id.desc())
                    .offset(24 * 1000)
                    .limit(1)
                )
            ).one()
            plans = {
                "search": await _plan(
                    connection, ListingQuery(text="walnut kettle", sort=Sort.RELEVANCE)
                ),
                "page 1000": await _plan(
                    connection, ListingQuery(sort=Sort.NEWEST, after=(deep[0], deep[1]))
                ),
                "by price": await _plan(
                    connection, ListingQuery(sort=Sort.PRICE, after=(5000, "0"))
                ),
                "newest": await _plan(
                    connection, ListingQuery(sort=Sort.NEWEST, after=(datetime.now(UTC), "z"))
                ),
            }
    finally:
        await engine.dispose()
    assert seeded_in < 180
    assert "ix_catalog_products_fts" in plans["search"]
    assert "ix_catalog_products_listing_newest" in plans["page 1000"]
    assert "ix_catalog_products_listing_price" in plans["by price"]
    assert "ix_catalog_products_listing_newest" in plans["newest"]
    for name, plan in plans.items():
        assert '"Seq Scan"' not in plan, f"{name} scans the whole table: {plan}"
