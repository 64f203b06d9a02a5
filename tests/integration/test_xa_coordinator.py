"""XA two-phase commit across two real databases: commit, rollback, crashes, recovery.

Three pairs of (orders, inventory) databases: both on a PostgreSQL test instance that
this module starts with `max_prepared_transactions > 0` (the machine's server has 0),
both on the machine's MariaDB, and one of each. Each branch inserts a probe row; the
coordinator logs in the orders database. Crashes are real: the coordinator runs in a
child process that SIGKILLs itself at a crash point (`tests/support/xa_crash.py`).

MariaDB's XA RECOVER lists the whole server's prepared transactions, so "nothing left
prepared" is checked for this test's gid prefix there; on the test instance, which only
this module uses, `pg_prepared_xacts` must be empty.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ironcart.platform.database import create_engine
from ironcart.platform.txn.xa import (
    MysqlResource,
    PostgresResource,
    XaAborted,
    XaBranch,
    XaCoordinator,
    XaState,
    xa_log,
    xa_resource,
)
from tests.conftest import unavailable
from tests.support.databases import ServerUnavailable, fresh_mysql
from tests.support.pg_instance import PgInstance, running_pg_instance

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
LATER = timedelta(minutes=5)  # recovery's clock, when everything must be due and old


class Refused(Exception):
    pass


@pytest.fixture(scope="session")
def pg_instance() -> Iterator[PgInstance | ServerUnavailable]:
    """The session's own PostgreSQL (or why there is none: each test then fails or skips)."""
    try:
        with running_pg_instance() as instance:
            yield instance
    except ServerUnavailable as error:
        yield error


@asynccontextmanager
async def _instance_database(instance: PgInstance, name: str) -> AsyncIterator[str]:
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


@dataclass
class Pair:
    orders: AsyncEngine
    inventory: AsyncEngine
    orders_url: str
    inventory_url: str
    prefix: str
    kind: str

    def resources(self) -> list[PostgresResource | MysqlResource]:
        return [xa_resource("orders", self.orders), xa_resource("inventory", self.inventory)]

    def coordinator(
        self, resources: list[Any] | None = None, *, later: bool = False, **options: Any
    ) -> XaCoordinator:
        """A coordinator of this pair; `later`: its clock runs five minutes ahead."""
        shift = LATER if later else timedelta(0)
        return XaCoordinator(
            self.orders,
            resources or self.resources(),
            gid_prefix=self.prefix,
            clock=lambda: datetime.now(UTC) + shift,
            **{"retry_backoff_seconds": 0.0, **options},
        )

    async def probes(self, marker: str) -> tuple[list[str], list[str]]:
        """The sides found in each database for `marker` (committed rows only)."""
        found = []
        for engine in (self.orders, self.inventory):
            async with engine.connect() as connection:
                rows = await connection.execute(
                    text("SELECT side FROM xa_probe WHERE id = :id"), {"id": marker}
                )
                found.append([side for (side,) in rows])
        return found[0], found[1]

    async def prepared(self) -> dict[str, set[str]]:
        return {r.name: await r.prepared(f"{self.prefix}-") for r in self.resources()}


async def _schema(engine: AsyncEngine, *, log: bool) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text("CREATE TABLE xa_probe (id VARCHAR(64) PRIMARY KEY, side VARCHAR(16) NOT NULL)")
        )
        if log:
            await connection.run_sync(xa_log.create)


@asynccontextmanager
async def _database(kind: str, instance: PgInstance | ServerUnavailable) -> AsyncIterator[str]:
    if kind == "postgresql":
        if isinstance(instance, ServerUnavailable):
            unavailable(instance)
            raise AssertionError("unreachable")
        async with _instance_database(instance, f"xa_{uuid.uuid4().hex[:12]}") as url:
            yield url
        return
    try:
        async with fresh_mysql() as url:
            yield url
    except ServerUnavailable as error:
        unavailable(error)


PAIRS = {
    "postgresql": ("postgresql", "postgresql"),
    "mariadb": ("mysql", "mysql"),
    "mixed": ("postgresql", "mysql"),
}


@pytest.fixture(params=list(PAIRS))
async def pair(
    request: pytest.FixtureRequest, pg_instance: PgInstance | ServerUnavailable
) -> AsyncIterator[Pair]:
    orders_kind, inventory_kind = PAIRS[request.param]
    async with AsyncExitStack() as stack:
        orders_url = await stack.enter_async_context(_database(orders_kind, pg_instance))
        inventory_url = await stack.enter_async_context(_database(inventory_kind, pg_instance))
        orders = create_engine(orders_url, pool_size=3)
        inventory = create_engine(inventory_url, pool_size=3)
        made = Pair(
            orders, inventory, orders_url, inventory_url, f"t{uuid.uuid4().hex[:8]}", request.param
        )
        try:
            await _schema(orders, log=True)
            await _schema(inventory, log=False)
            yield made
        finally:
            # A failed test may leave branches prepared: they would block dropping the
            # databases (PostgreSQL refuses, MariaDB waits on their locks forever).
            for resource in made.resources():
                for gid in await resource.prepared(f"{made.prefix}-"):
                    await resource.rollback(gid)
            await orders.dispose()
            await inventory.dispose()


def insert(marker: str, side: str, *, then_raise: bool = False) -> Any:
    async def work(connection: AsyncConnection) -> None:
        await connection.execute(
            text("INSERT INTO xa_probe (id, side) VALUES (:id, :side)"),
            {"id": marker, "side": side},
        )
        if then_raise:
            raise Refused(side)

    return work


def branches(resources: list[Any], marker: str, **second: Any) -> list[XaBranch]:
    return [
        XaBranch("orders", resources[0], insert(marker, "orders")),
        XaBranch("inventory", resources[1], insert(marker, "inventory", **second)),
    ]


async def _assert_nothing_prepared(pair: Pair, instance: PgInstance | ServerUnavailable) -> None:
    assert await pair.prepared() == {"orders": set(), "inventory": set()}
    if isinstance(instance, PgInstance):
        admin = await asyncpg.connect(instance.url(), timeout=5)
        try:
            assert await admin.fetch("SELECT gid FROM pg_prepared_xacts") == []
        finally:
            await admin.close()


# -- the coordinator, live -------------------------------------------------------------------


async def test_both_branches_commit(pair: Pair, pg_instance: Any) -> None:
    resources = pair.resources()
    coordinator = pair.coordinator(resources)
    marker = uuid.uuid4().hex

    outcome = await coordinator.execute(
        branches(resources, marker), kind="test", payload={"order": marker}
    )

    assert outcome.state is XaState.COMMITTED
    assert await pair.probes(marker) == (["orders"], ["inventory"])
    entry = await coordinator.get(outcome.gid)
    assert entry is not None
    assert (entry.state, entry.resources, dict(entry.payload)) == (
        XaState.COMMITTED,
        ("orders", "inventory"),
        {"order": marker},
    )
    await _assert_nothing_prepared(pair, pg_instance)


async def test_a_failure_in_the_second_branch_rolls_back_both(pair: Pair, pg_instance: Any) -> None:
    resources = pair.resources()
    coordinator = pair.coordinator(resources)
    marker = uuid.uuid4().hex
    gid = coordinator.new_gid()

    with pytest.raises(Refused):
        await coordinator.execute(branches(resources, marker, then_raise=True), gid=gid)

    assert await pair.probes(marker) == ([], [])
    entry = await coordinator.get(gid)
    assert entry is not None
    assert (entry.state, entry.reason) == (XaState.ABORTED, "inventory work: Refused")
    await _assert_nothing_prepared(pair, pg_instance)


@dataclass
class KilledAtPrepare:
    """The real resource, except that the server drops the branch's session just before
    its prepare (as a crashed or restarted server would): the prepare fails for real."""

    inner: PostgresResource | MysqlResource

    @property
    def name(self) -> str:
        return self.inner.name

    async def prepare(self, connection: AsyncConnection, gtrid: str) -> None:
        postgres = isinstance(self.inner, PostgresResource)
        query = "SELECT pg_backend_pid()" if postgres else "SELECT CONNECTION_ID()"
        session = await connection.scalar(text(query))
        async with self.inner.engine.connect() as admin:
            if postgres:
                await admin.execute(
                    text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": session}
                )
            else:
                await admin.exec_driver_sql(f"KILL {int(session)}")
        await self.inner.prepare(connection, gtrid)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_failed_prepare_rolls_back_both(pair: Pair, pg_instance: Any) -> None:
    orders, inventory = pair.resources()
    killed = KilledAtPrepare(inventory)
    coordinator = pair.coordinator([orders, killed])  # type: ignore[list-item]
    marker = uuid.uuid4().hex
    gid = coordinator.new_gid()

    with pytest.raises(Exception, match=r"terminating connection|gone away|closed|Lost"):
        await coordinator.execute(branches([orders, killed], marker), gid=gid)

    # The first branch was prepared, then rolled back; the second died with its session.
    assert await pair.probes(marker) == ([], [])
    assert await coordinator.state(gid) is XaState.ABORTED
    await _assert_nothing_prepared(pair, pg_instance)


@pytest.mark.parametrize("pair", ["postgresql"], indirect=True)
async def test_postgresql_refusing_to_prepare_rolls_back_both(pair: Pair, pg_instance: Any) -> None:
    """PostgreSQL's own refusal: a branch that touched a temporary table cannot prepare."""
    resources = pair.resources()
    coordinator = pair.coordinator(resources)
    marker = uuid.uuid4().hex

    async def with_temporary_table(connection: AsyncConnection) -> None:
        await insert(marker, "inventory")(connection)
        await connection.execute(text("CREATE TEMPORARY TABLE scratch (n INT)"))

    branch = XaBranch("inventory", resources[1], with_temporary_table)
    with pytest.raises(Exception, match="cannot PREPARE a transaction that has operated on temp"):
        await coordinator.execute([branches(resources, marker)[0], branch])

    assert await pair.probes(marker) == ([], [])
    await _assert_nothing_prepared(pair, pg_instance)


async def test_recovery_giving_up_before_the_decision_aborts_the_live_transaction(
    pair: Pair, pg_instance: Any
) -> None:
    resources = pair.resources()
    coordinator = pair.coordinator(resources)
    marker = uuid.uuid4().hex
    gid = coordinator.new_gid()
    reports = []

    async def slow(connection: AsyncConnection) -> None:
        await insert(marker, "inventory")(connection)
        # Meanwhile another worker finds the transaction in doubt (its clock is later).
        reports.append(await pair.coordinator(later=True).recover())

    with pytest.raises(XaAborted):
        await coordinator.execute(
            [branches(resources, marker)[0], XaBranch("inventory", resources[1], slow)], gid=gid
        )

    assert reports[0].aborted == 1
    assert await coordinator.state(gid) is XaState.ABORTED
    assert await pair.probes(marker) == ([], [])
    await _assert_nothing_prepared(pair, pg_instance)


# -- crashes and recovery ----------------------------------------------------------------------


def _crash(pair: Pair, marker: str, point: str) -> str:
    """Run the coordinator in a child process that dies at `point`; the gid it used."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.xa_crash",
            pair.orders_url,
            pair.inventory_url,
            pair.prefix,
            marker,
            point,
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == -9, output
    return result.stdout.decode().split()[0]


EXPECTED = {
    # point: (log state after the crash, prepared after the crash, probes after recovery)
    "after_prepare": (XaState.PREPARING, 2, ([], [])),
    "after_decision": (XaState.COMMITTING, 2, (["orders"], ["inventory"])),
    "after_first_commit": (XaState.COMMITTING, 1, (["orders"], ["inventory"])),
}


async def test_killed_coordinators_are_recovered_from_their_log(
    pair: Pair, pg_instance: Any
) -> None:
    markers = {point: uuid.uuid4().hex for point in EXPECTED}
    # One child per crash point, at once: one recovery pass below finds all three.
    gids = dict(
        zip(
            EXPECTED,
            await asyncio.gather(
                *(asyncio.to_thread(_crash, pair, markers[point], point) for point in EXPECTED)
            ),
            strict=True,
        )
    )

    live = pair.coordinator(in_doubt_after_seconds=60)

    async def prepared_branches(gid: str) -> int:
        return sum(gid in gids for gids in (await pair.prepared()).values())

    for point, gid in gids.items():
        assert await live.state(gid) is EXPECTED[point][0], point
        assert await prepared_branches(gid) == EXPECTED[point][1], point
    # Not in doubt yet (a live coordinator could still be at work): recovery leaves them.
    nothing = await live.recover()
    assert (nothing.committed_branches, nothing.rolled_back_branches) == (0, 0)
    assert [await prepared_branches(gid) for gid in gids.values()] == [2, 2, 1]

    report = await pair.coordinator(later=True, in_doubt_after_seconds=60).recover()

    assert (report.aborted, report.rolled_back_branches, report.committed_branches) == (1, 2, 3)
    assert (report.finished, report.failures) == (2, 0)
    for point, gid in gids.items():
        assert await pair.probes(markers[point]) == EXPECTED[point][2], point
        final = XaState.ABORTED if point == "after_prepare" else XaState.COMMITTED
        assert await live.state(gid) is final, point
    await _assert_nothing_prepared(pair, pg_instance)


@pytest.mark.parametrize("pair", ["mariadb"], indirect=True)
async def test_workers_recovering_at_once_finish_each_branch_once(
    pair: Pair, pg_instance: Any
) -> None:
    marker = uuid.uuid4().hex
    gid = await asyncio.to_thread(_crash, pair, marker, "after_decision")

    # Backoff: a row one worker claimed is not due again for the others (SKIP LOCKED while
    # the claim is open), so each branch is committed by one worker.
    workers = [pair.coordinator(later=True, retry_backoff_seconds=30) for _ in range(3)]
    reports = await asyncio.gather(*(worker.recover() for worker in workers))

    assert sum(report.committed_branches for report in reports) == 2
    assert sum(report.failures for report in reports) == 0
    assert await pair.probes(marker) == (["orders"], ["inventory"])
    assert await pair.coordinator().state(gid) is XaState.COMMITTED
    await _assert_nothing_prepared(pair, pg_instance)


async def test_a_prepared_branch_without_a_log_row_is_presumed_aborted(
    pair: Pair, pg_instance: Any
) -> None:
    resources = pair.resources()
    coordinator = pair.coordinator(resources, in_doubt_after_seconds=60)
    # A gid carries its creation time: one made five minutes before the recovery below.
    gids = {"old": coordinator.new_gid(), "fresh": ""}
    await asyncio.sleep(0)
    recovering = pair.coordinator(resources, later=True, in_doubt_after_seconds=60)
    gids["fresh"] = recovering.new_gid()
    for age, gid in gids.items():
        connection = await resources[1].start(gid)
        await insert(f"{age}-{gid}"[:64], "inventory")(connection)
        await resources[1].prepare(connection, gid)
        await connection.invalidate()
        await connection.close()

    report = await recovering.recover()

    assert report.rolled_back_branches == 1
    assert (await pair.prepared())["inventory"] == {gids["fresh"]}
    await resources[1].rollback(gids["fresh"])
    await _assert_nothing_prepared(pair, pg_instance)
