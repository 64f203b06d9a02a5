"""The adapter to our sandbox PSP (docs/sandbox-psp.md): HTTP calls and webhook signatures.

One `httpx.AsyncClient` per gateway; its transport is injectable (STYLE §14), so tests run
against the real sandbox process or through a fault-injecting transport.

Retries are safe only because every money-moving call carries an idempotency key: the PSP
replays the stored answer of a key it has seen. A call is retried on 5xx (including
503 `try_again`), 429, 409 `idempotency_key_in_use`, timeouts and connection errors, with
exponential backoff and full jitter, at most `max_attempts` times and never beyond
`deadline_seconds` in total; then it is `ProviderUnavailable`. Other 4xx are final.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import orjson
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from ironcart.payments.domain import (
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    ProviderStatus,
    WebhookOutsideTolerance,
)
from ironcart.payments.gateway import (
    Declined,
    ProviderPayment,
    ProviderRefund,
    ProviderRejected,
    ProviderUnavailable,
    WebhookEvent,
)
from ironcart.platform.security.webhooks import (
    SignatureMismatch,
    SignatureTooOld,
    check_signature,
)
from ironcart.platform.security.webhooks import sign as sign  # the PSP signs this way too

T = TypeVar("T")
MAX_INTEGER = 10**15  # amounts in minor units, unix timestamps
RETRYABLE_CODES = frozenset({"idempotency_key_in_use", "try_again"})


class _Malformed(ValueError):
    """The PSP answered something that is not what its API documents."""


class _Transient(Exception):
    """One attempt failed in a way another attempt with the same key may fix."""


class HttpSandboxGateway:
    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
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
            limits=httpx.Limits(max_connections=max_connections),
            transport=transport,
        )
        self._max_attempts = max_attempts
        self._deadline = deadline_seconds
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- the port ---------------------------------------------------------------------------

    async def authorize(
        self,
        *,
        amount_minor: int,
        currency: str,
        card_token: str,
        reference: str,
        idempotency_key: str,
    ) -> ProviderPayment:
        body = {
            "amount": amount_minor,
            "currency": currency,
            "card_token": card_token,
            "reference": reference,
        }
        response = await self._call("POST", "/v1/payments", body, idempotency_key)
        if response.status_code == 402:
            payment = _parse(parse_payment, response)
            raise Declined(payment.decline_code or "declined", payment)
        return _parse(parse_payment, _success(response))

    async def capture(
        self, *, payment_id: str, amount_minor: int, idempotency_key: str
    ) -> ProviderPayment:
        path = f"/v1/payments/{_segment(payment_id)}/capture"
        response = await self._call("POST", path, {"amount": amount_minor}, idempotency_key)
        return _parse(parse_payment, _success(response))

    async def void(self, *, payment_id: str, idempotency_key: str) -> ProviderPayment:
        path = f"/v1/payments/{_segment(payment_id)}/void"
        response = await self._call("POST", path, {}, idempotency_key)
        return _parse(parse_payment, _success(response))

    async def refund(
        self, *, payment_id: str, amount_minor: int, idempotency_key: str
    ) -> ProviderRefund:
        path = f"/v1/payments/{_segment(payment_id)}/refunds"
        response = await self._call("POST", path, {"amount": amount_minor}, idempotency_key)
        return _parse(parse_refund, _success(response))

    async def get(self, payment_id: str) -> ProviderPayment | None:
        response = await self._call("GET", f"/v1/payments/{_segment(payment_id)}")
        if response.status_code == 404:
            return None
        return _parse(parse_payment, _success(response))

    async def find_by_idempotency_key(self, idempotency_key: str) -> ProviderPayment | None:
        path = f"/v1/payments/by-idempotency-key/{_segment(idempotency_key)}"
        response = await self._call("GET", path)
        if response.status_code == 404:
            return None
        return _parse(parse_payment, _success(response))

    # -- one logical call, retried ------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
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
            raise ProviderUnavailable(
                f"{method} {path}: no answer within {self._deadline} s"
            ) from None
        except _Transient as error:
            raise ProviderUnavailable(f"{method} {path}: {error}") from None
        raise ProviderUnavailable(f"{method} {path}: no attempt was made")  # pragma: no cover

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
        if status >= 500 or status == 429 or (status == 409 and _code(response) in RETRYABLE_CODES):
            raise _Transient(f"answered {status} {_code(response)}")
        return response


def _segment(value: str) -> str:
    return quote(value, safe="")


def _code(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return str(error["code"])
    except (ValueError, KeyError, TypeError):
        return f"http_{response.status_code}"


def _success(response: httpx.Response) -> httpx.Response:
    if response.status_code in {200, 201}:
        return response
    if response.status_code == 401:  # our key is wrong: nothing can work, no request is at fault
        raise ProviderUnavailable("the PSP refused our API key (401)")
    message = ""
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        message = str(response.json()["error"].get("message", ""))
    raise ProviderRejected(response.status_code, _code(response), message)


def _parse(parser: Callable[[Any], T], response: httpx.Response) -> T:
    try:
        return parser(response.json())
    except (ValueError, _Malformed) as error:
        raise ProviderUnavailable(f"unexpected PSP answer ({error})") from None


def _integer(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INTEGER:
        raise _Malformed(f"{name} is not an integer in [0, {MAX_INTEGER}]")
    return value


def _text(data: dict[str, Any], name: str, maximum: int = 100) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not 1 <= len(value) <= maximum:
        raise _Malformed(f"{name} is not a string of 1 to {maximum} characters")
    return value


def parse_payment(data: Any) -> ProviderPayment:
    if not isinstance(data, dict):
        raise _Malformed("a payment is an object")
    try:
        status = ProviderStatus(str(data.get("status")))
    except ValueError:
        raise _Malformed(f"unknown payment status {data.get('status')!r}") from None
    decline_code = data.get("decline_code")
    return ProviderPayment(
        id=_text(data, "id"),
        status=status,
        amount_minor=_integer(data, "amount"),
        currency=_text(data, "currency"),
        amount_captured_minor=_integer(data, "amount_captured"),
        amount_refunded_minor=_integer(data, "amount_refunded"),
        reference=str(data.get("reference") or "")[:200],
        decline_code=decline_code if isinstance(decline_code, str) else None,
    )


def parse_refund(data: Any) -> ProviderRefund:
    if not isinstance(data, dict):
        raise _Malformed("a refund is an object")
    return ProviderRefund(
        id=_text(data, "id"),
        payment_id=_text(data, "payment_id"),
        amount_minor=_integer(data, "amount"),
        status=_text(data, "status"),
    )


# -- webhooks ---------------------------------------------------------------------------------


class SandboxWebhookVerifier:
    """Checks `Sandbox-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
    (platform.security.webhooks)."""

    def __init__(self, *, secret: str, tolerance_seconds: float = 300.0) -> None:
        self._secret = secret
        self._tolerance = tolerance_seconds

    def verify(self, body: bytes, signature_header: str | None, *, now: float) -> WebhookEvent:
        try:
            check_signature(
                self._secret, body, signature_header, now=now, tolerance_seconds=self._tolerance
            )
        except SignatureMismatch as error:
            raise InvalidWebhookSignature(str(error)) from None
        except SignatureTooOld as error:
            raise WebhookOutsideTolerance(str(error)) from None
        return _event(body)


def _event(body: bytes) -> WebhookEvent:
    try:
        data = orjson.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
            raise _Malformed("an event is an object with data")
        event_id = _text(data, "id")
        return WebhookEvent(
            id=event_id,
            type=_text(data, "type")[:64],
            created=_integer(data, "created"),
            payment=parse_payment(data["data"].get("payment")),
        )
    except (orjson.JSONDecodeError, _Malformed) as error:
        raise InvalidWebhookPayload(f"The webhook body is not a payment event ({error}).") from None
