"""The outbox relay: publishes committed outbox rows to the bus, in `seq` order, at least once.

One round, per source (an outbox table and the database it lives in): claim a batch of
unpublished rows in `seq` order, publish each, mark the published ones, commit. A publish
failure stops the batch at that row (later rows are not published past it), adds one to
its `attempts`, and the relay backs off; the row goes out on a later round. No row is
lost or skipped, because a round reads `published_at IS NULL` rather than "after the
last seq": a transaction that commits late with a lower seq is still picked up.

At least once by construction: a crash after a publish and before its mark republishes
the row. Exactly once *in effect* through the event id: JetStream drops a repeated
`Nats-Msg-Id` inside its duplicate window, and consumers keep an inbox (`platform.inbox`).

Several relays may run at once on PostgreSQL and MariaDB: the claim is
`FOR UPDATE SKIP LOCKED` (READ COMMITTED, so MariaDB takes no gap locks that would block
the application's inserts), and the locks are held while the batch is published, so a
row is published by one relay in the normal case. Order then holds within each batch,
not across relays. SQLite has a single writer: run one relay; its claim takes no lock and
the read snapshot is released before publishing (so handlers may write meanwhile).

`notify()` wakes a sleeping relay at once: the application calls it after a commit that
recorded events, so in-process latency is milliseconds rather than the poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Protocol

import structlog
from prometheus_client import Counter, Gauge
from sqlalchemy import Row, Table, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ironcart.platform.database import session_factory
from ironcart.platform.events import EventBus
from ironcart.platform.outbox import decode_event

_log = structlog.get_logger("ironcart.relay")

PUBLISHED = Counter(
    "ironcart_outbox_events_published_total",
    "Outbox events published to the bus, by event type.",
    ["event_type"],
)
PUBLISH_FAILURES = Counter(
    "ironcart_outbox_publish_failures_total",
    "Outbox publishes that failed (the row stays unpublished and is retried), by outbox.",
    ["outbox"],
)
PENDING = Gauge(
    "ironcart_outbox_pending",
    "Outbox rows committed and not yet published, by outbox.",
    ["outbox"],
)
LAG = Gauge(
    "ironcart_outbox_lag_seconds",
    "Age of the oldest unpublished outbox row (0 when none), by outbox.",
    ["outbox"],
)
METRICS_INTERVAL_SECONDS = 1.0
PURGE_BATCH_SIZE = 5_000


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One outbox row on its way to the bus; `event_id` is its deduplication id."""

    seq: int
    event_id: str
    event_type: str
    subject: str
    payload: str
    created_at: datetime
    outbox: str


class Publisher(Protocol):
    async def publish(self, message: OutboxMessage) -> None:
        """Deliver `message` or raise; returning means the bus has it."""


@dataclass(frozen=True)
class OutboxSource:
    """An outbox table (`outbox_table`) and the engine or session factory of its database."""

    bind: AsyncEngine | async_sessionmaker[AsyncSession]
    table: Table

    @cached_property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        return session_factory(self.bind) if isinstance(self.bind, AsyncEngine) else self.bind

    @property
    def name(self) -> str:
        return self.table.name


class PublishFailed(Exception):
    """A publish failed: the rows before it were marked, it and the rows after it were not."""

    def __init__(self, outbox: str, seq: int) -> None:
        super().__init__(f"publishing {outbox} seq {seq} failed")
        self.outbox = outbox
        self.seq = seq


@dataclass
class _SourceState:
    failures: int = 0
    retry_at: float = 0.0  # monotonic; the loop leaves a failing source alone until then
    observed_at: float = float("-inf")


_RETRIED = (PublishFailed, SQLAlchemyError, OSError)


class OutboxRelay:
    """Publishes the outboxes of `sources` through `publisher`; see the module docstring.

    Each source backs off on its own: a missing table or a failing publish in one outbox
    does not hold up the others.
    """

    def __init__(
        self,
        sources: Sequence[OutboxSource],
        publisher: Publisher,
        *,
        batch_size: int = 100,
        poll_interval: float = 1.0,
        backoff_base: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._sources = list(sources)
        self._publisher = publisher
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._backoff_base = backoff_base
        self._max_backoff = max_backoff
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._state = {source.name: _SourceState() for source in self._sources}

    @property
    def sources(self) -> list[OutboxSource]:
        return list(self._sources)

    def notify(self) -> None:
        """Events were committed: run a round now instead of at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the batch in hand and leave `run_until_stopped`."""
        self._stopping.set()
        self._wake.set()

    async def run_until_stopped(self) -> None:
        """Relay rounds until `stop()`: after each, sleep the poll interval or until notified."""
        _log.info("outbox_relay_started", outboxes=[source.name for source in self._sources])
        while not self._stopping.is_set():
            self._wake.clear()  # a notify() during the round below triggers the next one
            await self._round(respect_backoff=True)
            await _wait(self._wake, self._next_round_in())
        _log.info("outbox_relay_stopped")

    async def drain_once(self) -> int:
        """Publish every committed, unpublished row of every source; the number published.

        A failure in one source (`PublishFailed`, a database error) is raised after the
        other sources were drained.
        """
        published, failure = await self._round(respect_backoff=False)
        if failure is not None:
            raise failure
        return published

    async def _round(self, *, respect_backoff: bool) -> tuple[int, Exception | None]:
        published = 0
        failure: Exception | None = None
        for source in self._sources:
            state = self._state[source.name]
            if respect_backoff and time.monotonic() < state.retry_at:
                continue  # backing off: a notify() must not cut that short
            try:
                published += await self._drain(source)
            except _RETRIED as error:
                self._failed(source, state, error)
                failure = failure or error
            else:
                state.failures = 0
            with contextlib.suppress(SQLAlchemyError, OSError):  # the drain logged the cause
                await self._observe(source, state)
        return published, failure

    def _failed(self, source: OutboxSource, state: _SourceState, error: Exception) -> None:
        state.failures += 1
        delay = min(self._max_backoff, self._backoff_base * 2 ** (state.failures - 1))
        state.retry_at = time.monotonic() + delay
        _log.warning(
            "outbox_relay_failed",
            outbox=source.name,
            error=str(error),
            failures=state.failures,
            retry_in=delay,
        )

    def _next_round_in(self) -> float:
        now = time.monotonic()
        retries = [state.retry_at - now for state in self._state.values() if state.failures]
        return max(0.0, min([self._poll_interval, *retries]))

    async def _drain(self, source: OutboxSource) -> int:
        published = 0
        while not self._stopping.is_set():
            claimed, count = await self._relay_batch(source)
            published += count
            if claimed < self._batch_size:
                break
        return published

    async def _relay_batch(self, source: OutboxSource) -> tuple[int, int]:
        """Claim, publish and mark one batch; (rows claimed, rows published)."""
        async with source.sessions() as session:
            single_writer = await _begin(session)
            rows = await self._claim(session, source.table, lock=not single_writer)
            if single_writer:
                await session.commit()  # no snapshot held while handlers may write
            messages = [_message(row, source.name) for row in rows]
            published, failure = await self._publish(messages)
            await _mark(session, source.table, published, failed=failure)
            await session.commit()
        if failure is not None:
            PUBLISH_FAILURES.labels(outbox=source.name).inc()
            raise PublishFailed(source.name, failure.seq) from failure.error
        return len(rows), len(published)

    async def _claim(self, session: AsyncSession, table: Table, *, lock: bool) -> list[Row[Any]]:
        query = (
            select(table)
            .where(table.c.published_at.is_(None))
            .order_by(table.c.seq)
            .limit(self._batch_size)
        )
        if lock:
            query = query.with_for_update(skip_locked=True)
        return list((await session.execute(query)).all())

    async def _publish(
        self, messages: Sequence[OutboxMessage]
    ) -> tuple[list[OutboxMessage], _Failure | None]:
        published: list[OutboxMessage] = []
        for message in messages:
            try:
                await self._publisher.publish(message)
            except Exception as error:  # noqa: BLE001 - any publisher failure is retried later
                return published, _Failure(message.seq, error)
            PUBLISHED.labels(event_type=message.event_type).inc()
            published.append(message)
        return published, None

    async def _observe(self, source: OutboxSource, state: _SourceState) -> None:
        """Refresh the pending and lag gauges, at most once a second per outbox."""
        if time.monotonic() - state.observed_at < METRICS_INTERVAL_SECONDS:
            return
        state.observed_at = time.monotonic()
        table = source.table
        async with source.sessions() as session:
            count, oldest = (
                await session.execute(
                    select(func.count(), func.min(table.c.created_at)).where(
                        table.c.published_at.is_(None)
                    )
                )
            ).one()
        PENDING.labels(outbox=source.name).set(count)
        age = (datetime.now(UTC) - _aware(oldest)).total_seconds() if oldest is not None else 0.0
        LAG.labels(outbox=source.name).set(max(age, 0.0))

    async def purge_published(self, *, older_than: timedelta) -> int:
        """Retention: delete rows published more than `older_than` ago; the number deleted."""
        before = datetime.now(UTC) - older_than
        return sum([await purge_published(source, before=before) for source in self._sources])


@dataclass(frozen=True, slots=True)
class _Failure:
    seq: int
    error: Exception


async def purge_published(source: OutboxSource, *, before: datetime) -> int:
    """Delete the rows of one outbox published before `before`, in short batches."""
    table = source.table
    deleted = 0
    while True:
        async with source.sessions() as session:
            seqs = (
                await session.scalars(
                    select(table.c.seq)
                    .where(table.c.published_at.is_not(None), table.c.published_at < before)
                    .order_by(table.c.seq)
                    .limit(PURGE_BATCH_SIZE)
                )
            ).all()
            if not seqs:
                return deleted
            await session.execute(delete(table).where(table.c.seq.in_(seqs)))
            await session.commit()
        deleted += len(seqs)


async def _begin(session: AsyncSession) -> bool:
    """Start the relay's transaction; True on a single-writer database (SQLite)."""
    bind = session.bind
    if bind is None or bind.dialect.name == "sqlite":
        return True
    # READ COMMITTED: MariaDB's REPEATABLE READ would gap-lock the claimed index range and
    # hold up the application's inserts into the outbox while the batch is published.
    await session.connection(execution_options={"isolation_level": "READ COMMITTED"})
    return False


async def _mark(
    session: AsyncSession,
    table: Table,
    published: Sequence[OutboxMessage],
    *,
    failed: _Failure | None,
) -> None:
    if published:
        await session.execute(
            update(table)
            .where(table.c.seq.in_([message.seq for message in published]))
            .values(published_at=datetime.now(UTC))
        )
    if failed is not None:
        await session.execute(
            update(table).where(table.c.seq == failed.seq).values(attempts=table.c.attempts + 1)
        )


def _message(row: Row[Any], outbox: str) -> OutboxMessage:
    return OutboxMessage(
        seq=row.seq,
        event_id=row.event_id,
        event_type=row.event_type,
        subject=row.subject,
        payload=row.payload,
        created_at=_aware(row.created_at),
        outbox=outbox,
    )


def _aware(value: datetime) -> datetime:
    """SQLite and MariaDB hand timestamps back naive; they are stored in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` have passed, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)


class InProcessPublisher:
    """Hands each event to the in-process `EventBus` subscribers (embedded mode, no broker).

    An event whose type this process does not know, or whose payload does not decode, is
    logged and counted as published: one bad row must not hold up the whole outbox.
    """

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus

    async def publish(self, message: OutboxMessage) -> None:
        try:
            event = decode_event(message.event_type, message.payload)
        except KeyError:
            _log.warning(
                "outbox_event_type_unknown",
                event_type=message.event_type,
                event_id=message.event_id,
                outbox=message.outbox,
            )
            return
        except (TypeError, ValueError):
            _log.exception(
                "outbox_event_undecodable",
                event_type=message.event_type,
                event_id=message.event_id,
                outbox=message.outbox,
            )
            return
        await self._bus.publish([event])
