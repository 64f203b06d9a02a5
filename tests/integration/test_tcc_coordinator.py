"""The TCC coordinator on every backend: decide, cancel, recover in-doubt and stuck transactions.

The participants here are small recording participants (the real inventory and payments
participants have their own tests against real stores); what is under test is the
coordinator's log, its decision and its recovery.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ironcart.platform.database import create_engine, session_factory
from ironcart.platform.errors import ServiceUnavailable
from ironcart.platform.txn.tables import branches, transactions
from ironcart.platform.txn.tcc import Branch, TccCoordinator, TransactionAborted, TxnState

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


class Refused(Exception):
    pass


class Unreachable(ServiceUnavailable):
    code = "test.unreachable"


@dataclass
class Recorder:
    """A participant that records calls; it can refuse a try or fail confirms for a while."""

    name: str
    calls: list[tuple[str, str]]
    refuse_try: bool = False
    unreachable_try: bool = False
    failing_confirms: int = 0
    failing_cancels: int = 0
    confirmed: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)

    async def try_(self, xid: str, payload: Mapping[str, Any]) -> None:
        self.calls.append((self.name, "try"))
        if self.refuse_try:
            raise Refused(self.name)
        if self.unreachable_try:
            raise Unreachable(f"{self.name} did not answer in time")

    async def confirm(self, xid: str, payload: Mapping[str, Any]) -> None:
        self.calls.append((self.name, "confirm"))
        if self.failing_confirms:
            self.failing_confirms -= 1
            raise ConnectionError("participant down")
        self.confirmed.add(xid)

    async def cancel(self, xid: str, payload: Mapping[str, Any]) -> None:
        self.calls.append((self.name, "cancel"))
        if self.failing_cancels:
            self.failing_cancels -= 1
            raise ConnectionError("participant down")
        self.cancelled.add(xid)


@dataclass
class World:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    calls: list[tuple[str, str]]
    a: Recorder
    b: Recorder

    def coordinator(self, *, backoff: float = 0.0, **options: Any) -> TccCoordinator:
        return TccCoordinator(
            self.sessions, {"a": self.a, "b": self.b}, retry_backoff_seconds=backoff, **options
        )

    async def begin(self, coordinator: TccCoordinator) -> str:
        xid = f"t-{uuid.uuid4()}"
        async with self.sessions() as session, session.begin():
            await coordinator.begin(
                session,
                xid=xid,
                kind="test",
                branches=[Branch("first", "a", {"n": 1}), Branch("second", "b", {"n": 2})],
            )
        return xid

    async def make_due(self, xid: str) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(transactions)
                .where(transactions.c.xid == xid)
                .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
            )

    async def branch_states(self, xid: str) -> list[str]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(branches.c.state).where(branches.c.xid == xid).order_by(branches.c.position)
            )
            return list(rows)


def _world(url: str) -> World:
    engine = create_engine(url, pool_size=10)
    calls: list[tuple[str, str]] = []
    return World(engine, session_factory(engine), calls, Recorder("a", calls), Recorder("b", calls))


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    made = _world(database_url)
    try:
        yield made
    finally:
        await made.engine.dispose()


@pytest.fixture
async def server_world(server_database_url: str) -> AsyncIterator[World]:
    made = _world(server_database_url)
    try:
        yield made
    finally:
        await made.engine.dispose()


async def test_all_tries_succeed_then_every_branch_is_confirmed(world: World) -> None:
    coordinator = world.coordinator()
    xid = await world.begin(coordinator)

    state = await coordinator.execute(xid)

    assert state is TxnState.CONFIRMED
    assert world.calls == [("a", "try"), ("b", "try"), ("a", "confirm"), ("b", "confirm")]
    assert await coordinator.state(xid) is TxnState.CONFIRMED
    assert await world.branch_states(xid) == ["confirmed", "confirmed"]


async def test_a_refused_try_cancels_every_branch_in_reverse_and_reraises(world: World) -> None:
    world.a.refuse_try = True
    coordinator = world.coordinator()
    xid = await world.begin(coordinator)

    with pytest.raises(Refused):
        await coordinator.execute(xid)

    # b was never tried: it still gets its cancel (an empty rollback that fences a late try).
    assert world.calls == [("a", "try"), ("b", "cancel"), ("a", "cancel")]
    assert await coordinator.state(xid) is TxnState.CANCELLED
    assert await world.branch_states(xid) == ["cancelled", "cancelled"]
    assert not world.a.confirmed
    assert not world.b.confirmed


async def test_an_unreachable_participant_is_left_to_recovery_and_the_others_cancelled_now(
    world: World,
) -> None:
    world.b.unreachable_try = True
    coordinator = world.coordinator(backoff=2.0)
    xid = await world.begin(coordinator)

    started = datetime.now(UTC)
    with pytest.raises(Unreachable):
        await coordinator.execute(xid)

    # b is not asked again inside the request; a (which held something) is undone at once.
    assert world.calls == [("a", "try"), ("b", "try"), ("a", "cancel")]
    assert world.a.cancelled == {xid}
    assert await coordinator.state(xid) is TxnState.CANCELLING
    async with world.sessions() as session:
        due = await session.scalar(
            select(transactions.c.next_attempt_at).where(transactions.c.xid == xid)
        )
    assert due is not None
    due = due if due.tzinfo else due.replace(tzinfo=UTC)
    # Due after the retry backoff, not after the in-doubt delay (60 s).
    assert started + timedelta(seconds=1) <= due <= datetime.now(UTC) + timedelta(seconds=3)

    await world.make_due(xid)
    assert await coordinator.recover() == 1

    assert await coordinator.state(xid) is TxnState.CANCELLED
    assert world.b.cancelled == {xid}
    assert await world.branch_states(xid) == ["cancelled", "cancelled"]
    assert not world.a.confirmed
    assert not world.b.confirmed


async def test_a_failed_confirm_is_finished_by_recovery(world: World) -> None:
    world.b.failing_confirms = 1
    coordinator = world.coordinator()
    xid = await world.begin(coordinator)

    assert await coordinator.execute(xid) is TxnState.CONFIRMING
    assert await coordinator.state(xid) is TxnState.CONFIRMING

    await world.make_due(xid)
    assert await coordinator.recover() == 1

    assert await coordinator.state(xid) is TxnState.CONFIRMED
    assert world.b.confirmed == {xid}
    assert ("a", "cancel") not in world.calls
    assert ("b", "cancel") not in world.calls


async def test_a_failed_cancel_is_finished_by_recovery(world: World) -> None:
    world.b.refuse_try = True
    world.a.failing_cancels = 2
    coordinator = world.coordinator()
    xid = await world.begin(coordinator)

    with pytest.raises(Refused):
        await coordinator.execute(xid)
    assert await coordinator.state(xid) is TxnState.CANCELLING

    for _ in range(2):
        await world.make_due(xid)
        await coordinator.recover()

    assert await coordinator.state(xid) is TxnState.CANCELLED
    assert world.a.cancelled == {xid}
    assert not world.a.confirmed
    assert not world.b.confirmed


async def test_an_in_doubt_transaction_is_cancelled_only_once_it_is_due(world: World) -> None:
    coordinator = world.coordinator(in_doubt_after_seconds=3600)
    xid = await world.begin(coordinator)  # the process "died" before executing it

    assert await coordinator.recover() == 0  # not due: it may still be running
    assert await coordinator.state(xid) is TxnState.TRYING

    await world.make_due(xid)
    assert await coordinator.recover() == 1

    assert await coordinator.state(xid) is TxnState.CANCELLED
    assert world.a.cancelled == {xid}
    assert world.b.cancelled == {xid}


async def test_a_decision_that_loses_to_recovery_aborts_and_cancels(world: World) -> None:
    coordinator = world.coordinator()
    xid = await world.begin(coordinator)
    await world.make_due(xid)
    assert await coordinator.recover() == 1  # recovery gave up on it first

    with pytest.raises(TransactionAborted):
        await coordinator.execute(xid)

    assert await coordinator.state(xid) is TxnState.CANCELLED
    assert not world.a.confirmed
    assert not world.b.confirmed


async def test_concurrent_recoverers_claim_each_due_transaction_once(server_world: World) -> None:
    world = server_world
    coordinator = world.coordinator(in_doubt_after_seconds=3600)
    xids = [await world.begin(coordinator) for _ in range(40)]
    for xid in xids:
        await world.make_due(xid)
    # A long backoff: once claimed, a transaction is not due again during this test.
    recoverers = [world.coordinator(in_doubt_after_seconds=3600, backoff=60) for _ in range(4)]

    claimed = await asyncio.gather(*(r.recover(limit=40) for r in recoverers))

    assert sum(claimed) == 40
    for xid in xids:
        assert await coordinator.state(xid) is TxnState.CANCELLED
    assert sorted(c for c in world.calls if c[1] == "cancel").count(("a", "cancel")) == 40
