"""The Alembic history builds exactly the tables the code declares, on every backend."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from ironcart.platform.database import create_engine
from ironcart.platform.migrations import alembic_config, upgrade_async
from ironcart.schema import metadata

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


# Full-text search objects are per-dialect DDL in migration 0003, not declared tables.
FULL_TEXT_SEARCH = "catalog_products_fts"


def _declared(name: str | None, type_: str, _parent: object) -> bool:
    if type_ == "column" and name == "search_vector":  # PostgreSQL's generated tsvector
        return False
    return not (name or "").startswith(("ix_" + FULL_TEXT_SEARCH, FULL_TEXT_SEARCH))


def _differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_name": _declared}
    )
    return list(compare_metadata(context, metadata))


def _tables(connection: Connection) -> set[str]:
    names = inspect(connection).get_table_names()
    return {name for name in names if name != "alembic_version" and _declared(name, "table", None)}


async def test_migrations_match_the_declared_tables(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
            assert await connection.run_sync(_tables) == set(metadata.tables)
    finally:
        await engine.dispose()


async def test_downgrade_to_base_and_upgrade_again(database_url: str) -> None:
    import asyncio

    await asyncio.to_thread(command.downgrade, alembic_config(database_url), "base")
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(_tables) == set()
        await upgrade_async(database_url)
        async with engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()
