"""Fresh, uniquely named databases on the real servers, dropped after each test.

Server addresses default to this machine's services and can be overridden:
IRONCART_TEST_POSTGRES_URL, IRONCART_TEST_MYSQL_URL, IRONCART_TEST_REDIS_URL,
IRONCART_TEST_NATS_URL.
"""

from __future__ import annotations

import os
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


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path=f"/{name}").geturl()


@asynccontextmanager
async def fresh_postgres() -> AsyncIterator[str]:
    name = f"ironcart_test_{uuid.uuid4().hex[:16]}"
    try:
        admin = await asyncpg.connect(POSTGRES_URL, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        raise ServerUnavailable(f"PostgreSQL at {POSTGRES_URL}: {error}") from error
    try:
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
async def fresh_mysql() -> AsyncIterator[str]:
    name = f"ironcart_test_{uuid.uuid4().hex[:16]}"
    try:
        admin = await _mysql_admin()
    except (OSError, asyncmy.errors.Error) as error:
        raise ServerUnavailable(f"MariaDB/MySQL at {MYSQL_URL}: {error}") from error
    try:
        async with admin.cursor() as cursor:
            await cursor.execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
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


@asynccontextmanager
async def fresh_sqlite(directory: Path) -> AsyncIterator[str]:
    yield f"sqlite:///{directory / f'ironcart-{uuid.uuid4().hex[:8]}.db'}"


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
