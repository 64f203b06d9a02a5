"""The background worker: runs each context's periodic jobs until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

from ironcart.bootstrap import Container, bootstrap
from ironcart.cart.domain import ABANDONED_AFTER
from ironcart.platform.settings import Settings

_log = structlog.get_logger("ironcart.worker")
HOUSEKEEPING_INTERVAL_SECONDS = 300.0
# Expired reservations hold sellable stock: give it back within seconds, not minutes.
RESERVATION_EXPIRY_INTERVAL_SECONDS = 5.0


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
        await asyncio.gather(
            _periodically(stop, interval, _identity_housekeeping, container),
            _periodically(stop, expiry_interval, _release_expired_reservations, container),
            _periodically(stop, interval, _purge_abandoned_carts, container),
        )
    finally:
        await container.aclose()
        _log.info("worker_stopped")


async def _periodically(
    stop: asyncio.Event,
    interval: float,
    job: Callable[[Container], Awaitable[None]],
    container: Container,
) -> None:
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
