"""Shared fixtures: real databases per backend, migrated; an app and an HTTP client.

With CI=true a server that cannot be reached fails the test; without it the test is
skipped and one summary line at the end says which servers were missing.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ironcart.platform.observability import configure_logging
from tests.support.databases import (
    ServerUnavailable,
    check_nats,
    check_redis,
    fresh_mysql,
    fresh_postgres,
    fresh_sqlite,
)
from tests.support.http_wiring import WIRING, WIRINGS
from tests.support.pg_instance import PgInstance, running_pg_instance

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
_missing_servers: set[str] = set()


def unavailable(error: ServerUnavailable) -> None:
    """Fail in CI, skip (and remember for the summary) elsewhere."""
    if IN_CI:
        pytest.fail(f"required server unreachable in CI: {error}", pytrace=False)
    _missing_servers.add(str(error).split(":")[0])
    pytest.skip(f"server unreachable: {error}")


def pytest_configure(config: Any) -> None:
    # As the CLI does: plain tracebacks. structlog's default console renderer draws rich
    # tracebacks with every local variable, which takes seconds on the event loop when a
    # background job logs a database error, and stalls everything else in the process.
    configure_logging(level="info", json=False)


def pytest_runtest_logreport(report: Any) -> None:
    # With pytest-xdist the skips happen in the workers: the controller sees their reports.
    if report.skipped and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2])
        if "server unreachable: " in message:
            _missing_servers.add(message.split("server unreachable: ", 1)[1].split(":")[0])


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(f"ironcart test wiring: {WIRINGS[WIRING]} [IRONCART_TEST_WIRING]")
    if _missing_servers:
        terminalreporter.write_line(
            "SKIPPED integration tests: unreachable servers: "
            + ", ".join(sorted(_missing_servers))
            + " (set CI=true to make this a failure)",
            yellow=True,
        )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


BACKENDS = ["sqlite", "postgresql", "mysql"]


async def _fresh_database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated database, copied from a template migrated once per set of migrations
    (PostgreSQL: CREATE DATABASE ... TEMPLATE; MariaDB: its CREATE TABLE statements; SQLite:
    the file). tests/integration/test_migrations.py runs the migrations themselves."""
    if backend == "postgresql":
        manager = fresh_postgres(migrated=True)
    elif backend == "mysql":
        manager = fresh_mysql(migrated=True)
    else:
        manager = fresh_sqlite(tmp_path, migrated=True)
    try:
        url = await manager.__aenter__()
    except ServerUnavailable as error:
        unavailable(error)
    try:
        yield url
    finally:
        await manager.__aexit__(None, None, None)


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated, empty database on each backend in turn."""
    async for url in _fresh_database(request.param, tmp_path):
        yield url


@pytest.fixture(params=["postgresql", "mysql"])
async def server_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated, empty database on each database server (no SQLite): concurrency tests."""
    async for url in _fresh_database(request.param, tmp_path):
        yield url


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> AsyncIterator[str]:
    async for url in _fresh_database("sqlite", tmp_path):
        yield url


@pytest.fixture
async def postgres_url(tmp_path: Path) -> AsyncIterator[str]:
    async for url in _fresh_database("postgresql", tmp_path):
        yield url


@pytest.fixture(scope="session")
def pg_test_instance() -> Iterator[PgInstance | ServerUnavailable]:
    """One PostgreSQL test instance for the session, with prepared transactions enabled (the
    XA checkout tests); or why there is none (each test then fails in CI, or skips)."""
    try:
        with running_pg_instance(max_prepared_transactions=64) as instance:
            yield instance
    except ServerUnavailable as error:
        yield error


@pytest.fixture
async def redis_url() -> str:
    from tests.support.databases import REDIS_URL

    try:
        await check_redis()
    except ServerUnavailable as error:
        unavailable(error)
    return REDIS_URL


@pytest.fixture
async def nats_url() -> str:
    """A NATS server with JetStream (IRONCART_TEST_NATS_URL)."""
    from tests.support.databases import NATS_URL

    try:
        await check_nats()
    except ServerUnavailable as error:
        unavailable(error)
    return NATS_URL
