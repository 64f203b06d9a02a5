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

import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Unpack

import httpx
import orjson

from ironcart.platform.http.provider import (
    ProviderCallFailed,
    ProviderClient,
    ProviderOptions,
    error_code,
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


class HttpSandboxCarrier:
    def __init__(self, *, base_url: str, api_key: str, **options: Unpack[ProviderOptions]) -> None:
        options.setdefault("max_connections", 20)  # the bulkhead
        self._http = ProviderClient(
            base_url=base_url,
            api_key=api_key,
            dependency="carrier",
            retryable_codes=RETRYABLE_CODES,
            **options,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

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
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        try:
            return await self._http.call(method, path, body, idempotency_key)
        except ProviderCallFailed as error:
            raise CarrierDown(str(error)) from None


def _refused(response: httpx.Response) -> Exception:
    if response.status_code == 401:  # our key is wrong: nothing can work, no request is at fault
        return CarrierDown("the carrier refused our API key (401)")
    message = ""
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        message = str(response.json()["error"].get("message", ""))
    return CarrierRefused(response.status_code, error_code(response), message)


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
