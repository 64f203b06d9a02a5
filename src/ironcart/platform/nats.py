"""NATS JetStream: the relay's publisher and a durable pull-consumer runner.

Every event goes to one stream (`IRONCART`, subjects `ironcart.>`, file storage) with two
headers: `Nats-Msg-Id` = the outbox event id, so a republish inside the stream's
duplicate window (at least two minutes) is stored once, and `Ironcart-Event-Type`, the
name `decode_event` needs. An outbox row's `subject` is relative to the prefix
(`ordering.order_placed` goes out as `ironcart.ordering.order_placed`); a subject that
already starts with the prefix is used as it is.

`JetStreamConsumer` fetches batches from a durable pull consumer, decodes each message and
awaits `handler(event, event_id)`; it acks after the handler returned, naks with a growing
delay when it raised, and terminates a message (logged) after `max_deliver` attempts. The
handler keeps an inbox (`platform.inbox`) in the same transaction as its effect, which
turns JetStream's at-least-once delivery into exactly-once effects.

Errors: `BusError` (connecting or publishing failed; the relay retries the row later).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from prometheus_client import Counter

from ironcart.platform.outbox import decode_event
from ironcart.platform.relay import OutboxMessage

DEFAULT_STREAM = "IRONCART"
DEFAULT_SUBJECT_PREFIX = "ironcart"
DUPLICATE_WINDOW_SECONDS = 120.0
MSG_ID_HEADER = "Nats-Msg-Id"
EVENT_TYPE_HEADER = "Ironcart-Event-Type"
_NATS_ERRORS = (nats.errors.Error, OSError, TimeoutError)

_log = structlog.get_logger("ironcart.nats")

DUPLICATES = Counter(
    "ironcart_bus_duplicates_suppressed_total",
    "Publishes JetStream stored no second time (same Nats-Msg-Id inside the window).",
)
CONSUMED = Counter(
    "ironcart_bus_messages_consumed_total",
    "Messages a consumer finished with, by consumer and outcome (acked, retried, terminated).",
    ["consumer", "outcome"],
)

EventHandler = Callable[[Any, str], Awaitable[None]]


class BusError(Exception):
    """The bus could not be reached, or did not acknowledge a publish in time."""


def bus_subject(prefix: str, subject: str) -> str:
    """`<prefix>.<subject>`, unless `subject` already carries the prefix."""
    return subject if subject.startswith(f"{prefix}.") else f"{prefix}.{subject}"


async def connect(url: str, *, name: str) -> Client:
    """A connection that gives up after a few seconds, so the caller's backoff applies."""
    client = Client()

    async def on_error(error: Exception) -> None:
        _log.warning("nats_error", connection=name, error=repr(error))

    async def on_disconnected() -> None:
        if not client.is_closed:  # closing on purpose is not worth a warning
            _log.warning("nats_disconnected", connection=name)

    async def on_reconnected() -> None:
        _log.info("nats_reconnected", connection=name)

    try:
        await client.connect(
            url,
            name=name,
            connect_timeout=2,
            reconnect_time_wait=1,
            max_reconnect_attempts=3,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )
    except _NATS_ERRORS as error:
        raise BusError(f"cannot connect to NATS at {url}: {error!r}") from error
    return client


async def ensure_stream(
    js: JetStreamContext,
    *,
    stream: str = DEFAULT_STREAM,
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
    duplicate_window: float = DUPLICATE_WINDOW_SECONDS,
) -> None:
    """Create the stream, or widen an existing one's duplicate window to `duplicate_window`."""
    config = StreamConfig(
        name=stream,
        subjects=[f"{subject_prefix}.>"],
        storage=StorageType.FILE,
        duplicate_window=duplicate_window,
    )
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:  # another process created it meanwhile
            await js.stream_info(stream)
        return
    if info.config.duplicate_window < duplicate_window:
        await js.update_stream(info.config.evolve(duplicate_window=duplicate_window))


class JetStreamPublisher:
    """Publishes outbox messages to a JetStream stream and waits for each PubAck."""

    def __init__(
        self,
        bus: str | Client,
        *,
        stream: str = DEFAULT_STREAM,
        subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
        timeout: float = 5.0,
        duplicate_window: float = DUPLICATE_WINDOW_SECONDS,
    ) -> None:
        self._url = bus if isinstance(bus, str) else None
        self._nc: Client | None = None if isinstance(bus, str) else bus
        self._js: JetStreamContext | None = None
        self._stream = stream
        self._prefix = subject_prefix
        self._timeout = timeout
        self._duplicate_window = duplicate_window

    async def publish(self, message: OutboxMessage) -> None:
        js = await self._jetstream()
        headers = {MSG_ID_HEADER: message.event_id, EVENT_TYPE_HEADER: message.event_type}
        try:
            ack = await js.publish(
                bus_subject(self._prefix, message.subject),
                message.payload.encode(),
                timeout=self._timeout,
                stream=self._stream,
                headers=headers,
            )
        except _NATS_ERRORS as error:
            self._js = None  # check the stream again before the next attempt
            raise BusError(f"publishing {message.event_id} failed: {error!r}") from error
        if ack.duplicate:
            DUPLICATES.inc()
            _log.info("bus_duplicate_suppressed", event_id=message.event_id, seq=message.seq)

    async def _jetstream(self) -> JetStreamContext:
        if self._js is not None and self._nc is not None and not self._nc.is_closed:
            return self._js
        if self._url is not None and (self._nc is None or self._nc.is_closed):
            self._nc = await connect(self._url, name="ironcart-relay")
        if self._nc is None:  # pragma: no cover - an unowned connection is always set
            raise BusError("no NATS connection")
        js = self._nc.jetstream(timeout=self._timeout)
        try:
            await ensure_stream(
                js,
                stream=self._stream,
                subject_prefix=self._prefix,
                duplicate_window=self._duplicate_window,
            )
        except _NATS_ERRORS as error:
            raise BusError(f"stream {self._stream} unavailable: {error!r}") from error
        self._js = js
        return js

    async def close(self) -> None:
        """Close the connection if this publisher opened it."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and self._url is not None and not nc.is_closed:
            await nc.close()


class JetStreamConsumer:
    """A durable pull consumer: fetch, decode, `await handler(event, event_id)`, then ack."""

    def __init__(
        self,
        bus: str | Client,
        *,
        durable: str,
        handler: EventHandler,
        subjects: Sequence[str] = (">",),
        stream: str = DEFAULT_STREAM,
        subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
        batch_size: int = 100,
        fetch_wait: float = 1.0,
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
    ) -> None:
        self._url = bus if isinstance(bus, str) else None
        self._nc: Client | None = None if isinstance(bus, str) else bus
        self._durable = durable
        self._handler = handler
        self._subjects = [bus_subject(subject_prefix, subject) for subject in subjects]
        self._stream = stream
        self._prefix = subject_prefix
        self._batch_size = batch_size
        self._fetch_wait = fetch_wait
        self._ack_wait = ack_wait
        self._max_deliver = max_deliver
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Connect, make sure the stream and the durable consumer exist, subscribe."""
        await self._subscribe()

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        if self._url is not None and (self._nc is None or self._nc.is_closed):
            self._nc = await connect(self._url, name=f"ironcart-consumer-{self._durable}")
        if self._nc is None:  # pragma: no cover - an unowned connection is always set
            raise BusError("no NATS connection")
        js = self._nc.jetstream()
        try:
            await ensure_stream(js, stream=self._stream, subject_prefix=self._prefix)
            subscription = await js.pull_subscribe(
                self._subjects[0], durable=self._durable, stream=self._stream, config=self._config()
            )
        except _NATS_ERRORS as error:
            raise BusError(f"cannot subscribe {self._durable}: {error!r}") from error
        self._subscription = subscription
        return subscription

    def _config(self) -> ConsumerConfig:
        # filter_subjects (several) needs nats-server 2.10; one subject works everywhere.
        several = len(self._subjects) > 1
        return ConsumerConfig(
            durable_name=self._durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait,
            max_deliver=self._max_deliver,
            filter_subject=None if several else self._subjects[0],
            filter_subjects=self._subjects if several else None,
        )

    async def process_batch(self) -> int:
        """Fetch up to one batch (waiting at most `fetch_wait`) and handle it; messages handled."""
        subscription = self._subscription or await self._subscribe()
        try:
            messages = await subscription.fetch(self._batch_size, timeout=self._fetch_wait)
        except TimeoutError:  # nothing to fetch (nats-py raises its own or asyncio's)
            return 0
        for message in messages:
            await self._handle(message)
        return len(messages)

    async def _handle(self, message: Msg) -> None:
        headers = message.headers or {}
        event_id = headers.get(MSG_ID_HEADER)
        event_type = headers.get(EVENT_TYPE_HEADER, "")
        try:
            event = decode_event(event_type, message.data)
        except (KeyError, TypeError, ValueError):
            await self._terminate(message, "bus_message_undecodable", event_type, event_id)
            return
        if event_id is None:
            await self._terminate(message, "bus_message_without_id", event_type, event_id)
            return
        try:
            await self._handler(event, event_id)
        except Exception:  # noqa: BLE001 - the consumer's edge: handler errors are retried
            await self._retry_or_give_up(message, event_type, event_id)
            return
        await message.ack()
        CONSUMED.labels(consumer=self._durable, outcome="acked").inc()

    async def _retry_or_give_up(self, message: Msg, event_type: str, event_id: str) -> None:
        attempt = message.metadata.num_delivered
        if attempt >= self._max_deliver:
            await self._terminate(
                message, "bus_handler_gave_up", event_type, event_id, handler_failed=True
            )
            return
        delay = min(self._max_retry_delay, self._retry_delay * 2 ** (attempt - 1))
        _log.warning(
            "bus_handler_failed",
            consumer=self._durable,
            event_type=event_type,
            event_id=event_id,
            attempt=attempt,
            retry_in=delay,
            exc_info=True,
        )
        await message.nak(delay=delay)
        CONSUMED.labels(consumer=self._durable, outcome="retried").inc()

    async def _terminate(
        self,
        message: Msg,
        reason: str,
        event_type: str,
        event_id: str | None,
        *,
        handler_failed: bool = False,
    ) -> None:
        """Never deliver `message` again; logged as an error (someone has to look at it)."""
        _log.error(
            reason,
            consumer=self._durable,
            event_type=event_type,
            event_id=event_id,
            attempts=message.metadata.num_delivered,
            exc_info=handler_failed,
        )
        await message.term()
        CONSUMED.labels(consumer=self._durable, outcome="terminated").inc()

    def stop(self) -> None:
        """Finish the batch in hand, then leave `run_until_stopped`."""
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        """Process batches until `stop()`; bus errors are logged and retried with a backoff."""
        failures = 0
        while not self._stopping.is_set():
            try:
                await self.process_batch()
            except (BusError, *_NATS_ERRORS) as error:
                failures += 1
                delay = min(self._max_retry_delay, self._retry_delay * 2 ** (failures - 1))
                _log.warning("bus_consumer_round_failed", consumer=self._durable, error=repr(error))
                self._subscription = None  # subscribe again (the connection may be new)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            else:
                failures = 0
        await self.close()

    async def close(self) -> None:
        """Send the acks still buffered; close the connection if this consumer opened it."""
        subscription, self._subscription = self._subscription, None
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        with contextlib.suppress(*_NATS_ERRORS):
            if subscription is not None:
                await subscription.unsubscribe()
            await nc.flush()
        if self._url is not None:
            self._nc = None
            await nc.close()
