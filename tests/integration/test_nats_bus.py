"""NATS JetStream: publish with dedup ids, a durable pull consumer, and an inbox on PostgreSQL.

Each test gets its own stream and subject prefix, deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from prometheus_client import REGISTRY
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select

from ironcart.platform.database import create_engine, session_factory
from ironcart.platform.inbox import first_delivery, inbox_table
from ironcart.platform.nats import BusError, EventHandler, JetStreamConsumer, JetStreamPublisher
from ironcart.platform.outbox import encode_event, outbox_table, record, register_event
from ironcart.platform.relay import OutboxMessage, OutboxRelay, OutboxSource, PublishFailed
from tests.support.server import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@register_event
@dataclass(frozen=True, slots=True)
class BusProbe:
    number: int


@dataclass
class Bus:
    url: str
    client: Client
    stream: str
    prefix: str

    def publisher(self) -> JetStreamPublisher:
        return JetStreamPublisher(self.url, stream=self.stream, subject_prefix=self.prefix)

    def consumer(self, handler: EventHandler, **options: float) -> JetStreamConsumer:
        return JetStreamConsumer(
            self.url,
            durable="probe-consumer",
            handler=handler,
            stream=self.stream,
            subject_prefix=self.prefix,
            fetch_wait=0.2,
            **options,  # type: ignore[arg-type]
        )

    async def stored(self) -> int:
        info = await self.client.jetstream().stream_info(self.stream)
        return info.state.messages


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    token = uuid.uuid4().hex[:12]
    client = await nats.connect(nats_url)
    try:
        yield Bus(nats_url, client, stream=f"TEST_{token}", prefix=f"test{token}")
    finally:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await client.jetstream().delete_stream(f"TEST_{token}")
        await client.close()


def _message(number: int, event_id: str | None = None) -> OutboxMessage:
    return OutboxMessage(
        seq=number,
        event_id=event_id or str(uuid.uuid4()),
        event_type="BusProbe",
        subject="probe.created",
        payload=encode_event(BusProbe(number)).decode(),
        created_at=datetime.now(UTC),
        outbox="test_outbox",
    )


async def _consume_until(
    consumer: JetStreamConsumer, done: Callable[[], bool], timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the consumer did not get there in time"
        await consumer.process_batch()


async def test_published_events_reach_a_consumer_in_order_with_their_ids(bus: Bus) -> None:
    # given three events published through the relay's publisher
    messages = [_message(number) for number in range(3)]
    publisher = bus.publisher()
    try:
        for message in messages:
            await publisher.publish(message)
    finally:
        await publisher.close()
    received: list[tuple[object, str]] = []

    async def handler(event: object, event_id: str) -> None:
        received.append((event, event_id))

    # when a durable consumer reads the stream
    consumer = bus.consumer(handler)
    try:
        await _consume_until(consumer, lambda: len(received) >= 3)
        extra = await consumer.process_batch()
    finally:
        await consumer.close()

    # then it got each event once, decoded, in order, with the outbox event id
    assert received == [(BusProbe(m.seq), m.event_id) for m in messages]
    assert extra == 0
    info = await bus.client.jetstream().consumer_info(bus.stream, "probe-consumer")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_a_republished_event_id_is_stored_once(bus: Bus) -> None:
    # given one event published three times (a relay that crashed before marking it)
    message = _message(1)
    suppressed_before = REGISTRY.get_sample_value("ironcart_bus_duplicates_suppressed_total")
    publisher = bus.publisher()
    try:
        for _ in range(3):
            await publisher.publish(message)
    finally:
        await publisher.close()
    received: list[str] = []

    async def handler(_event: object, event_id: str) -> None:
        received.append(event_id)

    # when a consumer reads the stream
    consumer = bus.consumer(handler)
    try:
        await _consume_until(consumer, lambda: len(received) >= 1)
        await consumer.process_batch()
    finally:
        await consumer.close()

    # then JetStream stored it once and it was delivered once
    assert await bus.stored() == 1
    assert received == [message.event_id]
    suppressed = REGISTRY.get_sample_value("ironcart_bus_duplicates_suppressed_total")
    assert (suppressed or 0) - (suppressed_before or 0) == 2


async def test_consumer_with_inbox_applies_each_event_once_despite_redelivery(
    bus: Bus, postgres_url: str
) -> None:
    # given an inbox and an effects table on PostgreSQL, and three published events
    metadata = MetaData()
    inbox = inbox_table(metadata, "bustest")
    effects = Table(
        "bustest_effects",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False),
        Column("number", Integer, nullable=False),
    )
    engine = create_engine(postgres_url)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    sessions = session_factory(engine)
    messages = [_message(number) for number in range(3)]
    publisher = bus.publisher()
    try:
        for message in messages:
            await publisher.publish(message)
    finally:
        await publisher.close()
    deliveries: Counter[int] = Counter()
    suppressed: list[int] = []

    async def handler(event: BusProbe, event_id: str) -> None:
        deliveries[event.number] += 1
        first = deliveries[event.number] == 1
        async with sessions() as session:
            if await first_delivery(session, inbox, consumer="bustest", event_id=event_id):
                await session.execute(
                    effects.insert().values(event_id=event_id, number=event.number)
                )
            else:
                suppressed.append(event.number)
            if event.number == 2 and first:
                raise ConnectionError("crashed before the commit")  # effect rolled back
            await session.commit()
        if event.number == 1 and first:
            raise ConnectionError("crashed after the commit, before the ack")  # redelivered

    # when the consumer runs until every event was redelivered where it failed
    consumer = bus.consumer(handler, retry_delay=0.05)
    try:
        await _consume_until(consumer, lambda: deliveries == Counter({0: 1, 1: 2, 2: 2}))
        await consumer.process_batch()
    finally:
        await consumer.close()
    async with sessions() as session:
        applied = (await session.execute(select(effects.c.number).order_by(effects.c.number))).all()
        remembered = await session.scalar(select(func.count()).select_from(inbox))
    await engine.dispose()

    # then each effect happened once; the redelivery after the commit was suppressed
    assert deliveries == Counter({0: 1, 1: 2, 2: 2})
    assert [number for (number,) in applied] == [0, 1, 2]
    assert suppressed == [1]
    assert remembered == 3


async def test_a_message_that_keeps_failing_is_terminated_after_max_deliver(bus: Bus) -> None:
    # given a poison event followed by a good one
    publisher = bus.publisher()
    try:
        await publisher.publish(_message(0))
        await publisher.publish(_message(1))
    finally:
        await publisher.close()
    attempts: Counter[int] = Counter()

    async def handler(event: BusProbe, _event_id: str) -> None:
        attempts[event.number] += 1
        if event.number == 0:
            raise ValueError("this handler cannot take event 0")

    # when the consumer runs with at most three deliveries
    consumer = bus.consumer(handler, max_deliver=3, retry_delay=0.02)
    try:
        await _consume_until(consumer, lambda: attempts[0] >= 3 and attempts[1] >= 1)
        for _ in range(3):  # give a fourth delivery every chance to come
            await consumer.process_batch()
    finally:
        await consumer.close()

    # then the poison event was tried three times and then given up; the other went through
    assert attempts == Counter({0: 3, 1: 1})
    info = await bus.client.jetstream().consumer_info(bus.stream, "probe-consumer")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_consumer_stops_gracefully(bus: Bus) -> None:
    # given a running consumer
    handled: list[str] = []

    async def handler(_event: object, event_id: str) -> None:
        handled.append(event_id)

    consumer = bus.consumer(handler)
    task = asyncio.create_task(consumer.run_until_stopped())
    publisher = bus.publisher()
    try:
        message = _message(5)
        await publisher.publish(message)
        deadline = time.monotonic() + 5
        while not handled:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        await publisher.close()
        # when it is told to stop
        consumer.stop()
        await asyncio.wait_for(task, timeout=5)

    # then it finished (within a fetch wait) and the message was acked
    assert handled == [message.event_id]
    assert task.exception() is None
    info = await bus.client.jetstream().consumer_info(bus.stream, "probe-consumer")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_an_unreachable_bus_leaves_the_outbox_rows_pending(sqlite_url: str) -> None:
    # given a committed event and a bus URL nobody listens on
    table = outbox_table(MetaData(), "bustest")
    engine = create_engine(sqlite_url)
    async with engine.begin() as connection:
        await connection.run_sync(table.metadata.create_all)
    sessions = session_factory(engine)
    async with sessions() as session:
        await record(session, table, BusProbe(1), subject="probe.created")
        await session.commit()
    publisher = JetStreamPublisher(f"nats://127.0.0.1:{free_port()}")

    # when the relay tries to publish it
    try:
        with pytest.raises(PublishFailed) as failure:
            await OutboxRelay([OutboxSource(sessions, table)], publisher).drain_once()
    finally:
        await publisher.close()
    async with sessions() as session:
        rows = (await session.execute(select(table.c.published_at, table.c.attempts))).all()
    await engine.dispose()

    # then the row is still pending, with the failed attempt counted
    assert isinstance(failure.value.__cause__, BusError)
    assert [tuple(row) for row in rows] == [(None, 1)]
