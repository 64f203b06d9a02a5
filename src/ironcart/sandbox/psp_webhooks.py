"""Webhook delivery: the outbox in the store, sent by a background task, signed, retried.

Each event is POSTed with `Sandbox-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"<t>.<body>")>`, re-signed on every attempt. A non-2xx answer or a transport error is retried
with exponential backoff until `max_attempts`; the event is then `failed`. Held-back events
(the reorder fault) wait for `flush()`, which sends them one by one, newest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Coroutine
from typing import Any

import httpx

from ironcart.sandbox.psp_store import OutboxEvent, SqlPspStore

logger = logging.getLogger("ironcart.sandbox.psp")
IDLE_POLL_SECONDS = 1.0


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class WebhookDispatcher:
    def __init__(
        self,
        store: SqlPspStore,
        client: httpx.AsyncClient,
        *,
        url: str,
        secret: str,
        max_attempts: int = 10,
        first_backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 60.0,
        concurrency: int = 32,
    ) -> None:
        self._store = store
        self._client = client
        self._url = url
        self._secret = secret.encode()
        self._max_attempts = max_attempts
        self._first_backoff = first_backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._concurrency = concurrency
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        """Send due events until cancelled; cancelling leaves unsent ones for the next start."""
        try:
            while True:
                self._wakeup.clear()
                self._start_due()
                await self._sleep()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def flush(self) -> int:
        """Send every held-back event now, newest first, each after the previous attempt."""
        events = self._store.take_held_events()
        if events:
            self._spawn(self._send_in_order(events))
        return len(events)

    def _start_due(self) -> None:
        free = self._concurrency - len(self._tasks)
        if free > 0:
            for event in self._store.take_due_events(time.time(), free):
                self._spawn(self._attempt(event))

    async def _sleep(self) -> None:
        timeout = IDLE_POLL_SECONDS
        due = self._store.next_event_due_at()
        if due is not None and len(self._tasks) < self._concurrency:
            timeout = min(timeout, max(due - time.time(), 0.0))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("webhook delivery crashed", exc_info=task.exception())
        self.wake()

    async def _send_in_order(self, events: list[OutboxEvent]) -> None:
        for event in events:
            await self._attempt(event)

    async def _attempt(self, event: OutboxEvent) -> None:
        attempts = event.attempts + 1
        status = await self._post(event.body)
        now = time.time()
        if status is not None and 200 <= status < 300:
            state, due = "delivered", now
        elif attempts >= self._max_attempts:
            state, due = "failed", now
            logger.warning("webhook event seq=%s failed %s times; giving up", event.seq, attempts)
        else:
            backoff = min(self._first_backoff * 2 ** (attempts - 1), self._max_backoff)
            state, due = "pending", now + backoff
        self._store.record_attempt(
            event.seq, attempts=attempts, state=state, due=due, last_status=status
        )

    async def _post(self, body: bytes) -> int | None:
        headers = {
            "content-type": "application/json",
            "sandbox-signature": signature(self._secret, int(time.time()), body),
        }
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as error:
            logger.info("webhook POST to %s failed: %r", self._url, error)
            return None
        return response.status_code
