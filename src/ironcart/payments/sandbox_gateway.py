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

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar, Unpack
from urllib.parse import quote

import httpx
import orjson

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
from ironcart.platform.http.provider import (
    ProviderCallFailed,
    ProviderClient,
    ProviderOptions,
    error_code,
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


class HttpSandboxGateway:
    def __init__(self, *, base_url: str, api_key: str, **options: Unpack[ProviderOptions]) -> None:
        self._http = ProviderClient(
            base_url=base_url,
            api_key=api_key,
            dependency="psp",
            retryable_codes=RETRYABLE_CODES,
            **options,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

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
        try:
            return await self._http.call(method, path, body, idempotency_key)
        except ProviderCallFailed as error:
            raise ProviderUnavailable(str(error)) from None


def _segment(value: str) -> str:
    return quote(value, safe="")


def _success(response: httpx.Response) -> httpx.Response:
    if response.status_code in {200, 201}:
        return response
    if response.status_code == 401:  # our key is wrong: nothing can work, no request is at fault
        raise ProviderUnavailable("the PSP refused our API key (401)")
    message = ""
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        message = str(response.json()["error"].get("message", ""))
    raise ProviderRejected(response.status_code, error_code(response), message)


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
