"""Async SQLAlchemy engines, the shared metadata and the unit of work.

Every context declares its tables on `metadata` with its own name prefix
(`identity_`, `catalog_`, ...); no context reads another's tables.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from sqlalchemy import DateTime, MetaData, Table, event, insert, text
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.dml import Insert

from ironcart.platform.settings import DatabaseBackend, database_backend, normalise_database_url

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# UTC timestamps with microseconds on every backend (MySQL's DATETIME defaults to whole seconds).
Timestamp = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """Build the async engine for a user-facing URL (`sqlite:///`, `postgresql://`, `mysql://`)."""
    driver_url = normalise_database_url(url)
    backend = database_backend(url)
    if backend is DatabaseBackend.SQLITE:
        engine = create_async_engine(
            driver_url, poolclass=NullPool if ":memory:" not in driver_url else None
        )
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
        return engine
    options: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": pool_size,
        # No pre-ping: it costs a round trip per request. A connection that died (server
        # restart) fails its request once (503) and is discarded by the pool.
        "pool_pre_ping": False,
        "pool_recycle": 1800,
        "pool_timeout": 5,
    }
    if backend is DatabaseBackend.POSTGRESQL:
        options["connect_args"] = {"timeout": 5, "command_timeout": 30}
    else:
        options["connect_args"] = {"connect_timeout": 5}
    return create_async_engine(driver_url, **options)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


# Deadlock and serialization failure (PostgreSQL); deadlock, lock wait timeout and
# "record has changed since last read" (MariaDB).
_TRANSIENT_SQLSTATES = {"40P01", "40001"}
_TRANSIENT_MYSQL_ERRORS = {1213, 1205, 1020}


def is_transient(error: DBAPIError) -> bool:
    """A deadlock, serialization failure or busy timeout: the transaction may be run again."""
    original = error.orig
    if isinstance(error, OperationalError) and "database is locked" in str(original):
        return True  # SQLite: the busy timeout ran out while other writers held the lock
    sqlstate = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    if sqlstate in _TRANSIENT_SQLSTATES:
        return True
    args: tuple[object, ...] = getattr(original, "args", ())
    return bool(args) and args[0] in _TRANSIENT_MYSQL_ERRORS


async def ping(engine: AsyncEngine) -> None:
    """Run `SELECT 1`; raises if the database cannot be reached."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


class UnitOfWork:
    """One use case's transaction: `async with uow: ...; await uow.commit()`.

    Leaving the block without `commit()` rolls back. Repositories receive the
    session and never commit themselves.
    """

    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._session_factory = session_factory
        self._session: AsyncSession | None = None
        self._reading = False

    def reading(self) -> Self:
        """Only reads: on PostgreSQL each statement runs on its own (autocommit), which spares
        the BEGIN and ROLLBACK round trips of a transaction. Use it where a use case reads
        one consistent row set per statement and never writes; `commit()` is then refused."""
        self._reading = True
        return self

    @property
    def session(self) -> AsyncSession:
        if self._session is None:
            raise RuntimeError("the unit of work is not open: use `async with uow:`")
        return self._session

    async def __aenter__(self) -> Self:
        factory = _autocommit_sessions(self._session_factory) if self._reading else None
        self._session = (factory or self._session_factory)()
        self._open_repositories(self._session)
        return self

    def _open_repositories(self, session: AsyncSession) -> None:
        """Subclasses attach their repositories to the new session here."""

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # close() ends whatever transaction is still open with a rollback (pool reset on
        # return): one step instead of an ORM-level rollback followed by a close.
        session = self.session
        self._session = None
        await session.close()

    async def commit(self) -> None:
        if self._reading:
            raise RuntimeError("a reading unit of work cannot commit")
        await self.session.commit()

    async def rollback(self) -> None:
        await self.session.rollback()


def insert_if_absent(session: AsyncSession, table: Table) -> Insert:
    """`INSERT` that does nothing when the primary key exists (row count tells which)."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect in {"mysql", "mariadb"}:
        return mysql.insert(table).prefix_with("IGNORE")
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return insert(table)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


_AUTOCOMMIT: weakref.WeakKeyDictionary[
    async_sessionmaker[AsyncSession], async_sessionmaker[AsyncSession] | None
] = weakref.WeakKeyDictionary()


def reading_sessions(
    sessions: async_sessionmaker[AsyncSession],
) -> async_sessionmaker[AsyncSession]:
    """Sessions for statements that only read (see `UnitOfWork.reading`)."""
    return _autocommit_sessions(sessions) or sessions


def _autocommit_sessions(
    sessions: async_sessionmaker[AsyncSession],
) -> async_sessionmaker[AsyncSession] | None:
    """The same sessions in autocommit mode (PostgreSQL: asyncpg then sends no BEGIN and no
    ROLLBACK, a local flag on the pooled connection); None where that buys nothing (MySQL
    switches autocommit with a statement each way; SQLite's transactions are local)."""
    try:
        return _AUTOCOMMIT[sessions]
    except KeyError:
        pass
    engine = sessions.kw.get("bind")
    found: async_sessionmaker[AsyncSession] | None = None
    if isinstance(engine, AsyncEngine) and engine.dialect.name == "postgresql":
        found = async_sessionmaker(
            engine.execution_options(isolation_level="AUTOCOMMIT"),
            expire_on_commit=False,
            autoflush=False,
        )
    _AUTOCOMMIT[sessions] = found
    return found


UnitOfWorkFactory = Callable[[], UnitOfWork]

__all__ = [
    "Engine",
    "Timestamp",
    "UnitOfWork",
    "UnitOfWorkFactory",
    "create_engine",
    "insert_if_absent",
    "is_transient",
    "metadata",
    "ping",
    "reading_sessions",
    "session_factory",
]
