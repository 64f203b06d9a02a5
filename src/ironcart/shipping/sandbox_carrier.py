"""The adapter to our sandbox carrier (docs/sandbox-carrier.md): HTTP calls and webhooks.

One `httpx.AsyncClient` per gateway; its transport is injectable (STYLE §14), so tests run
against the real sandbox process or through a fault-injecting transport.

Creating a shipment is retried only because it carries an idempotency key (our shipment id):
the carrier replays the stored answer of a key it has seen. A call is retried on 5xx, 429,
409 `idempotency_key_in_use` (the carrier is still working on an earlier attempt with the
key), timeouts and connection errors, with exponential backoff and full jitter, at most
`max_attempts` times and never beyond `deadline_seconds` in total; then it is `CarrierDown`
(the outcome is unknown). Another 4xx is final (`CarrierRefused`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx
import orjson
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from ironcart.platform.security.webhooks import SignatureMismatch, SignatureTooOld, check_signature
from ironcart.shipping.carrier import CarrierDown, CarrierLabel, CarrierRefused, TrackingReport
from ironcart.shipping.domain import (
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    WebhookOutsideTolerance,
)

SIGNATURE_HEADER = "Sandbox-Signature"
MAX_TEXT = 200
RETRYABLE_CODES = frozenset({"idempotency_key_in_use"})  # with a 409


class _Malformed(ValueError):
    """The carrier answered something that is not what its API documents."""


class _Transient(Exception):
    """One attempt failed in a way another attempt with the same key may fix."""


class HttpSandboxCarrier:
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
        max_connections: int = 20,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(
                read_timeout_seconds, connect=connect_timeout_seconds, pool=read_timeout_seconds
            ),
            # The bulkhead: at most this many calls to the carrier at once.
            limits=httpx.Limits(max_connections=max_connections),
            transport=transport,
        )
        self._max_attempts = max_attempts
        self._deadline = deadline_seconds
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds

    async def aclose(self) -> None:
        await self._client.aclose()

    async def create_shipment(
        self,
        *,
        reference: str,
        country: str,
        postal_code: str,
        lines: Sequence[tuple[str, int]],
        idempotency_key: str,
    ) -> CarrierLabel:
        body = {
            "reference": reference,
            "destination": {"country": country, "postal_code": postal_code},
            "lines": [{"sku": sku, "quantity": quantity} for sku, quantity in lines],
        }
        response = await self._call("POST", "/v1/shipments", body, idempotency_key)
        if response.status_code not in {200, 201}:
            raise _refused(response)
        try:
            return parse_label(response.json())
        except (ValueError, _Malformed) as error:
            raise CarrierDown(f"unexpected carrier answer ({error})") from None

    async def _call(
        self, method: str, path: str, body: dict[str, Any], idempotency_key: str
    ) -> httpx.Response:
        headers = {"Idempotency-Key": idempotency_key, "Content-Type": "application/json"}
        content = orjson.dumps(body)
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
            raise CarrierDown(f"{method} {path}: no answer within {self._deadline} s") from None
        except _Transient as error:
            raise CarrierDown(f"{method} {path}: {error}") from None
        raise CarrierDown(f"{method} {path}: no attempt was made")  # pragma: no cover

    async def _attempt(
        self, method: str, path: str, content: bytes, headers: dict[str, str]
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


def _code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"http_{response.status_code}"


def _refused(response: httpx.Response) -> Exception:
    if response.status_code == 401:  # our key is wrong: nothing can work, no request is at fault
        return CarrierDown("the carrier refused our API key (401)")
    message = ""
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        message = str(response.json()["error"].get("message", ""))
    return CarrierRefused(response.status_code, _code(response), message)


def _text(data: dict[str, Any], name: str, maximum: int = 100) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not 1 <= len(value) <= maximum:
        raise _Malformed(f"{name} is not a string of 1 to {maximum} characters")
    return value


def parse_label(data: Any) -> CarrierLabel:
    if not isinstance(data, dict):
        raise _Malformed("a shipment is an object")
    label_url = data.get("label_url")
    return CarrierLabel(
        id=_text(data, "id"),
        tracking_number=_text(data, "tracking_number"),
        label_url=label_url if isinstance(label_url, str) and len(label_url) <= 500 else None,
        reference=str(data.get("reference") or "")[:MAX_TEXT],
    )


class SandboxTrackingVerifier:
    """Checks `Sandbox-Signature` (platform.security.webhooks) and the event's shape."""

    def __init__(self, *, secret: str, tolerance_seconds: float = 300.0) -> None:
        self._secret = secret
        self._tolerance = tolerance_seconds

    def verify(self, body: bytes, signature_header: str | None, *, now: float) -> TrackingReport:
        try:
            check_signature(
                self._secret, body, signature_header, now=now, tolerance_seconds=self._tolerance
            )
        except SignatureMismatch as error:
            raise InvalidWebhookSignature(str(error)) from None
        except SignatureTooOld as error:
            raise WebhookOutsideTolerance(str(error)) from None
        try:
            return parse_tracking(orjson.loads(body))
        except (orjson.JSONDecodeError, _Malformed) as error:
            raise InvalidWebhookPayload(
                f"The webhook body is not a tracking event ({error})."
            ) from None


def parse_tracking(data: Any) -> TrackingReport:
    if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
        raise _Malformed("an event is an object with data")
    event = data["data"]
    try:
        occurred_at = datetime.fromisoformat(_text(event, "occurred_at", 40))
    except ValueError:
        raise _Malformed("occurred_at is not an ISO 8601 time") from None
    if occurred_at.tzinfo is None:
        raise _Malformed("occurred_at has no time zone")
    location = event.get("location")
    return TrackingReport(
        event_id=_text(data, "id"),
        carrier_shipment_id=_text(event, "shipment_id"),
        reference=str(event.get("reference") or "")[:36],
        status=_text(event, "status", 24),
        occurred_at=occurred_at,
        location=location[:MAX_TEXT] if isinstance(location, str) else None,
    )
