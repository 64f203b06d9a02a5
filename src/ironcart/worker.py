"""The background worker: each context's periodic jobs and the outbox relay, until SIGTERM/SIGINT.

The relay publishes every registered outbox (`Container.outbox_sources`, plus
`IRONCART_RELAY__EXTRA_OUTBOX_PREFIXES`) to NATS JetStream when `IRONCART_BUS_URL` is set,
else to the in-process event bus. `ironcart relay` runs the relay alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import MetaData

from ironcart.bootstrap import Container, bootstrap
from ironcart.cart.domain import ABANDONED_AFTER
from ironcart.contracts.shipping import ShipmentCreated, ShipmentDelivered
from ironcart.platform.nats import JetStreamConsumer, JetStreamPublisher
from ironcart.platform.outbox import outbox_table
from ironcart.platform.relay import (
    InProcessPublisher,
    OutboxRelay,
    OutboxSource,
    Publisher,
    purge_published,
)
from ironcart.platform.settings import Settings

_log = structlog.get_logger("ironcart.worker")
HOUSEKEEPING_INTERVAL_SECONDS = 300.0
# Expired reservations hold sellable stock: give it back within seconds, not minutes.
RESERVATION_EXPIRY_INTERVAL_SECONDS = 5.0
# Payments left authorizing/capturing (unknown outcome at the PSP) are settled this often.
PAYMENT_RECONCILE_INTERVAL_SECONDS = 30.0
# A full re-read of availability for the catalog's read model: a repair, not a feed.
AVAILABILITY_SYNC_INTERVAL_SECONDS = 3600.0
# Cancelled paid orders whose refund or restock did not finish are retried this often.
CANCELLATION_INTERVAL_SECONDS = 30.0
# Shipments left without a carrier label (carrier down, or a crash) are asked for this often.
SHIPMENT_RESUME_INTERVAL_SECONDS = 30.0


async def run_worker(
    settings: Settings,
    *,
    interval: float = HOUSEKEEPING_INTERVAL_SECONDS,
    expiry_interval: float = RESERVATION_EXPIRY_INTERVAL_SECONDS,
) -> None:
    container = bootstrap(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    _log.info("worker_started", interval_seconds=interval)
    try:
        await run_background_jobs(
            container, stop, interval=interval, expiry_interval=expiry_interval
        )
    finally:
        await container.aclose()
        _log.info("worker_stopped")


async def run_background_jobs(
    container: Container,
    stop: asyncio.Event,
    *,
    contexts: Collection[str] | None = None,
    interval: float = HOUSEKEEPING_INTERVAL_SECONDS,
    expiry_interval: float = RESERVATION_EXPIRY_INTERVAL_SECONDS,
) -> None:
    """The periodic jobs and the relay of `contexts` (None: every context) until `stop` is
    set: the worker, `serve` in-process, or `serve --service <context>` with its own jobs only,
    so that four catalog instances do not also run four payment reconciliations.

    Safe to run in several processes at once: the jobs claim their rows (SKIP LOCKED where
    the database has it) and every step they take is idempotent.
    """
    jobs = [
        start()
        for context, start in _scheduled_jobs(container, stop, interval, expiry_interval)
        if contexts is None or context in contexts
    ]
    sources = relayed_sources(container, contexts)
    if not sources:
        await asyncio.gather(*jobs)
        return

    async def purge_published_outbox(container: Container) -> None:
        await _purge_published(container, sources)

    async with open_relay(container, sources) as relay:
        container.outbox_wakeups.append(relay.notify)
        try:
            await asyncio.gather(
                *jobs,
                _periodically(stop, interval, purge_published_outbox, container),
                _relay_until(stop, relay),
            )
        finally:
            container.outbox_wakeups.remove(relay.notify)


def _scheduled_jobs(
    container: Container, stop: asyncio.Event, interval: float, expiry_interval: float
) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    """(the context whose data the job looks after, how to start it)."""
    ordering = container.settings.ordering

    def every(
        seconds: float, job: Callable[[Container], Awaitable[None]], first_after: float = 0.0
    ) -> Callable[[], Awaitable[None]]:
        return lambda: _periodically(stop, seconds, job, container, first_after=first_after)

    jobs: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("identity", every(interval, _identity_housekeeping)),
        ("inventory", every(expiry_interval, _release_expired_reservations)),
        ("cart", every(interval, _purge_abandoned_carts)),
        ("payments", every(PAYMENT_RECONCILE_INTERVAL_SECONDS, _reconcile_payments)),
        ("ordering", every(ordering.recovery_interval_seconds, _recover_checkouts)),
        ("ordering", every(CANCELLATION_INTERVAL_SECONDS, _finish_cancellations)),
        ("ordering", every(interval, _purge_idempotency_keys)),
        ("ordering", lambda: _consume_bus_until(stop, container)),
        ("shipping", every(SHIPMENT_RESUME_INTERVAL_SECONDS, _resume_shipments)),
        (
            "catalog",
            every(
                AVAILABILITY_SYNC_INTERVAL_SECONDS,
                _sync_catalog_availability,
                first_after=AVAILABILITY_SYNC_INTERVAL_SECONDS,
            ),
        ),
    ]
    if container.xa is not None:  # XA checkout (`IRONCART_CHECKOUT_TXN=xa`): its recovery
        jobs.append(
            ("ordering", every(container.settings.xa.recovery_interval_seconds, _recover_xa))
        )
    return jobs


async def _consume_bus_until(stop: asyncio.Event, container: Container) -> None:
    """With NATS JetStream: the events other contexts consume from the bus (a durable
    consumer shared by every process, so each event is handled by one of them; a failed
    handler is redelivered). In-process, the relay hands them to the bus subscribers."""
    settings = container.settings
    if not settings.bus_url:
        return
    ordering = container.ordering
    handlers: dict[type, Callable[[Any], Awaitable[None]]] = {
        ShipmentCreated: ordering.on_shipment_created,
        ShipmentDelivered: ordering.on_shipment_delivered,
    }

    async def handle(event: Any, _event_id: str) -> None:
        handler = handlers.get(type(event))
        if handler is not None:
            await handler(event)

    consumer = JetStreamConsumer(
        settings.bus_url,
        durable="ironcart-ordering-fulfilment",
        handler=handle,
        subjects=("shipping.>",),
        stream=settings.relay.stream,
        subject_prefix=settings.relay.subject_prefix,
        # An order must not miss its shipments: keep retrying (backoff up to a minute) for
        # about a week rather than give up after a few attempts; the errors are logged.
        max_deliver=10_000,
        max_retry_delay=60.0,
    )
    try:
        # No separate start(): the first batch subscribes, inside the retried loop, so a
        # bus that is down at start-up delays this consumer only, not the other jobs.
        consuming = asyncio.create_task(consumer.run_until_stopped())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({consuming, stopping}, return_when=asyncio.FIRST_COMPLETED)
        consumer.stop()
        stopping.cancel()
        await consuming
    finally:
        await consumer.close()


async def _recover_checkouts(container: Container) -> None:
    """Drive in-doubt and unfinished checkouts (TCC) to their end."""
    while recovered := await container.coordinator.recover(limit=100):
        _log.info("tcc_recovered", transactions=recovered)
        if recovered < 100:
            break


async def _recover_xa(container: Container) -> None:
    """Finish in-doubt and prepared XA transactions, and follow up decided ones (capture or
    void their payments)."""
    assert container.xa is not None  # noqa: S101 - scheduled only in XA mode
    while True:
        report = await container.xa.recover(limit=100)
        if report.claimed or report.committed_branches or report.rolled_back_branches:
            _log.info("xa_recovered", **dataclasses.asdict(report))
        if report.claimed < 100:
            break


async def _sync_catalog_availability(container: Container) -> None:
    """Repair the catalog's availability read model from inventory (a missed StockChanged)."""
    inventory = container.inventory
    synced = await container.catalog.sync_availability(
        availability=lambda skus: inventory.availability(skus=skus)
    )
    _log.info("catalog_availability_synced", skus=synced)


async def _resume_shipments(container: Container) -> None:
    """Shipments left without a label (carrier down, or a crash): ask the carrier again."""
    after = container.settings.shipping.resume_after_seconds
    settled = await container.shipping.resume_requested(older_than_seconds=after, limit=100)
    if settled:
        _log.info("shipping_shipments_resumed", settled=settled)


async def _finish_cancellations(container: Container) -> None:
    finished = await container.ordering.finish_cancellations()
    if finished:
        _log.info("ordering_cancellations_finished", orders=finished)


async def _purge_idempotency_keys(container: Container) -> None:
    purged = await container.ordering.purge_idempotency_keys()
    if purged:
        _log.info("ordering_idempotency_keys_purged", keys=purged)


async def _periodically(
    stop: asyncio.Event,
    interval: float,
    job: Callable[[Container], Awaitable[None]],
    container: Container,
    *,
    first_after: float = 0.0,
) -> None:
    if first_after:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=first_after)
    while not stop.is_set():
        try:
            await job(container)
        except Exception:  # noqa: BLE001 - a failed round is logged and retried next interval
            _log.exception(f"{job.__name__.strip('_')}_failed")
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            continue


async def _identity_housekeeping(container: Container) -> None:
    tokens, keys = await container.identity.purge_expired()
    _log.info("identity_housekeeping", refresh_tokens_deleted=tokens, keys_deleted=keys)


async def _release_expired_reservations(container: Container) -> None:
    released = await container.inventory.release_expired()
    if released:
        _log.info("inventory_reservations_released", expired=released)


async def _purge_abandoned_carts(container: Container) -> None:
    purged = await container.cart.purge_abandoned(before=datetime.now(UTC) - ABANDONED_AFTER)
    if purged:
        _log.info("cart_abandoned_purged", carts=purged)


def outbox_sources(container: Container) -> list[OutboxSource]:
    """The contexts' outboxes, and the extra ones named in the settings (tests, operations)."""
    return relayed_sources(container, None)


def relayed_sources(container: Container, contexts: Collection[str] | None) -> list[OutboxSource]:
    """The outboxes of `contexts` (`<context>_outbox`; None: every context's) and the extra
    ones named in the settings, which every relay publishes."""
    extra = [
        OutboxSource(container.engine, outbox_table(MetaData(), prefix))
        for prefix in container.settings.relay.extra_outbox_prefixes
    ]
    own = [
        source
        for source in container.outbox_sources
        if contexts is None or source.name.removesuffix("_outbox") in contexts
    ]
    return [*own, *extra]


@asynccontextmanager
async def open_relay(
    container: Container, sources: list[OutboxSource] | None = None
) -> AsyncIterator[OutboxRelay]:
    """The relay over `sources` (default: every outbox): to JetStream when a bus URL is set,
    else in-process."""
    settings = container.settings
    jetstream = (
        JetStreamPublisher(
            settings.bus_url,
            stream=settings.relay.stream,
            subject_prefix=settings.relay.subject_prefix,
        )
        if settings.bus_url
        else None
    )
    publisher: Publisher = jetstream or InProcessPublisher(container.bus)
    relay = OutboxRelay(
        outbox_sources(container) if sources is None else sources,
        publisher,
        batch_size=settings.relay.batch_size,
        poll_interval=settings.relay.poll_interval_seconds,
    )
    try:
        yield relay
    finally:
        if jetstream is not None:
            await jetstream.close()


async def run_relay(settings: Settings, *, once: bool = False) -> int:
    """Only the relay: until SIGTERM/SIGINT, or one drain with `once`; the number published."""
    container = bootstrap(settings)
    try:
        async with open_relay(container) as relay:
            if once:
                return await relay.drain_once()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, relay.stop)
            await relay.run_until_stopped()
            return 0
    finally:
        await container.aclose()


async def _relay_until(stop: asyncio.Event, relay: OutboxRelay) -> None:
    """Relay until the worker stops (the batch in hand is finished first)."""
    stopping = asyncio.create_task(stop.wait())
    relaying = asyncio.create_task(relay.run_until_stopped())
    await asyncio.wait({stopping, relaying}, return_when=asyncio.FIRST_COMPLETED)
    relay.stop()
    stopping.cancel()
    await relaying


async def _purge_published(container: Container, sources: list[OutboxSource]) -> None:
    before = datetime.now(UTC) - timedelta(days=container.settings.relay.retention_days)
    for source in sources:
        deleted = await purge_published(source, before=before)
        if deleted:
            _log.info("outbox_published_purged", outbox=source.name, rows=deleted)


async def _reconcile_payments(container: Container) -> None:
    after = container.settings.payments.reconcile_after_seconds
    settled = await container.payments.reconcile_pending(older_than_seconds=after)
    if settled:
        _log.info("payments_reconciled", settled=settled)
