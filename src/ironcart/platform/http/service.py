"""Calls from one IronCart service to another over HTTP: the seam every `Http*Client` uses.

`ServiceClient` holds one pooled `httpx.AsyncClient` per target service. Every call:

- carries a client-credentials access token (`ClientCredentialsTokens`: fetched from
  identity, cached until shortly before it expires, one refresh at a time; a 401 from the
  target refreshes it once and tries again), the request id and the deadline headers;
- goes through the target's resilience `Policy` (timeout, breaker, bulkhead; retries only
  when the call is idempotent: GET/HEAD/PUT/DELETE or an Idempotency-Key);
- answers decoded JSON, or raises the error the target raised: a problem+json answer is
  rebuilt as the same domain error (`platform.errors.error_from_problem`), a TCC fence
  refusal as the same `FenceError`, so a caller cannot tell this wiring from the in-process
  one. A 5xx without a domain code, a timeout or a refused connection is `Transient`
  (the policy retries it or gives up with a 503 of its own).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from ironcart.platform.errors import ServiceUnavailable, error_class, error_from_problem
from ironcart.platform.http.problems import PROBLEM_CONTENT_TYPE, TYPE_PREFIX
from ironcart.platform.http.tls import client_tls_context
from ironcart.platform.observability import current_request_id
from ironcart.platform.resilience import Policy, Transient
from ironcart.platform.resilience.deadline import outbound_deadline_headers
from ironcart.platform.settings import ServiceEndpoint
from ironcart.platform.tracing import instrument_httpx_client
from ironcart.platform.txn.fence import FenceConflict, FenceError, Suspended

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})
TOKEN_PATH = "/api/v1/auth/token"  # noqa: S105 - identity's OAuth2 token endpoint, not a secret
_FENCE_ERRORS: Mapping[str, type[FenceError]] = {
    Suspended.code: Suspended,
    FenceConflict.code: FenceConflict,
}

# An access token and its lifetime in seconds (`expires_in`).
TokenFetcher = Callable[[], Awaitable[tuple[str, int]]]


class ServiceCallFailed(ServiceUnavailable):
    """Another service answered in a way its contract does not allow (a deployment fault)."""

    code = "service.call_failed"
    title = "A service could not be used"


@dataclass(frozen=True, slots=True)
class _CachedToken:
    value: str
    refresh_at: float


class ClientCredentialsTokens:
    """This process's service access token, cached until `refresh_margin_seconds` before it
    expires; concurrent callers share one fetch."""

    def __init__(
        self,
        fetch: TokenFetcher,
        *,
        refresh_margin_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._margin = refresh_margin_seconds
        self._clock = clock
        self._cached: _CachedToken | None = None
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        """A token valid for at least the margin: the cached one, or a fresh one."""
        cached = self._cached
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.value
        return await self.refresh(stale=cached.value if cached else None)

    async def refresh(self, *, stale: str | None) -> str:
        """Replace `stale` (refused by a target, or near expiry) unless another caller did."""
        async with self._lock:
            cached = self._cached
            if cached is not None and cached.value != stale and self._clock() < cached.refresh_at:
                return cached.value
            value, expires_in = await self._fetch()
            # A token shorter-lived than twice the margin is refreshed at half its life.
            margin = min(self._margin, expires_in / 2)
            self._cached = _CachedToken(value, self._clock() + expires_in - margin)
            return value


def token_endpoint(
    http: httpx.AsyncClient, policy: Policy, *, client_id: str, client_secret: str
) -> TokenFetcher:
    """A fetcher of client-credentials tokens from identity's token endpoint (RFC 6749 4.4)."""

    async def attempt(timeout_seconds: float) -> httpx.Response:
        try:
            response = await http.post(
                TOKEN_PATH,
                data={"grant_type": "client_credentials"},
                auth=httpx.BasicAuth(client_id, client_secret),
                headers=_common_headers(),
                timeout=timeout_seconds,
            )
        except httpx.TransportError as error:
            raise Transient(f"identity: {type(error).__name__}") from error
        if response.status_code >= 500:
            raise Transient(f"identity answered {response.status_code}")
        return response

    async def fetch() -> tuple[str, int]:
        response = await policy.call(attempt, retryable=True)
        if response.status_code != 200:
            raise ServiceCallFailed(
                f"identity refused this service's client credentials ({response.status_code})."
            )
        body = response.json()
        return str(body["access_token"]), int(body["expires_in"])

    return fetch


class ServiceClient:
    """One target service: a pooled HTTP client, its policy and this process's token."""

    def __init__(
        self,
        name: str,
        endpoint: ServiceEndpoint,
        *,
        tokens: ClientCredentialsTokens,
        policy: Policy,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self._tokens = tokens
        self._policy = policy
        self._http = http_client(endpoint, transport=transport)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        retryable: bool | None = None,
    ) -> Any:
        """Call the service; its decoded JSON (None for 204), or the error it raised.

        `retryable` overrides the default (an idempotent method or an idempotency key) for
        reads that need a body (a POST lookup)."""
        method = method.upper()
        if retryable is None:
            retryable = method in IDEMPOTENT_METHODS or idempotency_key is not None
        call = _Call(method, path, json, params, idempotency_key)

        async def attempt(timeout_seconds: float) -> httpx.Response:
            return await self._attempt(call, timeout_seconds)

        response = await self._policy.call(attempt, retryable=retryable)
        return self._decode(response)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _attempt(self, call: _Call, timeout_seconds: float) -> httpx.Response:
        token = await self._tokens.token()
        response = await self._send(call, token, timeout_seconds)
        if response.status_code == 401:  # revoked key, rotated signing key: one fresh token
            response = await self._send(
                call, await self._tokens.refresh(stale=token), timeout_seconds
            )
        if response.status_code >= 500 and not _is_domain_error(_domain_code(response)):
            raise Transient(f"{self.name} answered {response.status_code}")
        return response

    async def _send(self, call: _Call, token: str, timeout_seconds: float) -> httpx.Response:
        headers = {**_common_headers(), "Authorization": f"Bearer {token}"}
        if call.idempotency_key is not None:
            headers["Idempotency-Key"] = call.idempotency_key
        try:
            return await self._http.request(
                call.method,
                call.path,
                json=call.json,
                params=call.params,
                headers=headers,
                timeout=_timeout(self._http.timeout, timeout_seconds),
            )
        except httpx.TransportError as error:
            raise Transient(f"{self.name}: {type(error).__name__}") from error

    def _decode(self, response: httpx.Response) -> Any:
        if response.is_success:
            return None if response.status_code == 204 or not response.content else response.json()
        raise self._error_of(response)

    def _error_of(self, response: httpx.Response) -> Exception:
        status, code = response.status_code, _domain_code(response)
        if status == 401 or code == "auth.insufficient_scope":
            return ServiceCallFailed(
                f"The {self.name} service refused this service's credentials ({status})."
            )
        error = None if code is None else _rebuilt(code, response)
        if error is None:
            return ServiceCallFailed(
                f"The {self.name} service answered {status} {code or 'without a problem body'}."
            )
        return error


def _rebuilt(code: str, response: httpx.Response) -> Exception | None:
    """The error a problem answer names, with its detail, extra members and Retry-After."""
    body: dict[str, Any] = response.json()
    detail = str(body.get("detail", ""))
    if code in _FENCE_ERRORS:
        return _FENCE_ERRORS[code](detail)
    extra = {key: value for key, value in body.items() if key not in _PROBLEM_MEMBERS}
    retry_after = response.headers.get("Retry-After")
    headers = {"Retry-After": retry_after} if retry_after else {}
    return error_from_problem(code, detail, extra, headers=headers)


@dataclass(frozen=True, slots=True)
class _Call:
    method: str
    path: str
    json: Any
    params: Mapping[str, Any] | None
    idempotency_key: str | None


_PROBLEM_MEMBERS = frozenset({"type", "title", "status", "detail", "instance", "request_id"})


def http_client(
    endpoint: ServiceEndpoint, *, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """A pooled client for one service, with its connect/read timeouts and connection limit."""
    client = httpx.AsyncClient(
        base_url=endpoint.url,
        timeout=httpx.Timeout(
            endpoint.read_timeout_seconds, connect=endpoint.connect_timeout_seconds
        ),
        limits=httpx.Limits(
            max_connections=endpoint.max_connections,
            max_keepalive_connections=endpoint.max_connections,
        ),
        transport=transport,
        verify=client_tls_context(),
    )
    instrument_httpx_client(client)  # trace context (`traceparent`) on every call
    return client


def _common_headers() -> dict[str, str]:
    headers = dict(outbound_deadline_headers())
    request_id = current_request_id()
    if request_id:
        headers["X-Request-ID"] = request_id
    return headers


def _timeout(configured: httpx.Timeout, budget_seconds: float) -> httpx.Timeout:
    """The configured timeouts, none longer than what the policy allows this attempt."""
    read = min(configured.read or budget_seconds, budget_seconds)
    connect = min(configured.connect or budget_seconds, budget_seconds)
    return httpx.Timeout(read, connect=connect)


def _is_domain_error(code: str | None) -> bool:
    """A code some context's error claims: the target answered; it is not a fault of it."""
    return code is not None and (code in _FENCE_ERRORS or error_class(code) is not None)


def _domain_code(response: httpx.Response) -> str | None:
    """The problem code of an error answer (`urn:ironcart:problem:<code>`), if it has one."""
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    if media_type != PROBLEM_CONTENT_TYPE:
        return None
    try:
        problem_type = response.json().get("type", "")
    except ValueError:
        return None
    if not isinstance(problem_type, str) or not problem_type.startswith(TYPE_PREFIX):
        return None
    return problem_type.removeprefix(TYPE_PREFIX)
