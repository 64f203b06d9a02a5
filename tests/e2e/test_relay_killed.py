"""Acceptance: every published event reaches a NATS JetStream consumer exactly once in effect,
including after the relay is killed mid-batch.

3,000 events are committed to an outbox on PostgreSQL. The real `ironcart relay` process
publishes them to a JetStream stream of this test's own; it is `kill -9`ed by pid several
times while it publishes, and started again each time, until the outbox is drained. A
durable consumer, pulled by four instances in this process, applies each event through an
inbox on PostgreSQL (one transaction: inbox row + effect row). It also loses one ack in 250
after its commit (raises, so the message is redelivered, possibly to another instance), so
that the inbox has work to do too.

Checked: the stream holds exactly 3,000 messages, the effects table exactly 3,000 rows, one
per event; at least one kill left published-but-unmarked rows behind (a real mid-batch
kill) and their republishes were suppressed by JetStream (`Nats-Msg-Id`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import anyio
import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from sqlalchemy import Column, Integer, MetaData, Select, String, Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ironcart.platform.database import create_engine, session_factory
from ironcart.platform.inbox import first_delivery, inbox_table
from ironcart.platform.nats import EventHandler, JetStreamConsumer
from ironcart.platform.outbox import outbox_table, record, register_event
from tests.support.server import IRONCART, server_environment

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
_log = logging.getLogger(__name__)

EVENTS = 3_000
KILLS = 3
MAX_KILLS = 8
PUBLISHES_BETWEEN_KILLS = 400
LOST_ACK_EVERY = 250
CONSUMER_INSTANCES = 4
DEADLINE_SECONDS = 55.0


@register_event
@dataclass(frozen=True, slots=True)
class RelayKillProbe:
    number: int


@dataclass
class Store:
    sessions: async_sessionmaker[AsyncSession]
    outbox: Table
    inbox: Table
    effects: Table

    async def scalar(self, query: Select[int]) -> int:
        async with self.sessions() as session:
            return int(await session.scalar(query) or 0)

    async def marked(self) -> int:
        table = self.outbox
        return await self.scalar(
            select(func.count()).select_from(table).where(table.c.published_at.is_not(None))
        )


@dataclass
class Relays:
    """Every `ironcart relay` process this test started, each with its own stderr file."""

    env: dict[str, str]
    log_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> subprocess.Popen[bytes]:
        path = self.log_dir / f"relay-{len(self.processes)}.stderr.log"
        with path.open("wb") as stderr:
            process = subprocess.Popen(
                [str(IRONCART), "relay"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.processes.append(process)
        return process

    def log_events(self) -> Counter[str]:
        events: Counter[str] = Counter()
        for path in sorted(self.log_dir.glob("relay-*.stderr.log")):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    events[json.loads(line).get("event", "")] += 1
                except (ValueError, AttributeError):
                    continue
        return events

    def assert_running(self) -> None:
        """Fail at once, with its log, if the current relay process died on its own."""
        process = self.processes[-1]
        if process.poll() is not None:
            log = (self.log_dir / f"relay-{len(self.processes) - 1}.stderr.log").read_text()
            raise AssertionError(f"ironcart relay exited with {process.returncode}:\n{log}")

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@dataclass
class Effects:
    """What the consumer saw: deliveries per event, and those its inbox suppressed."""

    deliveries: Counter[int] = field(default_factory=Counter)
    suppressed: int = 0


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[Store]:
    metadata = MetaData()
    effects = Table(
        "relaykill_effects",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False),  # not unique: a double apply would show
        Column("number", Integer, nullable=False),
    )
    store = Store(
        sessions=session_factory(engine := create_engine(postgres_url)),
        outbox=outbox_table(metadata, "relaykill"),
        inbox=inbox_table(metadata, "relaykill"),
        effects=effects,
    )
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    try:
        yield store
    finally:
        await engine.dispose()


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[tuple[Client, str, str]]:
    token = uuid.uuid4().hex[:12]
    client = await nats.connect(nats_url)
    stream = f"RELAYKILL_{token}"
    try:
        yield client, stream, f"relaykill{token}"
    finally:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await client.jetstream().delete_stream(stream)
        await client.close()


async def _record_events(store: Store) -> None:
    for start in range(0, EVENTS, 100):
        async with store.sessions() as session:
            for number in range(start, start + 100):
                await record(session, store.outbox, RelayKillProbe(number), subject="probe")
            await session.commit()


def _handler(store: Store, effects: Effects) -> EventHandler:
    async def apply(event: RelayKillProbe, event_id: str) -> None:
        effects.deliveries[event.number] += 1
        async with store.sessions() as session:
            if await first_delivery(session, store.inbox, consumer="relaykill", event_id=event_id):
                await session.execute(
                    store.effects.insert().values(event_id=event_id, number=event.number)
                )
            else:
                effects.suppressed += 1
            await session.commit()
        if event.number % LOST_ACK_EVERY == 0 and effects.deliveries[event.number] == 1:
            raise ConnectionError("lost the ack after the commit")

    return apply


async def _stored(client: Client, stream: str) -> int:
    try:
        return (await client.jetstream().stream_info(stream)).state.messages
    except nats.js.errors.NotFoundError:
        return 0  # the first relay has not created it yet


async def _wait_for(condition: Callable[[], Awaitable[bool]], relays: Relays) -> None:
    while not await condition():
        relays.assert_running()
        await asyncio.sleep(0.01)


async def test_every_event_is_applied_once_although_the_relay_is_killed_mid_batch(
    store: Store,
    bus: tuple[Client, str, str],
    nats_url: str,
    postgres_url: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    client, stream, prefix = bus
    started = time.monotonic()
    await _record_events(store)
    phases = {"recorded": time.monotonic() - started}
    relays = Relays(
        env=server_environment(
            postgres_url,
            {
                "IRONCART_BUS_URL": nats_url,
                "IRONCART_RELAY__STREAM": stream,
                "IRONCART_RELAY__SUBJECT_PREFIX": prefix,
                "IRONCART_RELAY__EXTRA_OUTBOX_PREFIXES": '["relaykill"]',
                "IRONCART_RELAY__BATCH_SIZE": "50",
                "IRONCART_RELAY__POLL_INTERVAL_SECONDS": "0.2",
            },
        ),
        log_dir=tmp_path,
    )
    effects = Effects()
    consumers = [
        JetStreamConsumer(
            nats_url,
            durable="relaykill",
            handler=_handler(store, effects),
            stream=stream,
            subject_prefix=prefix,
            batch_size=50,
            fetch_wait=0.2,
            retry_delay=0.05,
        )
        for _ in range(CONSUMER_INSTANCES)
    ]
    consuming: list[asyncio.Task[None]] = []
    in_flight_at_kills: list[int] = []
    try:
        with anyio.fail_after(DEADLINE_SECONDS):
            # when the relay runs and is killed -9 every few hundred publishes
            process = relays.start()
            await _wait_for(partial(_has_stream, client, stream), relays)
            consuming = [asyncio.create_task(each.run_until_stopped()) for each in consumers]
            while len(in_flight_at_kills) < MAX_KILLS and (
                len(in_flight_at_kills) < KILLS or not any(in_flight_at_kills)
            ):
                target = await _stored(client, stream) + PUBLISHES_BETWEEN_KILLS
                if target >= EVENTS:
                    break  # not enough left for another kill mid-flight
                await _wait_for(partial(_at_least, client, stream, target), relays)
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
                # published to the stream but not marked in the outbox when it died
                in_flight_at_kills.append(await _stored(client, stream) - await store.marked())
                process = relays.start()

            # then the restarted relay drains the outbox and the consumer catches up
            await _wait_for(partial(_drained, store), relays)
            phases["drained"] = time.monotonic() - started
            await _wait_for(partial(_applied, store), relays)
            await _wait_for(partial(_caught_up, client, stream), relays)
            phases["applied"] = time.monotonic() - started
            process.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(process.wait, 10)
    finally:
        relays.kill_all()
        for each in consumers:
            each.stop()
        await asyncio.wait_for(asyncio.gather(*consuming), timeout=10)
    elapsed = time.monotonic() - started

    relay_suppressed = relays.log_events()["bus_duplicate_suppressed"]
    counts = await _effect_counts(store)
    report = {
        "events": EVENTS,
        "relay_kills": len(in_flight_at_kills),
        "in_flight_at_each_kill": in_flight_at_kills,
        "relay_republishes_suppressed_by_jetstream": relay_suppressed,
        "deliveries_to_consumer": sum(effects.deliveries.values()),
        "redeliveries_suppressed_by_inbox": effects.suppressed,
        "seconds": round(elapsed, 1),
        "seconds_at": {name: round(at, 1) for name, at in phases.items()},
    }
    for name, value in report.items():
        record_property(name, value)
    _log.info("relay kill report: %s", report)

    assert exit_code == 0, relays.log_events()
    assert len(in_flight_at_kills) >= KILLS
    assert any(in_flight_at_kills), f"no kill landed mid-batch: {in_flight_at_kills}"
    assert relay_suppressed > 0
    assert await _stored(client, stream) == EVENTS  # each event stored once by JetStream
    assert counts == (EVENTS, EVENTS, EVENTS, 0, EVENTS - 1)  # each effect applied once
    assert sorted(effects.deliveries) == list(range(EVENTS))
    assert effects.suppressed == sum(effects.deliveries.values()) - EVENTS
    assert effects.suppressed >= EVENTS // LOST_ACK_EVERY
    assert elapsed < 60


async def _has_stream(client: Client, stream: str) -> bool:
    try:
        await client.jetstream().stream_info(stream)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def _at_least(client: Client, stream: str, target: int) -> bool:
    return await _stored(client, stream) >= target


async def _drained(store: Store) -> bool:
    return await store.marked() == EVENTS


async def _applied(store: Store) -> bool:
    return await store.scalar(select(func.count()).select_from(store.effects)) >= EVENTS


async def _caught_up(client: Client, stream: str) -> bool:
    info = await client.jetstream().consumer_info(stream, "relaykill")
    return (info.num_pending, info.num_ack_pending) == (0, 0)


async def _effect_counts(store: Store) -> tuple[int, int, int, int, int]:
    table = store.effects
    async with store.sessions() as session:
        row = (
            await session.execute(
                select(
                    func.count(),
                    func.count(table.c.event_id.distinct()),
                    func.count(table.c.number.distinct()),
                    func.min(table.c.number),
                    func.max(table.c.number),
                )
            )
        ).one()
    return (row[0], row[1], row[2], row[3], row[4])
