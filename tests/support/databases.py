"""Fresh, uniquely named databases on the real servers, dropped after each test.

Server addresses default to this machine's services and can be overridden:
IRONCART_TEST_POSTGRES_URL, IRONCART_TEST_MYSQL_URL, IRONCART_TEST_REDIS_URL,
IRONCART_TEST_NATS_URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import asyncmy
import asyncmy.errors
import asyncpg

POSTGRES_URL = os.environ.get(
    "IRONCART_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
MYSQL_URL = os.environ.get("IRONCART_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("IRONCART_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("IRONCART_TEST_NATS_URL", "nats://127.0.0.1:4222")


class ServerUnavailable(Exception):
    """A server the test needs could not be reached."""


MIGRATIONS = Path(__file__).resolve().parents[2] / "src" / "ironcart" / "migrations"


def schema_digest() -> str:
    """Names the migrated schema: a digest of every migration file (a change makes a new one)."""
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS.rglob("*.py")):
        digest.update(path.relative_to(MIGRATIONS).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path=f"/{name}").geturl()


@asynccontextmanager
async def fresh_postgres(*, migrated: bool = False) -> AsyncIterator[str]:
    """An empty database, or (`migrated`) a copy of the migrated template: `CREATE DATABASE
    ... TEMPLATE` copies files, a fraction of what running every migration costs per test."""
    name = f"ironcart_test_{uuid.uuid4().hex[:16]}"
    try:
        admin = await asyncpg.connect(POSTGRES_URL, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        raise ServerUnavailable(f"PostgreSQL at {POSTGRES_URL}: {error}") from error
    try:
        if migrated:
            template = await _postgres_template(admin)
            await _create_from_template(admin, name, template)
        else:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(POSTGRES_URL, name)
    finally:
        admin = await asyncpg.connect(POSTGRES_URL, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _postgres_template(admin: asyncpg.Connection) -> str:
    """The migrated template of this schema, built once (by whichever session gets there
    first: an advisory lock serialises the builders, across processes)."""
    template = f"ironcart_tmpl_{schema_digest()}"
    lock = int.from_bytes(hashlib.sha256(template.encode()).digest()[:8], "big", signed=True)
    await admin.execute("SELECT pg_advisory_lock($1)", lock)
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", template):
            building = f"{template}_building"
            await admin.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{building}"')
            from ironcart.platform.migrations import upgrade_async

            await upgrade_async(_with_database(POSTGRES_URL, building))
            await admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{template}"')
    finally:
        await admin.execute("SELECT pg_advisory_unlock($1)", lock)
    return template


async def _create_from_template(admin: asyncpg.Connection, name: str, template: str) -> None:
    for attempt in range(50):
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            return
        except asyncpg.ObjectInUseError:  # another session is copying it this very moment
            await asyncio.sleep(0.05 * (attempt + 1))
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')


async def _mysql_admin() -> asyncmy.Connection:
    parts = urlsplit(MYSQL_URL)
    return await asyncmy.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        connect_timeout=5,
    )


@asynccontextmanager
async def fresh_mysql(*, migrated: bool = False) -> AsyncIterator[str]:
    """An empty database, or (`migrated`) one with the migrated template's tables: MariaDB has
    no database templates, so their `SHOW CREATE TABLE` statements are replayed (one
    statement per table instead of every migration step)."""
    name = f"ironcart_test_{uuid.uuid4().hex[:16]}"
    try:
        admin = await _mysql_admin()
    except (OSError, asyncmy.errors.Error) as error:
        raise ServerUnavailable(f"MariaDB/MySQL at {MYSQL_URL}: {error}") from error
    try:
        schema = await _mysql_template(admin) if migrated else None
        async with admin.cursor() as cursor:
            await cursor.execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
            if schema is not None:
                statements, version = schema
                await cursor.execute(f"USE `{name}`")
                await cursor.execute("SET SESSION foreign_key_checks = 0")
                for statement in statements:
                    await cursor.execute(statement)
                await cursor.execute("INSERT INTO alembic_version VALUES (%s)", (version,))
        await admin.commit()
    finally:
        await admin.ensure_closed()
    try:
        yield _with_database(MYSQL_URL, name)
    finally:
        admin = await _mysql_admin()
        try:
            async with admin.cursor() as cursor:
                await cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            await admin.ensure_closed()


_MYSQL_TEMPLATES: dict[str, tuple[list[str], str]] = {}


async def _mysql_template(admin: asyncmy.Connection) -> tuple[list[str], str]:
    """The migrated template's CREATE TABLE statements and Alembic version, read once per
    process; the template database is migrated once per schema (a named lock serialises the
    sessions that would build it)."""
    digest = schema_digest()
    if digest in _MYSQL_TEMPLATES:
        return _MYSQL_TEMPLATES[digest]
    template = f"ironcart_tmpl_{digest}"
    async with admin.cursor() as cursor:
        await cursor.execute("SELECT GET_LOCK(%s, 300)", (template,))
        try:
            await cursor.execute("SHOW DATABASES LIKE %s", (template,))
            if await cursor.fetchone() is None:
                building = f"{template}_building"
                await cursor.execute(f"DROP DATABASE IF EXISTS `{building}`")
                await cursor.execute(
                    f"CREATE DATABASE `{building}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
                from ironcart.platform.migrations import upgrade_async

                await upgrade_async(_with_database(MYSQL_URL, building))
                # MariaDB cannot rename a database: the finished one gets the final name by
                # moving its tables.
                await cursor.execute(
                    f"CREATE DATABASE `{template}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
                await cursor.execute(f"SHOW FULL TABLES FROM `{building}`")
                tables = [row[0] for row in await cursor.fetchall()]
                if tables:
                    await cursor.execute(
                        "RENAME TABLE "
                        + ", ".join(f"`{building}`.`{t}` TO `{template}`.`{t}`" for t in tables)
                    )
                await cursor.execute(f"DROP DATABASE `{building}`")
            await cursor.execute(
                f"SHOW FULL TABLES FROM `{template}` WHERE Table_type = 'BASE TABLE'"
            )
            tables = sorted(row[0] for row in await cursor.fetchall())
            statements = []
            for table in tables:
                await cursor.execute(f"SHOW CREATE TABLE `{template}`.`{table}`")
                row = await cursor.fetchone()
                statements.append(row[1])
            await cursor.execute(f"SELECT version_num FROM `{template}`.alembic_version")
            version_row = await cursor.fetchone()
        finally:
            await cursor.execute("SELECT RELEASE_LOCK(%s)", (template,))
    await admin.commit()
    _MYSQL_TEMPLATES[digest] = (statements, version_row[0])
    return _MYSQL_TEMPLATES[digest]


@asynccontextmanager
async def fresh_sqlite(directory: Path, *, migrated: bool = False) -> AsyncIterator[str]:
    """A new SQLite file, or (`migrated`) a copy of the migrated template file."""
    path = directory / f"ironcart-{uuid.uuid4().hex[:8]}.db"
    if migrated:
        shutil.copyfile(await _sqlite_template(), path)
    yield f"sqlite:///{path}"


_SQLITE_TEMPLATES: dict[str, Path] = {}


async def _sqlite_template() -> Path:
    digest = schema_digest()
    if digest not in _SQLITE_TEMPLATES:
        from ironcart.platform.migrations import upgrade_async

        path = Path(tempfile.mkdtemp(prefix="ironcart-tmpl-")) / "template.db"
        await upgrade_async(f"sqlite:///{path}")
        _SQLITE_TEMPLATES[digest] = path
    return _SQLITE_TEMPLATES[digest]


async def check_redis() -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    except Exception as error:
        raise ServerUnavailable(f"Redis at {REDIS_URL}: {error}") from error
    finally:
        await client.aclose()


async def check_nats() -> None:
    """NATS answers and has JetStream enabled."""
    import nats

    try:
        # nats-py retries its server pool max_reconnect_attempts times even on the first
        # connect: one quick retry, so an absent server is reported in a second or two.
        client = await nats.connect(
            NATS_URL,
            connect_timeout=2,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
        )
    except Exception as error:
        raise ServerUnavailable(f"NATS at {NATS_URL}: {error!r}") from error
    try:
        await client.jetstream(timeout=2).account_info()
    except Exception as error:
        raise ServerUnavailable(f"NATS JetStream at {NATS_URL}: {error!r}") from error
    finally:
        await client.close()
