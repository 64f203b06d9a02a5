"""The sandbox carrier adapter's retries, through a scripted transport (no I/O): what is
retried with the same idempotency key (5xx, 429, 409 `idempotency_key_in_use`), what is a
definite refusal (another 4xx), and that exhausted retries are `CarrierDown`."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from ironcart.shipping.carrier import CarrierDown, CarrierLabel, CarrierRefused
from ironcart.shipping.sandbox_carrier import HttpSandboxCarrier

pytestmark = pytest.mark.anyio
LABEL = {"id": "shp_1", "tracking_number": "SBX1", "label_url": None, "reference": "ship-1"}


def _error(status: int, code: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": code}})


class _Scripted:
    """Answers each call with the next response; records the idempotency keys it saw."""

    def __init__(self, answers: list[httpx.Response]) -> None:
        self._answers: Iterator[httpx.Response] = iter(answers)
        self.keys: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.keys.append(request.headers["Idempotency-Key"])
        return next(self._answers)


async def _create(script: _Scripted) -> CarrierLabel:
    carrier = HttpSandboxCarrier(
        base_url="http://carrier.test",
        api_key="ck_test",
        max_attempts=4,
        backoff_initial_seconds=0.001,
        backoff_max_seconds=0.001,
        transport=httpx.MockTransport(script),
    )
    try:
        return await carrier.create_shipment(
            reference="ship-1",
            country="GB",
            postal_code="SW1A 1AA",
            lines=[("SKU-1", 1)],
            idempotency_key="ship-1",
        )
    finally:
        await carrier.aclose()


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(_error(409, "idempotency_key_in_use"), id="409-key-in-use"),
        pytest.param(_error(429, "rate_limited"), id="429"),
        pytest.param(_error(503, "try_again"), id="503"),
    ],
)
async def test_a_retryable_answer_is_retried_with_the_same_key(first: httpx.Response) -> None:
    script = _Scripted([first, first, httpx.Response(201, json=LABEL)])

    label = await _create(script)

    assert (label.id, label.tracking_number) == ("shp_1", "SBX1")
    assert script.keys == ["ship-1"] * 3


async def test_a_carrier_still_busy_with_the_key_after_every_attempt_is_down() -> None:
    script = _Scripted([_error(409, "idempotency_key_in_use")] * 4)

    with pytest.raises(CarrierDown):
        await _create(script)

    assert script.keys == ["ship-1"] * 4


@pytest.mark.parametrize(
    ("status", "code"),
    [(422, "undeliverable"), (409, "idempotency_key_reused"), (400, "invalid_request")],
    ids=["422", "409-other", "400"],
)
async def test_another_4xx_is_a_definite_refusal_at_once(status: int, code: str) -> None:
    script = _Scripted([_error(status, code)])

    with pytest.raises(CarrierRefused) as refused:
        await _create(script)

    assert (refused.value.status, refused.value.code) == (status, code)
    assert script.keys == ["ship-1"]
