"""Calls to an external provider's HTTP API (the PSP, the carrier): one `httpx.AsyncClient`,
timeouts, a bulkhead, and retries that are safe because every call that changes something
carries an idempotency key (the provider replays its stored answer for a key it has seen).

A call is retried on 5xx, 429, 409 with one of `retryable_codes` (e.g. the key still in use
by the first attempt), timeouts and connection errors, with exponential backoff and full
jitter (tenacity), at most `max_attempts` times and never beyond `deadline_seconds` in total;
then `ProviderCallFailed`. Any other answer is the caller's to read. The transport is
injectable (STYLE §14), so tests run against the real sandbox or a fault-injecting transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any, TypedDict

import httpx
import orjson
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)


class ProviderCallFailed(Exception):
    """No usable answer within the attempts and the deadline (the outcome is unknown)."""


class _Transient(Exception):
    """One attempt failed in a way another attempt with the same key may fix."""


class ProviderOptions(TypedDict, total=False):
    """A provider client's tuning (defaults in `ProviderClient`); adapters pass them on."""

    read_timeout_seconds: float
    connect_timeout_seconds: float
    max_attempts: int
    deadline_seconds: float
    backoff_initial_seconds: float
    backoff_max_seconds: float
    max_connections: int
    transport: httpx.AsyncBaseTransport | None


def error_code(response: httpx.Response) -> str:
    """The provider's `{"error": {"code": ...}}`, or `http_<status>`."""
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"http_{response.status_code}"


class ProviderClient:
    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        retryable_codes: Collection[str] = ("idempotency_key_in_use",),
        read_timeout_seconds: float = 5.0,
        connect_timeout_seconds: float = 1.0,
        max_attempts: int = 4,
        deadline_seconds: float = 15.0,
        backoff_initial_seconds: float = 0.1,
        backoff_max_seconds: float = 2.0,
        max_connections: int = 50,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            # pool: waiting for a free connection is the bulkhead's queue, bounded too.
            timeout=httpx.Timeout(
                read_timeout_seconds, connect=connect_timeout_seconds, pool=read_timeout_seconds
            ),
            # The bulkhead: at most this many calls to the provider at once.
            limits=httpx.Limits(max_connections=max_connections),
            transport=transport,
        )
        self._retryable = frozenset(retryable_codes)
        self._max_attempts = max_attempts
        self._deadline = deadline_seconds
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds

    @property
    def deadline_seconds(self) -> float:
        return self._deadline

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        """The first answer that is not retryable; `ProviderCallFailed` when none came."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        content = orjson.dumps(body) if body is not None else None
        if content is not None:
            headers["Content-Type"] = "application/json"
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts) | stop_before_delay(self._deadline),
            wait=wait_random_exponential(multiplier=self._backoff_initial, max=self._backoff_max),
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        )
        try:
            async with asyncio.timeout(self._deadline):
                async for attempt in retrying:
                    with attempt:
                        return await self._attempt(method, path, content, headers)
        except TimeoutError:
            raise ProviderCallFailed(
                f"{method} {path}: no answer within {self._deadline} s"
            ) from None
        except _Transient as error:
            raise ProviderCallFailed(f"{method} {path}: {error}") from None
        raise ProviderCallFailed(f"{method} {path}: no attempt was made")  # pragma: no cover

    async def _attempt(
        self, method: str, path: str, content: bytes | None, headers: dict[str, str]
    ) -> httpx.Response:
        try:
            response = await self._client.request(method, path, content=content, headers=headers)
        except httpx.TimeoutException as error:
            raise _Transient(f"timed out ({type(error).__name__})") from error
        except httpx.TransportError as error:
            raise _Transient(f"transport error ({type(error).__name__})") from error
        status = response.status_code
        code = error_code(response) if status >= 400 else ""
        if status >= 500 or status == 429 or (status == 409 and code in self._retryable):
            raise _Transient(f"answered {status} {code}")
        return response
