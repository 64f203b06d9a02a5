"""The outbox relay on every backend: committed events go out once, in seq order; nothing else does.

A test outbox table (`relaytest_outbox`) is created on each fresh database; the publishers
here record what they were handed, or fail on purpose.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import MetaData, Table, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ironcart.platform.database import create_engine, session_factory
from ironcart.platform.events import EventBus
from ironcart.platform.outbox import decode_event, outbox_table, record, register_event
from ironcart.platform.relay import (
    InProcessPublisher,
    OutboxMessage,
    OutboxRelay,
    OutboxSource,
    PublishFailed,
)

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@register_event
@dataclass(frozen=True, slots=True)
class RelayProbe:
    number: int


@dataclass
class RecordingPublisher:
    """Keeps what it was handed; fails for the event ids in `failing`; `delay` per publish."""

    failing: set[str] = field(default_factory=set)
    delay: float = 0.0
    published: list[OutboxMessage] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def publish(self, message: OutboxMessage) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if message.event_id in self.failing:
            raise ConnectionError("the bus is down")
        self.published.append(message)
        self.arrived.set()

    def numbers(self) -> list[int]:
        return [_number(message) for message in self.published]


@dataclass
class Outbox:
    sessions: async_sessionmaker[AsyncSession]
    table: Table

    @property
    def source(self) -> OutboxSource:
        return OutboxSource(self.sessions, self.table)

    async def record(self, numbers: Iterable[int], *, commit: bool = True) -> list[str]:
        async with self.sessions() as session:
            ids = [
                await record(session, self.table, RelayProbe(number), subject="relaytest.probe")
                for number in numbers
            ]
            if commit:
                await session.commit()
        return ids

    async def rows(self) -> list[tuple[int, str, datetime | None, int]]:
        table = self.table
        async with self.sessions() as session:
            result = await session.execute(
                select(
                    table.c.seq, table.c.event_id, table.c.published_at, table.c.attempts
                ).order_by(table.c.seq)
            )
            return [tuple(row) for row in result.all()]


def _number(message: OutboxMessage) -> int:
    event = decode_event(message.event_type, message.payload)
    assert isinstance(event, RelayProbe)
    return event.number


async def _outbox(url: str) -> AsyncIterator[Outbox]:
    engine = create_engine(url)
    table = outbox_table(MetaData(), "relaytest")
    async with engine.begin() as connection:
        await connection.run_sync(table.metadata.create_all)
    try:
        yield Outbox(session_factory(engine), table)
    finally:
        await engine.dispose()


@pytest.fixture
async def outbox(database_url: str) -> AsyncIterator[Outbox]:
    async for item in _outbox(database_url):
        yield item


@pytest.fixture
async def server_outbox(server_database_url: str) -> AsyncIterator[Outbox]:
    async for item in _outbox(server_database_url):
        yield item


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_committed_events_are_published_once_in_seq_order(outbox: Outbox) -> None:
    # given two committed transactions
    first = await outbox.record(range(5))
    second = await outbox.record(range(5, 8))
    publisher = RecordingPublisher()
    relay = OutboxRelay([outbox.source], publisher, batch_size=3)
    counted_before = _sample("ironcart_outbox_events_published_total", event_type="RelayProbe")

    # when the relay drains the outbox twice
    published = await relay.drain_once()
    again = await relay.drain_once()

    # then every event went out once, in seq order, and is marked
    assert (published, again) == (8, 0)
    assert publisher.numbers() == list(range(8))
    assert [message.event_id for message in publisher.published] == first + second
    seqs = [message.seq for message in publisher.published]
    assert seqs == sorted(seqs)
    assert {message.subject for message in publisher.published} == {"relaytest.probe"}
    rows = await outbox.rows()
    assert all(published_at is not None for _, _, published_at, _ in rows)
    assert [attempts for *_, attempts in rows] == [0] * 8
    counted = _sample("ironcart_outbox_events_published_total", event_type="RelayProbe")
    assert counted - counted_before == 8
    assert _sample("ironcart_outbox_pending", outbox="relaytest_outbox") == 0


async def test_rolled_back_events_are_never_published(outbox: Outbox) -> None:
    # given a transaction that recorded events and rolled back, and one that failed
    await outbox.record(range(3), commit=False)
    with pytest.raises(RuntimeError, match="use case failed"):
        await _failing_use_case(outbox)
    publisher = RecordingPublisher()

    # when the relay drains
    published = await OutboxRelay([outbox.source], publisher).drain_once()

    # then nothing was published, and there is nothing to publish
    assert published == 0
    assert publisher.published == []
    assert await outbox.rows() == []


async def test_a_failed_publish_leaves_the_rows_pending_and_they_go_out_later(
    outbox: Outbox,
) -> None:
    # given five committed events, the bus failing on the third
    ids = await outbox.record(range(5))
    publisher = RecordingPublisher(failing={ids[2]})
    relay = OutboxRelay([outbox.source], publisher, batch_size=10)

    # when the relay drains
    with pytest.raises(PublishFailed) as failure:
        await relay.drain_once()

    # then the two before it went out; it and the rows after it did not (no skipping)
    rows = await outbox.rows()
    assert failure.value.seq == rows[2][0]
    assert publisher.numbers() == [0, 1]
    assert [published_at is not None for _, _, published_at, _ in rows] == [True, True] + [
        False
    ] * 3
    assert [attempts for *_, attempts in rows] == [0, 0, 1, 0, 0]
    assert _sample("ironcart_outbox_pending", outbox="relaytest_outbox") == 3
    assert _sample("ironcart_outbox_lag_seconds", outbox="relaytest_outbox") >= 0

    # when the bus is back and the relay loop runs
    publisher.failing.clear()
    relay = OutboxRelay([outbox.source], publisher, poll_interval=0.05)
    task = asyncio.create_task(relay.run_until_stopped())
    try:
        await _until(lambda: len(publisher.published) >= 5)
    finally:
        relay.stop()
        await asyncio.wait_for(task, timeout=5)

    # then the rest went out, each event exactly once, in order
    assert publisher.numbers() == [0, 1, 2, 3, 4]
    assert all(published_at is not None for _, _, published_at, _ in await outbox.rows())


async def test_the_relay_loop_backs_off_while_the_bus_is_down(outbox: Outbox) -> None:
    # given one event and a bus that is down
    ids = await outbox.record([7])
    publisher = RecordingPublisher(failing=set(ids))
    relay = OutboxRelay([outbox.source], publisher, poll_interval=0.01, backoff_base=0.05)
    task = asyncio.create_task(relay.run_until_stopped())
    try:
        # when it has been down a while, then comes back
        await asyncio.sleep(0.5)
        attempts = (await outbox.rows())[0][3]
        publisher.failing.clear()
        await _until(lambda: len(publisher.published) == 1)
    finally:
        relay.stop()
        await asyncio.wait_for(task, timeout=5)

    # then the relay retried with a growing delay (0.05, 0.1, 0.2 ...: a handful of tries
    # in half a second, not one per poll) and the event went out once
    assert 2 <= attempts <= 5
    assert publisher.numbers() == [7]


async def test_a_broken_outbox_does_not_hold_up_the_others(outbox: Outbox) -> None:
    # given a healthy outbox and one whose table does not exist (its migration is missing)
    await outbox.record(range(3))
    missing = OutboxSource(outbox.sessions, outbox_table(MetaData(), "missing"))
    publisher = RecordingPublisher()
    relay = OutboxRelay([missing, outbox.source], publisher, poll_interval=0.05)

    # when the relay runs
    task = asyncio.create_task(relay.run_until_stopped())
    try:
        await _until(lambda: len(publisher.published) == 3)
        await outbox.record([3])
        relay.notify()
        await _until(lambda: len(publisher.published) == 4)
    finally:
        relay.stop()
        await asyncio.wait_for(task, timeout=5)

    # then the healthy outbox went out, while the broken one backs off; drain_once reports it
    assert publisher.numbers() == [0, 1, 2, 3]
    with pytest.raises(SQLAlchemyError):
        await OutboxRelay([missing, outbox.source], publisher).drain_once()


async def test_two_relays_at_once_publish_each_row_once(server_outbox: Outbox) -> None:
    # given 600 committed events
    ids: list[str] = []
    for start in range(0, 600, 100):
        ids += await server_outbox.record(range(start, start + 100))
    first, second = RecordingPublisher(delay=0.001), RecordingPublisher(delay=0.001)

    # when two relays drain the same outbox concurrently (FOR UPDATE SKIP LOCKED)
    counts = await asyncio.gather(
        OutboxRelay([server_outbox.source], first, batch_size=20).drain_once(),
        OutboxRelay([server_outbox.source], second, batch_size=20).drain_once(),
    )

    # then each event was published by exactly one of them, and both took part
    published = [message.event_id for message in first.published + second.published]
    assert sorted(published) == sorted(ids)
    assert len(set(published)) == 600
    assert sum(counts) == 600
    assert len(first.published) > 0
    assert len(second.published) > 0
    for publisher in (first, second):  # each relay keeps seq order within what it published
        seqs = [message.seq for message in publisher.published]
        assert seqs == sorted(seqs)
    assert all(published_at is not None for _, _, published_at, _ in await server_outbox.rows())


async def test_notify_wakes_the_relay_within_milliseconds(outbox: Outbox) -> None:
    # given a running relay that would otherwise poll only once a minute
    publisher = RecordingPublisher()
    relay = OutboxRelay([outbox.source], publisher, poll_interval=60.0)
    task = asyncio.create_task(relay.run_until_stopped())
    try:
        await asyncio.sleep(0.2)  # its first round found nothing; it sleeps
        assert publisher.published == []

        # when a use case commits an event and notifies the relay
        await outbox.record([42])
        started = time.perf_counter()
        relay.notify()
        await asyncio.wait_for(publisher.arrived.wait(), timeout=5)
        latency = time.perf_counter() - started
    finally:
        relay.stop()
        await asyncio.wait_for(task, timeout=5)

    # then it went out at once, not after the poll interval
    assert publisher.numbers() == [42]
    assert latency < 0.5, f"published {latency * 1000:.0f} ms after notify()"


async def test_in_process_publisher_hands_known_events_to_subscribers(outbox: Outbox) -> None:
    # given a known event and a row of a type this process does not know
    await outbox.record([1])
    async with outbox.sessions() as session:
        await session.execute(
            outbox.table.insert().values(
                event_id="00000000-0000-0000-0000-00000000dead",
                event_type="SomethingFromTheFuture",
                subject="relaytest.unknown",
                payload="{}",
                created_at=datetime.now(UTC),
                attempts=0,
            )
        )
        await session.commit()
    await outbox.record([2])
    bus = EventBus()
    received: list[object] = []

    async def subscriber(event: object) -> None:
        received.append(event)

    bus.subscribe(RelayProbe, subscriber)

    # when the in-process relay drains
    published = await OutboxRelay([outbox.source], InProcessPublisher(bus)).drain_once()

    # then subscribers got the known events; the unknown one did not block the outbox
    assert received == [RelayProbe(1), RelayProbe(2)]
    assert published == 3
    assert all(published_at is not None for _, _, published_at, _ in await outbox.rows())


async def test_retention_deletes_only_old_published_rows(outbox: Outbox) -> None:
    # given three published rows, one of them published ten days ago, and an old pending one
    ids = await outbox.record(range(3))
    await OutboxRelay([outbox.source], RecordingPublisher()).drain_once()
    pending = await outbox.record([3])
    table = outbox.table
    long_ago = datetime.now(UTC) - timedelta(days=10)
    async with outbox.sessions() as session:
        await session.execute(
            update(table).where(table.c.event_id == ids[0]).values(published_at=long_ago)
        )
        await session.execute(
            update(table).where(table.c.event_id == pending[0]).values(created_at=long_ago)
        )
        await session.commit()

    # when the retention job runs with a week's retention
    deleted = await OutboxRelay([outbox.source], RecordingPublisher()).purge_published(
        older_than=timedelta(days=7)
    )

    # then only the old published row is gone
    assert deleted == 1
    assert [event_id for _, event_id, _, _ in await outbox.rows()] == [ids[1], ids[2], pending[0]]
    async with outbox.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(table)) == 3


async def _failing_use_case(outbox: Outbox) -> None:
    async with outbox.sessions() as session:
        await record(session, outbox.table, RelayProbe(99), subject="relaytest.probe")
        raise RuntimeError("use case failed")


async def _until(condition: object, timeout: float = 5.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
