"""What every sandbox shares: its errors, its SQLite store's idempotency keys and webhook
outbox, idempotent POSTs, signed webhook delivery with retries, and the HTTP edge helpers.

The PSP (`psp*.py`) and the carrier (`carrier*.py`) build on these; each adds its own
resources (payments, shipments) on top. Errors carry an HTTP `status` and a stable `code`:

    SandboxError
     ├── InvalidRequest (400)         invalid_request, missing_idempotency_key, ...
     ├── Unauthorized (401)           unauthorized
     ├── NotFound (404)               <resource>_not_found, not_found (no such route)
     ├── Conflict (409)               invalid_state, idempotency_key_in_use, ...
     ├── IdempotencyKeyReused (422)   idempotency_key_reused
     ├── InjectedFault (500)          internal_error
     └── TryAgain (503)               try_again
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

JSON = "application/json"
IDLE_POLL_SECONDS = 1.0
SHUTDOWN_GRACE_SECONDS = 3
HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


class SandboxError(Exception):
    status = 500

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidRequest(SandboxError):
    status = 400


class Unauthorized(SandboxError):
    status = 401


class NotFound(SandboxError):
    status = 404


class Conflict(SandboxError):
    status = 409


class IdempotencyKeyReused(SandboxError):
    status = 422


class InjectedFault(SandboxError):
    status = 500


class TryAgain(SandboxError):
    status = 503


MAX_TEXT = 200
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str) -> str:
    """`<prefix><26 Crockford base32 chars>`: 48 bits of milliseconds, then 80 random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = [_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5)]
    return prefix + "".join(chars)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def text_of(payload: dict[str, Any], field: str) -> str:
    value = payload.get(field)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT:
        raise InvalidRequest("invalid_request", f"{field} must be a string of 1..{MAX_TEXT} chars")
    return value


def idempotency_key_of(value: str | None) -> str:
    if value is None:
        raise InvalidRequest("missing_idempotency_key", "an Idempotency-Key header is required")
    if not 0 < len(value) <= MAX_TEXT:
        raise InvalidRequest("invalid_idempotency_key", f"Idempotency-Key: 1..{MAX_TEXT} chars")
    return value


# -- the store: idempotency keys and the webhook outbox -------------------------------------------

IDEMPOTENCY_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    account TEXT NOT NULL,
    key TEXT NOT NULL,
    path TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    state TEXT NOT NULL,  -- in_progress | done | released (free to process afresh)
    attempts INTEGER NOT NULL,
    status INTEGER,
    body BLOB,
    PRIMARY KEY (account, key)
) WITHOUT ROWID;
"""

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    {subject} TEXT NOT NULL,
    body BLOB NOT NULL,
    state TEXT NOT NULL,  -- pending | sending | held | delivered | failed | dropped
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status INTEGER
);
CREATE INDEX IF NOT EXISTS webhook_events_due ON webhook_events (next_attempt_at)
    WHERE state = 'pending';
"""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Claim:
    """A key now held by the caller (`attempt` counts the tries that were not stored)."""

    attempt: int


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    seq: int
    body: bytes
    attempts: int


class SqliteStore:
    """One SQLite connection, used from the event-loop thread only (each call is well under a
    millisecond); WAL with synchronous=NORMAL, so a commit survives a crash of the process.
    Methods run in the caller's `transaction()`, or in autocommit outside one.

    `SUBJECT` names the column of the webhook outbox holding the resource's id.
    """

    SUBJECT = "subject_id"

    def __init__(self, path: Path, schema: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(
            schema + IDEMPOTENCY_SCHEMA + OUTBOX_SCHEMA.format(subject=self.SUBJECT)
        )
        self._recover()

    def _recover(self) -> None:
        """Whatever a killed process was doing did not commit: free its keys, resend its events."""
        with self.transaction():
            self._db.execute(
                "UPDATE idempotency SET state = 'released' WHERE state = 'in_progress'"
            )
            self._db.execute("UPDATE webhook_events SET state = 'pending' WHERE state = 'sending'")

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # Idempotency keys

    def claim_key(
        self, account: str, key: str, *, path: str, fingerprint: bytes
    ) -> Claim | StoredResponse:
        """Hold `key`, or the response stored for it; 422 for another request, 409 if held."""
        with self.transaction():
            row = self._db.execute(
                "SELECT fingerprint, state, attempts, status, body FROM idempotency"
                " WHERE account = ? AND key = ?",
                (account, key),
            ).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO idempotency (account, key, path, fingerprint, state, attempts)"
                    " VALUES (?, ?, ?, ?, 'in_progress', 1)",
                    (account, key, path, fingerprint),
                )
                return Claim(attempt=1)
            stored_fingerprint, state, attempts, status, body = row
            if state == "released":
                self._db.execute(
                    "UPDATE idempotency SET state = 'in_progress', attempts = ?, path = ?,"
                    " fingerprint = ? WHERE account = ? AND key = ?",
                    (attempts + 1, path, fingerprint, account, key),
                )
                return Claim(attempt=attempts + 1)
        if stored_fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                "idempotency_key_reused", "this Idempotency-Key was used for another request"
            )
        if state == "in_progress":
            raise Conflict("idempotency_key_in_use", "a request with this key is still running")
        return StoredResponse(status=status, body=body)

    def complete_key(self, account: str, key: str, response: StoredResponse) -> None:
        self._db.execute(
            "UPDATE idempotency SET state = 'done', status = ?, body = ?"
            " WHERE account = ? AND key = ?",
            (response.status, response.body, account, key),
        )

    def release_key(self, account: str, key: str) -> None:
        self._db.execute(
            "UPDATE idempotency SET state = 'released' WHERE account = ? AND key = ?",
            (account, key),
        )

    def forget_key(self, account: str, key: str) -> None:
        self._db.execute(
            "DELETE FROM idempotency WHERE account = ? AND key = ? AND state = 'in_progress'",
            (account, key),
        )

    def key_in_progress(self, account: str, key: str, path: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM idempotency WHERE account = ? AND key = ? AND path = ?"
            " AND state = 'in_progress'",
            (account, key, path),
        ).fetchone()
        return row is not None

    # Webhook outbox

    def add_event(
        self,
        event_id: str,
        event_type: str,
        subject_id: str,
        body: bytes,
        *,
        state: str,
        due: float,
    ) -> None:
        self._db.execute(
            f"INSERT INTO webhook_events (event_id, type, {self.SUBJECT}, body, state,"  # noqa: S608
            " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
            (event_id, event_type, subject_id, body, state, due),
        )

    def take_due_events(self, now: float, limit: int) -> list[OutboxEvent]:
        """Up to `limit` due events, marked `sending` (a restart makes them pending again)."""
        with self.transaction():
            rows = self._db.execute(
                "SELECT seq, body, attempts FROM webhook_events WHERE state = 'pending'"
                " AND next_attempt_at <= ? ORDER BY next_attempt_at, seq LIMIT ?",
                (now, limit),
            ).fetchall()
            self._mark_sending([row[0] for row in rows])
        return [OutboxEvent(*row) for row in rows]

    def take_held_events(self) -> list[OutboxEvent]:
        """Every held-back event, newest first, marked `sending`."""
        with self.transaction():
            rows = self._db.execute(
                "SELECT seq, body, attempts FROM webhook_events WHERE state = 'held'"
                " ORDER BY seq DESC"
            ).fetchall()
            self._mark_sending([row[0] for row in rows])
        return [OutboxEvent(*row) for row in rows]

    def _mark_sending(self, seqs: list[int]) -> None:
        self._db.executemany(
            "UPDATE webhook_events SET state = 'sending' WHERE seq = ?", [(seq,) for seq in seqs]
        )

    def next_event_due_at(self) -> float | None:
        row = self._db.execute(
            "SELECT MIN(next_attempt_at) FROM webhook_events WHERE state = 'pending'"
        ).fetchone()
        due: float | None = row[0]
        return due

    def record_attempt(
        self, seq: int, *, attempts: int, state: str, due: float, last_status: int | None
    ) -> None:
        self._db.execute(
            "UPDATE webhook_events SET state = ?, attempts = ?, next_attempt_at = ?,"
            " last_status = ? WHERE seq = ?",
            (state, attempts, due, last_status, seq),
        )

    def events(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            f"SELECT event_id, type, {self.SUBJECT}, state, attempts, last_status"  # noqa: S608
            " FROM webhook_events ORDER BY seq"
        ).fetchall()
        names = ("id", "type", self.SUBJECT, "state", "attempts", "last_status")
        return [dict(zip(names, row, strict=True)) for row in rows]


# -- idempotent POSTs ------------------------------------------------------------------------------

# (idempotency key, attempt number of that key) -> the response to store and send.
Operation = Callable[[str, int], StoredResponse]


def json_response(status: int, content: Any) -> StoredResponse:
    return StoredResponse(status=status, body=orjson.dumps(content))


def error_response(error: SandboxError) -> StoredResponse:
    return json_response(error.status, {"error": {"code": error.code, "message": error.message}})


async def run_idempotent(
    store: SqliteStore,
    *,
    account: str,
    key: str,
    path: str,
    payload: dict[str, Any],
    latency_seconds: float,
    operation: Operation,
) -> tuple[StoredResponse, bool]:
    """The response to a POST, and whether it is a replay of the stored one.

    The operation runs in one transaction with the response stored under the key. A 4xx other
    than 400 is stored too (after the effects rolled back); a 400 forgets the key, a 5xx
    releases it (a retry with the same key is processed afresh).
    """
    canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    fingerprint = hashlib.sha256(path.encode() + b"\n" + canonical).digest()
    claimed = store.claim_key(account, key, path=path, fingerprint=fingerprint)
    if isinstance(claimed, StoredResponse):
        return claimed, True
    try:
        if latency_seconds:
            await asyncio.sleep(latency_seconds)  # the key stays held meanwhile
        return _apply(store, account, key, claimed, operation), False
    except InvalidRequest:
        store.forget_key(account, key)
        raise
    except BaseException:
        store.release_key(account, key)
        raise


def _apply(
    store: SqliteStore, account: str, key: str, claim: Claim, operation: Operation
) -> StoredResponse:
    try:
        with store.transaction():
            response = operation(key, claim.attempt)
            store.complete_key(account, key, response)
    except SandboxError as error:
        if error.status >= 500 or isinstance(error, InvalidRequest):
            raise
        response = error_response(error)
        store.complete_key(account, key, response)
    return response


# -- webhook delivery ------------------------------------------------------------------------------


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class WebhookDispatcher:
    """The outbox in the store, sent by a background task, signed, retried.

    Each event is POSTed with `Sandbox-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
    "<t>.<body>")>`, re-signed on every attempt. A non-2xx answer or a transport error is
    retried with exponential backoff until `max_attempts`; the event is then `failed`.
    Held-back events (the reorder fault) wait for `flush()`, which sends them one by one,
    newest first.
    """

    def __init__(
        self,
        store: SqliteStore,
        client: httpx.AsyncClient,
        *,
        url: str,
        secret: str,
        max_attempts: int = 10,
        first_backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 60.0,
        concurrency: int = 32,
        logger: logging.Logger | None = None,
    ) -> None:
        self._store = store
        self._client = client
        self._url = url
        self._secret = secret.encode()
        self._max_attempts = max_attempts
        self._first_backoff = first_backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._concurrency = concurrency
        self._log = logger or logging.getLogger("ironcart.sandbox")
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
            self._log.error("webhook delivery crashed", exc_info=task.exception())
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
            self._log.warning(
                "webhook event seq=%s failed %s times; giving up", event.seq, attempts
            )
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
            self._log.info("webhook POST to %s failed: %r", self._url, error)
            return None
        return response.status_code


# -- the HTTP edge ---------------------------------------------------------------------------------


def authenticate(request: Request, bearer: bytes) -> None:
    """`Authorization: Bearer <api key>` or 401."""
    supplied = request.headers.get("authorization", "").encode("latin-1")
    if not hmac.compare_digest(supplied, bearer):
        raise Unauthorized("unauthorized", "Authorization: Bearer <api key> required")


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object (empty: `{}`), else 400 `invalid_request`."""
    body = await request.body()
    if not body.strip():
        return {}
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("invalid_request", "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("invalid_request", "the body must be a JSON object")
    return payload


def listing(items: list[dict[str, Any]]) -> StoredResponse:
    return json_response(200, {"data": items})


def respond(response: StoredResponse, headers: dict[str, str] | None = None) -> Response:
    return Response(response.body, status_code=response.status, headers=headers, media_type=JSON)


def respond_json(status: int, content: Any) -> Response:
    return respond(json_response(status, content))


async def on_sandbox_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, SandboxError)  # noqa: S101 - registered for SandboxError only
    return respond(error_response(error))


async def on_http_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)  # noqa: S101 - registered for HTTPException only
    code = HTTP_ERROR_CODES.get(error.status_code, "invalid_request")
    return respond_json(error.status_code, {"error": {"code": code, "message": error.detail}})


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def serve_app(app: Starlette, *, host: str, port: int, log_level: str) -> None:
    """Run a sandbox app on one uvicorn worker until SIGINT/SIGTERM."""
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level=log_level,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
