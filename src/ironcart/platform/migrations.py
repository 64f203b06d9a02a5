"""Running Alembic from code: `ironcart migrate` and the tests use the same path."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

import ironcart

MIGRATIONS_DIR = Path(ironcart.__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database to `revision`. Runs outside an event loop: Alembic's env starts one."""
    _ensure_sqlite_directory(database_url)
    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, database_url, revision)


def _ensure_sqlite_directory(database_url: str) -> None:
    scheme, _, rest = database_url.partition("://")
    if scheme.startswith("sqlite") and rest.startswith("/") and ":memory:" not in rest:
        Path(rest[1:]).parent.mkdir(parents=True, exist_ok=True)
