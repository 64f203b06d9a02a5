"""XA resource managers: one database's side of a two-phase commit, in plain SQL.

SQLAlchemy's two-phase API (`Connection.begin_twophase`) is not exposed by its asyncio
layer (sqlalchemy/sqlalchemy#12803), and neither asyncpg nor asyncmy has one, so each
resource drives its branch with the database's own statements on an `AsyncConnection`
switched to AUTOCOMMIT: the driver then never opens or ends a transaction by itself, and
the transaction is exactly what these statements say it is.

PostgreSQL: `BEGIN` ... `PREPARE TRANSACTION 'gid'` ... `COMMIT PREPARED` / `ROLLBACK
PREPARED`. A prepared transaction belongs to the server, not the session, from the
moment it is prepared; any session on the same database may finish it. Prepared gids are
unique in the whole cluster, so a branch's gid is `<gtrid>.<resource name>`: two
resources may share a server (or a database). Needs `max_prepared_transactions > 0`.

MySQL/MariaDB: `XA START 'gtrid', 'resource'` ... `XA END`, `XA PREPARE` ... `XA COMMIT`
/ `XA ROLLBACK`. XA RECOVER lists the whole server's prepared XIDs, so the branch
qualifier names the resource and the gtrid prefix names the deployment. Unlike
PostgreSQL, a prepared XA transaction stays attached to the session that prepared it:
another session gets XAER_NOTA ("unknown XID") for it until that session ends (then it is
detached and survives, MariaDB >= 10.5), although XA RECOVER lists it. So the coordinator
finishes a branch on the connection that prepared it, and a connection that cannot is
invalidated (closed), never returned to the pool holding a branch.

Identifiers cannot be bound as parameters in these statements; they are validated
(`GTRID_PATTERN`, `RESOURCE_NAME_PATTERN`) before they are written into SQL.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Literal, Protocol

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

RESOURCE_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
GTRID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
IsolationLevel = Literal["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]

# "No such prepared transaction": PostgreSQL's undefined_object, MySQL's XAER_NOTA.
_UNKNOWN_PG_SQLSTATE = "42704"
_UNKNOWN_MYSQL_ERROR = 1397


class XaResource(Protocol):
    """One database taking part in XA transactions (see `PostgresResource`, `MysqlResource`)."""

    @property
    def name(self) -> str: ...

    async def start(self, gtrid: str) -> AsyncConnection:
        """A connection with the branch of `gtrid` begun on it: do the branch's work there."""
        ...

    async def prepare(self, connection: AsyncConnection, gtrid: str) -> None:
        """Phase one: make the branch's work durable without committing it."""
        ...

    async def rollback_active(self, connection: AsyncConnection, gtrid: str) -> None:
        """Undo a branch that was started but not prepared."""
        ...

    async def commit(self, gtrid: str, connection: AsyncConnection | None = None) -> bool:
        """Commit the prepared branch (on `connection` if it prepared it); False: not found."""
        ...

    async def rollback(self, gtrid: str, connection: AsyncConnection | None = None) -> bool:
        """Roll back the prepared branch; False: not found (never prepared, or finished)."""
        ...

    async def prepared(self, prefix: str) -> set[str]:
        """The gtrids starting with `prefix` whose branch of this resource is prepared."""
        ...


def is_unknown_xid(error: DBAPIError) -> bool:
    """The database knows no prepared transaction by that id (or, on MariaDB, not here)."""
    original = error.orig
    sqlstate = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    if sqlstate == _UNKNOWN_PG_SQLSTATE:
        return True
    args: tuple[object, ...] = getattr(original, "args", ())
    return bool(args) and args[0] == _UNKNOWN_MYSQL_ERROR


def check_gtrid(gtrid: str) -> str:
    if not GTRID_PATTERN.match(gtrid):
        raise ValueError(f"not a valid XA transaction id: {gtrid!r}")
    return gtrid


class _SqlResource:
    dialects: frozenset[str] = frozenset()

    def __init__(
        self, name: str, engine: AsyncEngine, *, isolation_level: IsolationLevel = "READ COMMITTED"
    ) -> None:
        if not RESOURCE_NAME_PATTERN.match(name):
            raise ValueError(f"XA resource names are 1-32 of a-z, 0-9, '_': {name!r}")
        if engine.dialect.name not in self.dialects:
            raise ValueError(f"{type(self).__name__} cannot use a {engine.dialect.name} engine")
        self._name = name
        self.engine = engine
        self._isolation = isolation_level

    @property
    def name(self) -> str:
        return self._name

    async def _connect(self) -> AsyncConnection:
        connection = await self.engine.connect()
        try:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
        except BaseException:
            await connection.close()
            raise
        return connection

    async def _run(self, connection: AsyncConnection, statement: str) -> None:
        await connection.exec_driver_sql(statement)

    async def _finish(self, statement: str, connection: AsyncConnection | None) -> bool:
        """Run a COMMIT/ROLLBACK of a prepared branch; False when the database knows none."""
        own = connection is None
        target = await self._connect() if connection is None else connection
        try:
            await self._run(target, statement)
        except DBAPIError as error:
            if is_unknown_xid(error):
                return False
            raise
        finally:
            if own:
                await target.close()
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r})"


class PostgresResource(_SqlResource):
    """A PostgreSQL database as an XA resource (`PREPARE TRANSACTION`)."""

    dialects = frozenset({"postgresql"})

    def _gid(self, gtrid: str) -> str:
        return f"{check_gtrid(gtrid)}.{self._name}"

    async def start(self, gtrid: str) -> AsyncConnection:
        check_gtrid(gtrid)
        connection = await self._connect()
        try:
            await self._run(connection, f"BEGIN ISOLATION LEVEL {self._isolation}")
        except BaseException:
            await connection.invalidate()
            await connection.close()
            raise
        return connection

    async def prepare(self, connection: AsyncConnection, gtrid: str) -> None:
        # A failed PREPARE rolls the transaction back (e.g. it touched temporary tables).
        await self._run(connection, f"PREPARE TRANSACTION '{self._gid(gtrid)}'")

    async def rollback_active(self, connection: AsyncConnection, gtrid: str) -> None:
        await self._run(connection, "ROLLBACK")

    async def commit(self, gtrid: str, connection: AsyncConnection | None = None) -> bool:
        return await self._finish(f"COMMIT PREPARED '{self._gid(gtrid)}'", connection)

    async def rollback(self, gtrid: str, connection: AsyncConnection | None = None) -> bool:
        return await self._finish(f"ROLLBACK PREPARED '{self._gid(gtrid)}'", connection)

    async def prepared(self, prefix: str) -> set[str]:
        suffix = f".{self._name}"
        connection = await self._connect()
        try:
            rows = await connection.execute(
                text(
                    "SELECT gid FROM pg_prepared_xacts"
                    " WHERE database = current_database() AND starts_with(gid, :prefix)"
                ),
                {"prefix": prefix},
            )
            gids = [str(gid) for (gid,) in rows]
        finally:
            await connection.close()
        return {gid.removesuffix(suffix) for gid in gids if gid.endswith(suffix)}


class MysqlResource(_SqlResource):
    """A MySQL/MariaDB database as an XA resource (`XA START` ... `XA PREPARE`)."""

    dialects = frozenset({"mysql", "mariadb"})

    def _xid(self, gtrid: str) -> str:
        return f"'{check_gtrid(gtrid)}', '{self._name}'"

    async def start(self, gtrid: str) -> AsyncConnection:
        xid = self._xid(gtrid)
        connection = await self._connect()
        try:
            # One-shot: applies to the next transaction only, so the pooled session keeps
            # its own level.
            await self._run(connection, f"SET TRANSACTION ISOLATION LEVEL {self._isolation}")
            await self._run(connection, f"XA START {xid}")
        except BaseException:
            await connection.invalidate()
            await connection.close()
            raise
        return connection

    async def prepare(self, connection: AsyncConnection, gtrid: str) -> None:
        xid = self._xid(gtrid)
        await self._run(connection, f"XA END {xid}")
        await self._run(connection, f"XA PREPARE {xid}")

    async def rollback_active(self, connection: AsyncConnection, gtrid: str) -> None:
        xid = self._xid(gtrid)
        # Ended already if it failed in XA PREPARE: then it is rolled back from IDLE.
        with contextlib.suppress(DBAPIError):
            await self._run(connection, f"XA END {xid}")
        await self._run(connection, f"XA ROLLBACK {xid}")

    async def commit(self, gtrid: str, connection: AsyncConnection | None = None) -> bool:
        return await self._finish(f"XA COMMIT {self._xid(gtrid)}", connection)

    async def rollback(self, gtrid: str, connection: AsyncConnection | None = None) -> bool:
        return await self._finish(f"XA ROLLBACK {self._xid(gtrid)}", connection)

    async def prepared(self, prefix: str) -> set[str]:
        connection = await self._connect()
        try:
            rows = (await connection.exec_driver_sql("XA RECOVER")).all()
        finally:
            await connection.close()
        found: set[str] = set()
        for row in rows:
            format_id, gtrid_length, bqual_length, data = tuple(row)
            gtrid, bqual = _split_xid(data, int(gtrid_length), int(bqual_length))
            if int(format_id) == 1 and bqual == self._name and gtrid.startswith(prefix):
                found.add(gtrid)
        return found


def _split_xid(data: Any, gtrid_length: int, bqual_length: int) -> tuple[str, str]:
    raw = data if isinstance(data, bytes) else str(data).encode()
    gtrid = raw[:gtrid_length].decode(errors="replace")
    bqual = raw[gtrid_length : gtrid_length + bqual_length].decode(errors="replace")
    return gtrid, bqual


def xa_resource(
    name: str, engine: AsyncEngine, *, isolation_level: IsolationLevel = "READ COMMITTED"
) -> PostgresResource | MysqlResource:
    """The resource manager for `engine`'s database; SQLite has no two-phase commit."""
    if engine.dialect.name == "postgresql":
        return PostgresResource(name, engine, isolation_level=isolation_level)
    if engine.dialect.name in {"mysql", "mariadb"}:
        return MysqlResource(name, engine, isolation_level=isolation_level)
    raise ValueError(f"{engine.dialect.name} has no two-phase commit: XA needs PostgreSQL or MySQL")
