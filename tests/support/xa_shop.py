"""XA checkout tests: orders and inventory in two databases, and what to check in each.

`database_pair()` makes two fresh, migrated databases on one server: on the session's
PostgreSQL test instance (`max_prepared_transactions > 0`, see `pg_instance.py`) or on
the machine's MariaDB; both are dropped when the block ends. The queries below read the
databases directly (not through the app), so a test sees what each database holds.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
import httpx
from sqlalchemy import text

from ironcart.platform.database import create_engine
from ironcart.platform.migrations import upgrade_async
from tests.conftest import unavailable
from tests.support.databases import ServerUnavailable, fresh_mysql
from tests.support.pg_instance import PgInstance

BACKENDS = ["postgresql", "mariadb"]


@asynccontextmanager
async def _instance_database(instance: PgInstance) -> AsyncIterator[str]:
    name = f"xa_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(instance.url(), timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield instance.url(name)
    finally:
        admin = await asyncpg.connect(instance.url(), timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def fresh_database(
    backend: str, instance: PgInstance | ServerUnavailable
) -> AsyncIterator[str]:
    """One fresh, empty database on `backend`'s server, dropped at the end."""
    if backend == "postgresql":
        if isinstance(instance, ServerUnavailable):
            unavailable(instance)
            raise AssertionError("unreachable")  # unavailable() fails or skips
        async with _instance_database(instance) as url:
            yield url
        return
    try:
        database = fresh_mysql()
        url = await database.__aenter__()
    except ServerUnavailable as error:
        unavailable(error)
        raise AssertionError("unreachable") from error
    try:
        yield url
    finally:
        await database.__aexit__(None, None, None)


@asynccontextmanager
async def database_pair(
    backend: str, instance: PgInstance | ServerUnavailable, *, migrated: bool = True
) -> AsyncIterator[tuple[str, str]]:
    """(orders URL, inventory URL): two databases on `backend`'s server, migrated unless
    the test does it (`ironcart migrate`)."""
    async with AsyncExitStack() as stack:
        orders = await stack.enter_async_context(fresh_database(backend, instance))
        inventory = await stack.enter_async_context(fresh_database(backend, instance))
        if migrated:
            await upgrade_async(orders)
            await upgrade_async(inventory)
        yield orders, inventory


async def prepared(url: str, prefix: str) -> list[str]:
    """Prepared transactions whose gid starts with `prefix`, on `url`'s whole server
    (`pg_prepared_xacts` / `XA RECOVER`)."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                rows = await connection.execute(
                    text("SELECT gid FROM pg_prepared_xacts WHERE starts_with(gid, :prefix)"),
                    {"prefix": prefix},
                )
                return [str(gid) for (gid,) in rows]
            found = []
            for row in (await connection.exec_driver_sql("XA RECOVER")).all():
                data = row[3] if isinstance(row[3], bytes) else str(row[3]).encode()
                if data.decode(errors="replace").startswith(prefix):
                    found.append(data.decode(errors="replace"))
            return found
    finally:
        await engine.dispose()


async def scalar(url: str, sql: str, **params: Any) -> Any:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as connection:
            return await connection.scalar(text(sql), params)
    finally:
        await engine.dispose()


async def rows(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as connection:
            return [tuple(row) for row in await connection.execute(text(sql), params)]
    finally:
        await engine.dispose()


async def on_hand(inventory_url: str, sku: str) -> tuple[int, int]:
    """(on_hand, reserved) of `sku`, summed over warehouses, in inventory's database."""
    found = await rows(
        inventory_url,
        "SELECT COALESCE(SUM(on_hand), 0), COALESCE(SUM(reserved), 0)"
        " FROM inventory_stock_levels WHERE sku = :sku",
        sku=sku,
    )
    return int(found[0][0]), int(found[0][1])


async def sold_units(inventory_url: str, gid: str) -> int:
    """Units the XA checkout `gid` sold, by inventory's ledger (its sale movements)."""
    units = await scalar(
        inventory_url,
        "SELECT COALESCE(SUM(-on_hand_delta), 0) FROM inventory_movements"
        " WHERE reference = :gid AND kind = 'sale'",
        gid=gid,
    )
    return int(units)


async def xa_log(orders_url: str, prefix: str) -> dict[str, tuple[str, bool, str | None]]:
    """The XA log rows of `prefix`: gid -> (state, settled, reference)."""
    found = await rows(
        orders_url,
        "SELECT gid, state, settled, reference FROM txn_xa_log WHERE gid LIKE :pattern",
        pattern=f"{prefix}-%",
    )
    return {gid: (state, bool(settled), reference) for gid, state, settled, reference in found}


async def psp_view(psp: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The PSP's ledger, and each payment's status by the order id of its operations."""
    async with httpx.AsyncClient(base_url=psp.url) as client:
        headers = {"Authorization": f"Bearer {psp.api_key}"}
        ledger = (await client.get("/_sandbox/ledger", headers=headers)).json()["data"]
        payments = (await client.get("/_sandbox/payments", headers=headers)).json()["data"]
    status = {payment["id"]: payment["status"] for payment in payments}
    by_order = {
        entry["idempotency_key"].split(":")[0]: status[entry["payment_id"]]
        for entry in ledger
        if entry["operation"] == "authorize"
    }
    return ledger, by_order
