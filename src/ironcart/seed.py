"""Demo data: one account per role and a generated catalog, created only where missing."""

from __future__ import annotations

import random
import time

from ironcart.bootstrap import Container, bootstrap
from ironcart.catalog.repository import CatalogUnitOfWork
from ironcart.catalog.seed import seed_catalog
from ironcart.identity.domain import EmailAlreadyRegistered
from ironcart.platform.database import session_factory
from ironcart.platform.settings import Settings
from ironcart.shipping.seed import seed_zones

DEMO_PASSWORD = "ironcart-demo-password"  # noqa: S105 - development seed data, refused in production
DEMO_WAREHOUSES = (("main", "Main warehouse", 1), ("overflow", "Overflow warehouse", 2))
DEMO_ACCOUNTS = (
    ("admin@ironcart.example", "Ada Admin", ("admin",)),
    ("staff@ironcart.example", "Sam Staff", ("staff",)),
    ("customer@ironcart.example", "Casey Customer", ("customer",)),
)


async def seed_demo(settings: Settings, *, products: int, accounts: bool = True) -> list[str]:
    container = bootstrap(settings)
    lines: list[str] = []
    try:
        await container.identity.ensure_signing_key()
        if accounts:
            lines += await _seed_accounts(container)
        lines += await _seed_products(container, products)
        lines += await seed_zones(container.shipping, currency=settings.catalog.currency)
    finally:
        await container.aclose()
    return lines


async def _seed_accounts(container: Container) -> list[str]:
    lines = []
    for email, name, roles in DEMO_ACCOUNTS:
        try:
            await container.identity.create_user(
                email=email, password=DEMO_PASSWORD, name=name, roles=roles
            )
            lines.append(f"created demo account {email} ({', '.join(roles)})")
        except EmailAlreadyRegistered:
            lines.append(f"demo account {email} already exists")
    lines.append(f"demo password for all three: {DEMO_PASSWORD}")
    return lines


async def _seed_products(container: Container, wanted: int) -> list[str]:
    sessions = session_factory(container.engine)
    existing = await container.catalog.count_products()
    missing = max(0, wanted - existing)
    if not missing:
        return [f"catalog already has {existing} products"]
    started = time.perf_counter()
    skus = await seed_catalog(
        lambda: CatalogUnitOfWork(sessions),
        count=missing,
        currency=container.settings.catalog.currency,
    )
    await _seed_stock(container, skus)
    elapsed = time.perf_counter() - started
    return [f"added {missing} products ({len(skus)} SKUs, with stock) in {elapsed:.1f} s"]


async def _seed_stock(container: Container, skus: list[str]) -> None:
    """Put stock for the new SKUs in two warehouses, then refresh the catalog's availability."""
    rng = random.Random(len(skus))  # noqa: S311 - demo data
    warehouses = {w.code for w in await container.inventory.list_warehouses()}
    for code, name, priority in DEMO_WAREHOUSES:
        if code not in warehouses:
            await container.inventory.create_warehouse(code=code, name=name, priority=priority)
    for start in range(0, len(skus), 1000):
        batch = skus[start : start + 1000]
        main = {sku: rng.randint(1, 200) for sku in batch if rng.random() > 0.1}
        overflow = {sku: rng.randint(1, 50) for sku in main if rng.random() > 0.7}
        if main:
            await container.inventory.receive_new(warehouse="main", quantities=main)
        if overflow:
            await container.inventory.receive_new(warehouse="overflow", quantities=overflow)
    await container.catalog.sync_availability(
        availability=lambda batch: container.inventory.availability(skus=batch)
    )
