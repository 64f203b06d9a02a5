"""Calls to an external provider's HTTP API (the PSP, the carrier): one `httpx.AsyncClient`
whose every call runs through a resilience `Policy` (platform.resilience): the request's
deadline, a circuit breaker, a bulkhead, a timeout per attempt and budgeted retries.

Retries are safe because every call that changes something carries an idempotency key (the
provider replays its stored answer for a key it has seen); a call without a key is retried
only when it is a read. An attempt is `Transient` on 5xx, 429, 409 with one of
`retryable_codes` (e.g. the key still in use by the first attempt), timeouts and connection
errors. Any other answer is the caller's to read.

When no usable answer came — attempts exhausted, or the policy refused to call (breaker
open, bulkhead full, deadline too close) — the caller gets `ProviderCallFailed`: its
adapters already treat it as "outcome unknown" and settle it later by idempotency key, which
is also right (merely pessimistic) when no call was made. The transport is injectable
(STYLE §14), so tests run against the real sandbox or a fault-injecting transport.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, TypedDict

import httpx
import orjson

from ironcart.platform.http.tls import client_tls_context
from ironcart.platform.resilience import (
    DependencyUnavailable,
    Policy,
    PolicyConfig,
    Transient,
    config_from,
)
from ironcart.platform.tracing import instrument_httpx_client

_READS = frozenset({"GET", "HEAD"})


class ProviderCallFailed(Exception):
    """No usable answer within the attempts and the deadline (the outcome is unknown)."""


class ProviderOptions(TypedDict, total=False):
    """A provider client's tuning (defaults in `ProviderClient`); adapters pass them on.

    `policy` (what the composition root passes) replaces the timing options below."""

    read_timeout_seconds: float
    connect_timeout_seconds: float
    max_attempts: int
    deadline_seconds: float
    backoff_initial_seconds: float
    backoff_max_seconds: float
    max_connections: int
    transport: httpx.AsyncBaseTransport | None
    policy: Policy | None


def error_code(response: httpx.Response) -> str:
    """The provider's `{"error": {"code": ...}}`, or `http_<status>`."""
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"http_{response.status_code}"


def standalone_config(
    *,
    read_timeout_seconds: float,
    deadline_seconds: float,
    max_attempts: int,
    backoff_initial_seconds: float,
    backoff_max_seconds: float,
    max_connections: int,
) -> PolicyConfig:
    """The policy of a client built without one (tools, adapter tests): timeouts, retries
    and a bulkhead as asked, but no breaker and no retry budget, which only make sense
    shared by the whole process (the composition root passes those)."""
    return config_from(
        {
            "attempt_timeout_seconds": read_timeout_seconds,
            "deadline_seconds": deadline_seconds,
            "max_attempts": max_attempts,
            "backoff_initial_seconds": backoff_initial_seconds,
            "backoff_max_seconds": backoff_max_seconds,
            "max_concurrent": max_connections,
            "queue_seconds": read_timeout_seconds,
            "retry_budget_ratio": float(max_attempts),
            "retry_budget_floor_per_second": 1000.0,
            "minimum_calls": 1_000_000_000,
            "consecutive_failures": 0,
            "slow_call_seconds": 1e9,
        }
    )


class ProviderClient:
    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        dependency: str = "provider",
        retryable_codes: Collection[str] = ("idempotency_key_in_use",),
        read_timeout_seconds: float = 5.0,
        connect_timeout_seconds: float = 1.0,
        max_attempts: int = 4,
        deadline_seconds: float = 15.0,
        backoff_initial_seconds: float = 0.1,
        backoff_max_seconds: float = 2.0,
        max_connections: int = 50,
        transport: httpx.AsyncBaseTransport | None = None,
        policy: Policy | None = None,
    ) -> None:
        self._policy = policy or Policy(
            dependency,
            standalone_config(
                read_timeout_seconds=read_timeout_seconds,
                deadline_seconds=deadline_seconds,
                max_attempts=max_attempts,
                backoff_initial_seconds=backoff_initial_seconds,
                backoff_max_seconds=backoff_max_seconds,
                max_connections=max_connections,
            ),
        )
        config = self._policy.config
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            # The policy bounds each attempt and queues for a slot; these are backstops.
            timeout=httpx.Timeout(config.attempt_timeout_seconds, connect=connect_timeout_seconds),
            limits=httpx.Limits(max_connections=config.max_concurrent),
            transport=transport,
            verify=client_tls_context(),
        )
        instrument_httpx_client(self._client)  # X-Request-ID and, when tracing, traceparent
        self._retryable = frozenset(retryable_codes)
        self._connect_timeout = connect_timeout_seconds

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def deadline_seconds(self) -> float:
        return self._policy.config.deadline_seconds

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

        async def attempt(timeout_seconds: float) -> httpx.Response:
            return await self._attempt(method, path, content, headers, timeout_seconds)

        retryable = idempotency_key is not None or method.upper() in _READS
        try:
            return await self._policy.call(attempt, retryable=retryable)
        except DependencyUnavailable as error:
            raise ProviderCallFailed(f"{method} {path}: {error.detail}") from error

    async def _attempt(
        self,
        method: str,
        path: str,
        content: bytes | None,
        headers: dict[str, str],
        timeout_seconds: float,
    ) -> httpx.Response:
        try:
            timeout = httpx.Timeout(
                timeout_seconds, connect=min(self._connect_timeout, timeout_seconds)
            )
            response = await self._client.request(
                method, path, content=content, headers=headers, timeout=timeout
            )
        except httpx.TimeoutException as error:
            raise Transient(f"timed out ({type(error).__name__})") from error
        except httpx.TransportError as error:
            raise Transient(f"transport error ({type(error).__name__})") from error
        status = response.status_code
        code = error_code(response) if status >= 400 else ""
        if status >= 500 or status == 429 or (status == 409 and code in self._retryable):
            raise Transient(f"answered {status} {code}")
        return response
