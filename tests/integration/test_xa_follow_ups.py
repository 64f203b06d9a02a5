"""The XA coordinator's follow-ups: run once a transaction is decided, by `execute` or, when
it failed or its process died, by recovery, until they succeed; then the row is settled.

One database per backend (the PostgreSQL test instance, MariaDB) holds the log and a
probe table that both resources (two names, one database) write to.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ironcart.platform.database import create_engine
from ironcart.platform.txn.xa import (
    XaBranch,
    XaCoordinator,
    XaResource,
    XaState,
    xa_log,
    xa_resource,
)
from tests.support.databases import ServerUnavailable
from tests.support.pg_instance import PgInstance
from tests.support.xa_shop import BACKENDS, fresh_database

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


class ProviderDown(Exception):
    pass


@dataclass
class Recorder:
    """A follow-up that records its calls, and fails the first `failures` of them."""

    failures: int = 0
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    async def _call(self, outcome: str, gid: str, payload: Mapping[str, Any]) -> None:
        self.calls.append((outcome, gid, dict(payload)))
        if self.failures:
            self.failures -= 1
            raise ProviderDown(outcome)

    async def committed(self, gid: str, payload: Mapping[str, Any]) -> None:
        await self._call("committed", gid, payload)

    async def aborted(self, gid: str, payload: Mapping[str, Any]) -> None:
        await self._call("aborted", gid, payload)


@dataclass
class Stage:
    engine: AsyncEngine
    prefix: str
    resources: list[XaResource] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.resources = [xa_resource("orders", self.engine), xa_resource("stock", self.engine)]

    def coordinator(self, recorder: Recorder, *, later: bool = False) -> XaCoordinator:
        shift = timedelta(minutes=5) if later else timedelta(0)
        return XaCoordinator(
            self.engine,
            self.resources,
            gid_prefix=self.prefix,
            retry_backoff_seconds=0.0,
            clock=lambda: datetime.now(UTC) + shift,
            follow_ups={"sale": recorder},
        )

    async def probes(self, marker: str) -> list[str]:
        async with self.engine.connect() as connection:
            found = await connection.execute(
                text("SELECT side FROM xa_follow_probe WHERE id LIKE :id ORDER BY side"),
                {"id": f"{marker}%"},
            )
            return [side for (side,) in found]


@pytest.fixture(params=BACKENDS)
async def stage(
    request: pytest.FixtureRequest, pg_test_instance: PgInstance | ServerUnavailable
) -> AsyncIterator[Stage]:
    async with fresh_database(request.param, pg_test_instance) as url:
        engine = create_engine(url, pool_size=4)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(xa_log.create)
                await connection.execute(
                    text(
                        "CREATE TABLE xa_follow_probe (id VARCHAR(80) PRIMARY KEY, side VARCHAR(8))"
                    )
                )
            yield Stage(engine, f"f{uuid.uuid4().hex[:8]}")
        finally:
            await engine.dispose()


def _branches(stage: Stage, marker: str) -> list[XaBranch]:
    def insert(side: str) -> Any:
        async def work(connection: AsyncConnection) -> None:
            await connection.execute(
                text("INSERT INTO xa_follow_probe (id, side) VALUES (:id, :side)"),
                {"id": f"{marker}-{side}", "side": side},
            )

        return work

    return [XaBranch(r.name, r, insert(r.name)) for r in stage.resources]


async def test_a_failed_follow_up_is_run_again_by_recovery_until_it_succeeds(stage: Stage) -> None:
    recorder = Recorder(failures=2)
    coordinator = stage.coordinator(recorder)
    marker = uuid.uuid4().hex
    gid = coordinator.new_gid()

    outcome = await coordinator.execute(
        _branches(stage, marker), kind="sale", payload={"order": marker}, gid=gid
    )
    unsettled = await coordinator.get(gid)
    first = await stage.coordinator(recorder, later=True).recover()
    second = await stage.coordinator(recorder, later=True).recover()
    third = await stage.coordinator(recorder, later=True).recover()

    assert outcome.state is XaState.COMMITTED
    assert await stage.probes(marker) == ["orders", "stock"]
    assert unsettled is not None
    assert (unsettled.state, unsettled.settled) == (XaState.COMMITTED, False)
    assert recorder.calls == [("committed", gid, {"order": marker})] * 3
    assert (first.settled, first.failures, second.settled, third.claimed) == (0, 1, 1, 0)
    settled = await coordinator.get(gid)
    assert settled is not None
    assert settled.settled


async def test_a_begun_transaction_whose_process_died_is_aborted_and_followed_up(
    stage: Stage,
) -> None:
    recorder = Recorder()
    coordinator = stage.coordinator(recorder)
    gid = coordinator.new_gid()
    await coordinator.begin(
        gid,
        kind="sale",
        resources=stage.resources,
        payload={"payment": "p-1"},
        reference="order-1",
    )

    early = await stage.coordinator(recorder).recover()  # not in doubt yet: left alone
    report = await stage.coordinator(recorder, later=True).recover()

    assert early.claimed == 0
    assert (report.aborted, report.settled) == (1, 1)
    assert recorder.calls == [("aborted", gid, {"payment": "p-1"})]
    found = await coordinator.find("order-1")
    assert found is not None
    assert (found.gid, found.state, found.settled) == (gid, XaState.ABORTED, True)
    assert (await stage.coordinator(recorder, later=True).recover()).claimed == 0


async def test_abort_of_a_begun_transaction_follows_up_once(stage: Stage) -> None:
    recorder = Recorder()
    coordinator = stage.coordinator(recorder)
    gid = coordinator.new_gid()
    await coordinator.begin(gid, kind="sale", resources=stage.resources, payload={})

    first = await coordinator.abort(gid, reason="declined")
    again = await coordinator.abort(gid, reason="declined")

    assert (first, again) == (True, False)
    assert recorder.calls == [("aborted", gid, {})]
    assert (await stage.coordinator(recorder, later=True).recover()).claimed == 0
    assert len(recorder.calls) == 1
