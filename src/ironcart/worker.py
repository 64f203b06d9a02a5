"""The background worker: runs each context's periodic jobs until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal

import structlog

from ironcart.bootstrap import bootstrap
from ironcart.platform.settings import Settings

_log = structlog.get_logger("ironcart.worker")
HOUSEKEEPING_INTERVAL_SECONDS = 300.0


async def run_worker(
    settings: Settings, *, interval: float = HOUSEKEEPING_INTERVAL_SECONDS
) -> None:
    container = bootstrap(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    _log.info("worker_started", interval_seconds=interval)
    try:
        while not stop.is_set():
            try:
                tokens, keys = await container.identity.purge_expired()
                _log.info("identity_housekeeping", refresh_tokens_deleted=tokens, keys_deleted=keys)
            except Exception:  # noqa: BLE001 - a failed round is logged and retried next interval
                _log.exception("identity_housekeeping_failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                continue
    finally:
        await container.aclose()
        _log.info("worker_stopped")
