"""The sandbox PSP (docs/sandbox-psp.md) over real HTTP against the real `ironcart sandbox-psp`
process: payments, every error of the contract, idempotency (replay, reuse, 50 concurrent
identical calls, a held key), tok_retry, call faults, signed webhooks and their faults, and a
restart on the same store.

Tests that only compare "before" with "after" share one process (`shared`); tests that assert
a whole ledger, set faults or restart get their own.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.psp import PspProcess, WebhookReceiver, receiving_webhooks, running_psp

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

PAYMENT_ID = re.compile(r"pay_[0-9A-Z]{26}")
REFUND_ID = re.compile(r"re_[0-9A-Z]{26}")
EVENT_ID = re.compile(r"evt_[0-9A-Z]{26}")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
UNKNOWN_PAYMENT = "pay_" + "0" * 26
DEFAULT_FAULTS = {
    "error_rate": 0.0,
    "latency_ms": 0,
    "latency_rate": 0.0,
    "timeout_rate": 0.0,
    "timeout_ms": 30000,
    "webhook_drop_rate": 0.0,
    "webhook_duplicate_rate": 0.0,
    "webhook_reorder": False,
    "webhook_delay_ms": 0,
    "seed": None,
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PspProcess]:
    async with running_psp(tmp_path_factory.mktemp("shared-psp")) as process:
        yield process


@pytest.fixture
async def client(shared: PspProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with shared.client() as http:
        yield http


@pytest.fixture
async def psp(tmp_path: Path) -> AsyncIterator[PspProcess]:
    async with running_psp(tmp_path) as process:
        yield process


@pytest.fixture
async def own(psp: PspProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with psp.client() as http:
        yield http


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with receiving_webhooks() as webhook_receiver:
        yield webhook_receiver


@pytest.fixture
async def hooked(tmp_path: Path, receiver: WebhookReceiver) -> AsyncIterator[httpx.AsyncClient]:
    async with running_psp(tmp_path, webhook_url=receiver.url) as process, process.client() as http:
        yield http


def _key() -> str:
    return f"key-{uuid.uuid4().hex}"


def _order(
    amount: int = 1999, *, card: str = "tok_visa", reference: str | None = None
) -> dict[str, Any]:
    reference = reference or f"order-{uuid.uuid4().hex[:12]}"
    return {"amount": amount, "currency": "USD", "card_token": card, "reference": reference}


async def _post(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], key: str | None = None
) -> httpx.Response:
    return await client.post(path, json=body, headers={"Idempotency-Key": key or _key()})


async def _authorized(client: httpx.AsyncClient, amount: int = 1999) -> dict[str, Any]:
    response = await _post(client, "/v1/payments", _order(amount))
    assert response.status_code == 201, response.text
    payment: dict[str, Any] = response.json()
    return payment


async def _captured(client: httpx.AsyncClient, amount: int = 1999) -> dict[str, Any]:
    payment = await _authorized(client, amount)
    response = await _post(client, f"/v1/payments/{payment['id']}/capture", {})
    assert response.status_code == 200, response.text
    captured: dict[str, Any] = response.json()
    return captured


async def _listing(client: httpx.AsyncClient, path: str) -> list[dict[str, Any]]:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def _effects(client: httpx.AsyncClient) -> list[tuple[str, str, int]]:
    ledger = await _listing(client, "/_sandbox/ledger")
    return [(entry["payment_id"], entry["operation"], entry["amount"]) for entry in ledger]


def _error_code(response: httpx.Response) -> str:
    error = response.json()["error"]
    assert set(error) == {"code", "message"}
    code: str = error["code"]
    return code


async def _settled_outbox(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """The webhook outbox once no event is being sent (the receiver sees a POST first)."""
    for _ in range(100):
        outbox = await _listing(client, "/_sandbox/webhooks")
        if all(event["state"] != "sending" for event in outbox):
            return outbox
        await asyncio.sleep(0.02)
    raise AssertionError(f"webhooks still sending: {outbox}")


async def _set_faults(client: httpx.AsyncClient, **faults: Any) -> None:
    response = await client.put("/_sandbox/faults", json=faults)
    assert response.status_code == 200, response.text


# Authentication and health


async def test_health_answers_without_a_key(shared: PspProcess) -> None:
    async with httpx.AsyncClient(base_url=shared.url) as anonymous:
        response = await anonymous.get("/_sandbox/health")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer sk_test_wrong", "sk_test_sandbox_psp", "Basic c2tfdGVzdA=="],
    ids=["none", "wrong-key", "no-bearer", "basic"],
)
async def test_calls_without_the_api_key_are_refused(
    shared: PspProcess, client: httpx.AsyncClient, authorization: str | None
) -> None:
    before = await _listing(client, "/_sandbox/payments")
    headers = {"Idempotency-Key": _key()} | (
        {"Authorization": authorization} if authorization else {}
    )
    async with httpx.AsyncClient(base_url=shared.url, headers=headers) as stranger:
        created = await stranger.post("/v1/payments", json=_order())
        ledger = await stranger.get("/_sandbox/ledger")
        faults = await stranger.put("/_sandbox/faults", json={"error_rate": 1.0})

    assert [created.status_code, ledger.status_code, faults.status_code] == [401, 401, 401]
    assert _error_code(created) == "unauthorized"
    assert await _listing(client, "/_sandbox/payments") == before
    assert (await client.get("/_sandbox/faults")).json() == DEFAULT_FAULTS


# Happy paths


async def test_authorize_capture_and_refund_in_full(own: httpx.AsyncClient) -> None:
    authorize_key, capture_key, refund_key = _key(), _key(), _key()
    body = _order(1999, reference="order-42")

    authorized = await _post(own, "/v1/payments", body, authorize_key)
    payment_id = authorized.json()["id"]
    captured = await _post(own, f"/v1/payments/{payment_id}/capture", {}, capture_key)
    refund = await _post(own, f"/v1/payments/{payment_id}/refunds", {"amount": 1999}, refund_key)
    final = await own.get(f"/v1/payments/{payment_id}")

    assert authorized.status_code == 201
    payment = authorized.json()
    assert PAYMENT_ID.fullmatch(payment["id"])
    assert TIMESTAMP.fullmatch(payment["created_at"])
    assert payment == {
        "id": payment_id,
        "status": "authorized",
        "amount": 1999,
        "currency": "USD",
        "amount_captured": 0,
        "amount_refunded": 0,
        "reference": "order-42",
        "card_token": "tok_visa",
        "decline_code": None,
        "created_at": payment["created_at"],
        "updated_at": payment["created_at"],
    }
    assert captured.status_code == 200
    assert captured.json() | {"updated_at": None} == payment | {
        "status": "captured",
        "amount_captured": 1999,
        "updated_at": None,
    }
    assert refund.status_code == 201
    assert REFUND_ID.fullmatch(refund.json()["id"])
    assert refund.json() == {
        "id": refund.json()["id"],
        "payment_id": payment_id,
        "amount": 1999,
        "status": "succeeded",
    }
    assert final.json()["status"] == "refunded"
    assert (final.json()["amount_captured"], final.json()["amount_refunded"]) == (1999, 1999)
    ledger = await _listing(own, "/_sandbox/ledger")
    assert [(e["operation"], e["amount"], e["idempotency_key"]) for e in ledger] == [
        ("authorize", 1999, authorize_key),
        ("capture", 1999, capture_key),
        ("refund", 1999, refund_key),
    ]
    assert {e["payment_id"] for e in ledger} == {payment_id}
    assert await _listing(own, "/_sandbox/webhooks") == []  # no --webhook-url, no events


async def test_partial_capture_then_partial_refunds_up_to_the_captured_amount(
    own: httpx.AsyncClient,
) -> None:
    payment = await _authorized(own, 5000)
    pid = payment["id"]

    captured = await _post(own, f"/v1/payments/{pid}/capture", {"amount": 3000})
    first = await _post(own, f"/v1/payments/{pid}/refunds", {"amount": 1000})
    after_first = (await own.get(f"/v1/payments/{pid}")).json()
    second = await _post(own, f"/v1/payments/{pid}/refunds", {"amount": 2000})
    too_much = await _post(own, f"/v1/payments/{pid}/refunds", {"amount": 1})

    assert (captured.status_code, captured.json()["amount_captured"]) == (200, 3000)
    assert [first.status_code, second.status_code, too_much.status_code] == [201, 201, 409]
    assert (after_first["status"], after_first["amount_refunded"]) == ("partially_refunded", 1000)
    assert _error_code(too_much) == "refund_exceeds_captured"
    final = (await own.get(f"/v1/payments/{pid}")).json()
    assert (final["status"], final["amount_captured"], final["amount_refunded"]) == (
        "refunded",
        3000,
        3000,
    )
    assert await _effects(own) == [
        (pid, "authorize", 5000),
        (pid, "capture", 3000),
        (pid, "refund", 1000),
        (pid, "refund", 2000),
    ]


async def test_voiding_twice_is_one_void(own: httpx.AsyncClient) -> None:
    payment = await _authorized(own)

    first = await _post(own, f"/v1/payments/{payment['id']}/void", {})
    again = await _post(own, f"/v1/payments/{payment['id']}/void", {})

    assert (first.status_code, first.json()["status"]) == (200, "voided")
    assert (again.status_code, again.json()) == (200, first.json())
    assert "idempotent-replayed" not in again.headers
    assert await _effects(own) == [
        (payment["id"], "authorize", 1999),
        (payment["id"], "void", 1999),
    ]


@pytest.mark.parametrize(
    ("token", "decline_code"),
    [("tok_decline", "card_declined"), ("tok_insufficient_funds", "insufficient_funds")],
    ids=["declined", "insufficient-funds"],
)
async def test_a_declined_card_is_a_402_payment_with_no_effect(
    client: httpx.AsyncClient, token: str, decline_code: str
) -> None:
    effects_before = await _effects(client)

    response = await _post(client, "/v1/payments", _order(card=token))

    assert response.status_code == 402
    payment = response.json()
    assert (payment["status"], payment["decline_code"], payment["card_token"]) == (
        "declined",
        decline_code,
        token,
    )
    assert (await client.get(f"/v1/payments/{payment['id']}")).json() == payment
    assert await _effects(client) == effects_before


async def test_mastercard_is_approved(client: httpx.AsyncClient) -> None:
    response = await _post(client, "/v1/payments", _order(card="tok_mastercard"))

    assert (response.status_code, response.json()["status"]) == (201, "authorized")


# Lookups


async def test_lookups_by_id_reference_and_idempotency_key(client: httpx.AsyncClient) -> None:
    reference, key = f"order-{uuid.uuid4().hex}", _key()
    first = (await _post(client, "/v1/payments", _order(100, reference=reference), key)).json()
    other = await _post(
        client, "/v1/payments", _order(200, card="tok_decline", reference=reference)
    )
    await _authorized(client)  # another reference

    by_id = await client.get(f"/v1/payments/{first['id']}")
    by_reference = await client.get("/v1/payments", params={"reference": reference})
    by_key = await client.get(f"/v1/payments/by-idempotency-key/{key}")

    assert (by_id.status_code, by_id.json()) == (200, first)
    assert by_reference.json() == {"data": [first, other.json()]}
    assert (by_key.status_code, by_key.json()) == (200, first)


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        (f"/v1/payments/{UNKNOWN_PAYMENT}", 404, "payment_not_found"),
        ("/v1/payments/by-idempotency-key/never-sent", 404, "payment_not_found"),
        ("/v1/payments", 400, "invalid_request"),
        ("/v1/nothing-here", 404, "not_found"),
    ],
    ids=["unknown-id", "unknown-key", "list-without-reference", "unknown-route"],
)
async def test_failed_lookups(client: httpx.AsyncClient, path: str, status: int, code: str) -> None:
    response = await client.get(path)

    assert (response.status_code, _error_code(response)) == (status, code)


# Every refusal of the table, and that it changed nothing


INVALID_CREATES = [
    pytest.param(_order(card="tok_amex"), "invalid_card_token", id="unknown-card-token"),
    pytest.param(_order(0), "invalid_request", id="zero-amount"),
    pytest.param(_order(-5), "invalid_request", id="negative-amount"),
    pytest.param(_order() | {"amount": 19.99}, "invalid_request", id="decimal-amount"),
    pytest.param(_order() | {"amount": "1999"}, "invalid_request", id="string-amount"),
    pytest.param(_order() | {"currency": "usd"}, "invalid_request", id="lowercase-currency"),
    pytest.param(
        {"amount": 1, "currency": "USD", "card_token": "tok_visa"},
        "invalid_request",
        id="no-reference",
    ),
    pytest.param(_order(reference="r" * 201), "invalid_request", id="long-reference"),
    pytest.param(b"{not json", "invalid_request", id="not-json"),
    pytest.param(b"[1, 2]", "invalid_request", id="not-an-object"),
]


@pytest.mark.parametrize(("body", "code"), INVALID_CREATES)
async def test_an_invalid_payment_request_is_a_400_with_no_payment(
    client: httpx.AsyncClient, body: dict[str, Any] | bytes, code: str
) -> None:
    payments_before = await _listing(client, "/_sandbox/payments")
    key = _key()
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content

    response = await client.post("/v1/payments", content=content, headers={"Idempotency-Key": key})
    corrected = await _post(client, "/v1/payments", _order(), key)

    assert (response.status_code, _error_code(response)) == (400, code)
    assert await _listing(client, "/_sandbox/payments") == [*payments_before, corrected.json()]
    assert corrected.status_code == 201  # a 400 is not stored: the same key is still free


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "missing_idempotency_key"), ({"Idempotency-Key": "k" * 201}, "invalid_idempotency_key")],
    ids=["missing", "too-long"],
)
async def test_a_post_needs_an_idempotency_key(
    client: httpx.AsyncClient, headers: dict[str, str], code: str
) -> None:
    payments_before = await _listing(client, "/_sandbox/payments")

    response = await client.post("/v1/payments", json=_order(), headers=headers)

    assert (response.status_code, _error_code(response)) == (400, code)
    assert await _listing(client, "/_sandbox/payments") == payments_before


async def _payment_in(client: httpx.AsyncClient, state: str) -> str:
    if state == "unknown":
        return UNKNOWN_PAYMENT
    if state == "declined":
        return str((await _post(client, "/v1/payments", _order(card="tok_decline"))).json()["id"])
    payment = await (_captured(client) if state == "captured" else _authorized(client))
    if state == "voided":
        await _post(client, f"/v1/payments/{payment['id']}/void", {})
    return str(payment["id"])


REFUSED_OPERATIONS = [
    ("declined", "capture", {}, 409, "invalid_state"),
    ("voided", "capture", {}, 409, "invalid_state"),
    ("captured", "capture", {}, 409, "already_captured"),
    ("authorized", "capture", {"amount": 2000}, 400, "amount_exceeds_authorized"),
    ("authorized", "capture", {"amount": 0}, 400, "invalid_request"),
    ("captured", "void", {}, 409, "invalid_state"),
    ("declined", "void", {}, 409, "invalid_state"),
    ("authorized", "refunds", {"amount": 1}, 409, "refund_exceeds_captured"),
    ("captured", "refunds", {"amount": 2000}, 409, "refund_exceeds_captured"),
    ("captured", "refunds", {}, 400, "invalid_request"),
    ("unknown", "capture", {}, 404, "payment_not_found"),
    ("unknown", "void", {}, 404, "payment_not_found"),
    ("unknown", "refunds", {"amount": 1}, 404, "payment_not_found"),
]


@pytest.mark.parametrize(
    ("state", "operation", "body", "status", "code"),
    REFUSED_OPERATIONS,
    ids=[f"{operation}-{state}-{code}" for state, operation, _, _, code in REFUSED_OPERATIONS],
)
async def test_a_refused_operation_changes_nothing(
    client: httpx.AsyncClient,
    state: str,
    operation: str,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    payment_id = await _payment_in(client, state)
    payments_before, effects_before = (
        await _listing(client, "/_sandbox/payments"),
        await _effects(client),
    )

    response = await _post(client, f"/v1/payments/{payment_id}/{operation}", body)

    assert (response.status_code, _error_code(response)) == (status, code)
    assert await _listing(client, "/_sandbox/payments") == payments_before
    assert await _effects(client) == effects_before


# Idempotency


async def test_same_key_same_body_replays_and_another_body_is_refused(
    own: httpx.AsyncClient,
) -> None:
    key, body = _key(), _order(1999)

    first = await _post(own, "/v1/payments", body, key)
    replay = await _post(own, "/v1/payments", body, key)
    other_body = await _post(own, "/v1/payments", body | {"amount": 2999}, key)
    other_path = await _post(own, f"/v1/payments/{first.json()['id']}/capture", {}, key)

    assert (first.status_code, "idempotent-replayed" in first.headers) == (201, False)
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (201, "true")
    assert replay.content == first.content
    assert (other_body.status_code, _error_code(other_body)) == (422, "idempotency_key_reused")
    assert (other_path.status_code, _error_code(other_path)) == (422, "idempotency_key_reused")
    assert await _effects(own) == [(first.json()["id"], "authorize", 1999)]
    assert (await own.get(f"/v1/payments/{first.json()['id']}")).json()["status"] == "authorized"


async def test_a_stored_refusal_is_replayed(own: httpx.AsyncClient) -> None:
    payment = await _captured(own)
    key = _key()

    refused = await _post(own, f"/v1/payments/{payment['id']}/refunds", {"amount": 5000}, key)
    replayed = await _post(own, f"/v1/payments/{payment['id']}/refunds", {"amount": 5000}, key)

    assert (refused.status_code, _error_code(refused)) == (409, "refund_exceeds_captured")
    assert (replayed.status_code, replayed.content) == (409, refused.content)
    assert replayed.headers["idempotent-replayed"] == "true"


async def test_fifty_concurrent_identical_requests_make_one_payment(
    own: httpx.AsyncClient,
) -> None:
    key, body = _key(), _order(4200)

    responses = await asyncio.gather(*(_post(own, "/v1/payments", body, key) for _ in range(50)))

    created = [r for r in responses if r.status_code == 201]
    fresh = [r for r in created if "idempotent-replayed" not in r.headers]
    in_use = [r for r in responses if r.status_code == 409]
    assert len(created) + len(in_use) == 50
    assert len(fresh) == 1
    assert {r.content for r in created} == {fresh[0].content}
    assert {_error_code(r) for r in in_use} <= {"idempotency_key_in_use"}
    payment_id = fresh[0].json()["id"]
    assert await _effects(own) == [(payment_id, "authorize", 4200)]
    assert [p["id"] for p in await _listing(own, "/_sandbox/payments")] == [payment_id]


async def test_a_key_held_by_a_slow_request_answers_409_until_it_ends(
    own: httpx.AsyncClient,
) -> None:
    key, body = _key(), _order(700)
    await _set_faults(own, latency_ms=1500)

    responses = await asyncio.gather(*(_post(own, "/v1/payments", body, key) for _ in range(50)))
    await own.delete("/_sandbox/faults")
    after = await _post(own, "/v1/payments", body, key)

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 49
    assert {_error_code(r) for r in responses if r.status_code == 409} == {"idempotency_key_in_use"}
    [created] = [r for r in responses if r.status_code == 201]
    assert (after.status_code, after.headers["idempotent-replayed"]) == (201, "true")
    assert after.content == created.content
    assert await _effects(own) == [(created.json()["id"], "authorize", 700)]


async def test_tok_retry_fails_the_first_attempt_of_each_key(own: httpx.AsyncClient) -> None:
    key, body = _key(), _order(300, card="tok_retry")

    first = await _post(own, "/v1/payments", body, key)
    lookup_after_first = await own.get(f"/v1/payments/by-idempotency-key/{key}")
    effects_after_first = await _effects(own)
    second = await _post(own, "/v1/payments", body, key)
    third = await _post(own, "/v1/payments", body, key)
    other_key = await _post(own, "/v1/payments", body)

    assert (first.status_code, _error_code(first)) == (503, "try_again")
    assert lookup_after_first.status_code == 404
    assert effects_after_first == []
    assert (second.status_code, second.json()["status"]) == (201, "authorized")
    assert (third.status_code, third.content, third.headers["idempotent-replayed"]) == (
        201,
        second.content,
        "true",
    )
    assert other_key.status_code == 503
    assert await _effects(own) == [(second.json()["id"], "authorize", 300)]


async def test_concurrent_refunds_never_exceed_the_captured_amount(own: httpx.AsyncClient) -> None:
    payment = await _captured(own, 1000)

    responses = await asyncio.gather(
        *(_post(own, f"/v1/payments/{payment['id']}/refunds", {"amount": 300}) for _ in range(20))
    )

    assert sorted(r.status_code for r in responses) == [201] * 3 + [409] * 17
    final = (await own.get(f"/v1/payments/{payment['id']}")).json()
    assert (final["status"], final["amount_refunded"]) == ("partially_refunded", 900)
    refunds = [e for e in await _effects(own) if e[1] == "refund"]
    assert refunds == [(payment["id"], "refund", 300)] * 3


# Fault injection of calls


async def test_faults_are_set_read_and_reset(own: httpx.AsyncClient) -> None:
    put = await own.put("/_sandbox/faults", json={"error_rate": 0.25, "latency_ms": 5, "seed": 7})
    read = await own.get("/_sandbox/faults")
    invalid = [
        await own.put("/_sandbox/faults", json=body)
        for body in ({"error_rate": 2}, {"typo_rate": 0.1}, {"webhook_reorder": "yes"})
    ]
    still = await own.get("/_sandbox/faults")
    reset = await own.delete("/_sandbox/faults")

    expected = DEFAULT_FAULTS | {
        "error_rate": 0.25,
        "latency_ms": 5,
        "latency_rate": 1.0,
        "seed": 7,
    }
    assert (put.status_code, put.json(), read.json()) == (200, expected, expected)
    assert [(r.status_code, _error_code(r)) for r in invalid] == [(400, "invalid_request")] * 3
    assert still.json() == expected
    assert (reset.status_code, reset.json()) == (200, DEFAULT_FAULTS)


async def test_a_seeded_error_rate_repeats_the_same_failures(own: httpx.AsyncClient) -> None:
    async def statuses() -> list[int]:
        await _set_faults(own, error_rate=0.5, seed=42)
        return [(await own.get(f"/v1/payments/{UNKNOWN_PAYMENT}")).status_code for _ in range(20)]

    first, second = await statuses(), await statuses()

    assert first == second
    assert set(first) == {404, 500}


async def test_injected_errors_store_nothing_and_the_retry_succeeds(own: httpx.AsyncClient) -> None:
    key, body = _key(), _order(1500)
    await _set_faults(own, error_rate=1.0)

    failed = await _post(own, "/v1/payments", body, key)
    lookup = await own.get(f"/v1/payments/by-idempotency-key/{key}")
    payments, effects = await _listing(own, "/_sandbox/payments"), await _effects(own)
    await own.delete("/_sandbox/faults")
    lookup_after_reset = await own.get(f"/v1/payments/by-idempotency-key/{key}")
    retried = await _post(own, "/v1/payments", body, key)

    assert (failed.status_code, _error_code(failed)) == (500, "internal_error")
    assert lookup.status_code == 500
    assert (payments, effects) == ([], [])
    assert lookup_after_reset.status_code == 404
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert await _effects(own) == [(retried.json()["id"], "authorize", 1500)]


async def test_a_timed_out_call_took_effect_and_its_retry_replays(
    psp: PspProcess, own: httpx.AsyncClient
) -> None:
    key, body = _key(), _order(2500)
    await _set_faults(own, timeout_rate=1.0, timeout_ms=2000)

    async with psp.client(timeout=0.5) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await _post(impatient, "/v1/payments", body, key)
    await own.delete("/_sandbox/faults")
    lookup = await own.get(f"/v1/payments/by-idempotency-key/{key}")
    retried = await _post(own, "/v1/payments", body, key)

    assert (lookup.status_code, lookup.json()["status"]) == (200, "authorized")
    assert (retried.status_code, retried.headers["idempotent-replayed"]) == (201, "true")
    assert retried.json() == lookup.json()
    assert await _effects(own) == [(lookup.json()["id"], "authorize", 2500)]


# Webhooks


async def test_every_change_is_a_signed_webhook(
    hooked: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    authorized = (await _post(hooked, "/v1/payments", _order(800))).json()
    await receiver.wait_for(1)
    captured = (await _post(hooked, f"/v1/payments/{authorized['id']}/capture", {})).json()
    await receiver.wait_for(2)
    refund = await _post(hooked, f"/v1/payments/{authorized['id']}/refunds", {"amount": 300})
    await receiver.wait_for(3)
    declined = (await _post(hooked, "/v1/payments", _order(card="tok_decline"))).json()
    await receiver.wait_for(4)
    to_void = await _authorized(hooked)
    await receiver.wait_for(5)
    voided = (await _post(hooked, f"/v1/payments/{to_void['id']}/void", {})).json()

    deliveries = await receiver.wait_for(6)
    events = [delivery.event for delivery in deliveries]
    assert [event["type"] for event in events] == [
        "payment.authorized",
        "payment.captured",
        "payment.refunded",
        "payment.declined",
        "payment.authorized",
        "payment.voided",
    ]
    assert [event["data"]["payment"] for event in events[:2]] == [authorized, captured]
    assert events[2]["data"]["payment"]["status"] == "partially_refunded"
    assert events[2]["data"]["refund"] == refund.json()
    assert [event["data"]["payment"] for event in events[3:]] == [declined, to_void, voided]
    assert all(EVENT_ID.fullmatch(event["id"]) for event in events)
    assert len({event["id"] for event in events}) == 6
    assert all(abs(event["created"] - time.time()) < 60 for event in events)
    assert all(delivery.signed_with("whsec_sandbox_test") for delivery in deliveries)
    assert not deliveries[0].signed_with("another-secret")
    assert not deliveries[0].signed_with("whsec_sandbox_test", now=time.time() + 301)
    assert {d.headers["content-type"] for d in deliveries} == {"application/json"}


async def test_a_refused_webhook_is_retried_until_accepted(
    hooked: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    receiver.answers = [500, 503]

    payment = await _authorized(hooked)
    await receiver.wait_for(1)

    assert [d.answered for d in receiver.deliveries] == [500, 503, 200]
    assert {d.body for d in receiver.deliveries} == {receiver.deliveries[0].body}
    assert receiver.deliveries[0].event["data"]["payment"] == payment
    assert all(d.signed_with("whsec_sandbox_test") for d in receiver.deliveries)
    [outbox] = await _settled_outbox(hooked)
    assert (outbox["state"], outbox["attempts"], outbox["last_status"]) == ("delivered", 3, 200)


async def test_duplicated_webhooks_arrive_twice_with_one_id(
    hooked: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    await _set_faults(hooked, webhook_duplicate_rate=1.0)

    await _authorized(hooked)
    deliveries = await receiver.wait_for(2)
    await asyncio.sleep(0.3)

    assert len(receiver.deliveries) == 2
    assert deliveries[0].body == deliveries[1].body
    assert deliveries[0].event["type"] == "payment.authorized"


async def test_dropped_webhooks_never_arrive(
    hooked: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    await _set_faults(hooked, webhook_drop_rate=1.0)

    payment = await _captured(hooked)
    await asyncio.sleep(1.0)

    assert receiver.deliveries == []
    outbox = await _listing(hooked, "/_sandbox/webhooks")
    assert [(e["type"], e["state"], e["attempts"]) for e in outbox] == [
        ("payment.authorized", "dropped", 0),
        ("payment.captured", "dropped", 0),
    ]
    assert (await hooked.get(f"/v1/payments/{payment['id']}")).json()["status"] == "captured"


async def test_reordered_webhooks_wait_for_a_flush_then_arrive_newest_first(
    hooked: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    await _set_faults(hooked, webhook_reorder=True)
    first = await _captured(hooked)
    second = await _authorized(hooked)
    await asyncio.sleep(0.5)
    held = list(receiver.deliveries)

    flushed = await hooked.post("/_sandbox/webhooks/flush")
    deliveries = await receiver.wait_for(3)

    assert held == []
    assert flushed.json() == {"flushed": 3}
    assert [(d.event["type"], d.event["data"]["payment"]["id"]) for d in deliveries] == [
        ("payment.authorized", second["id"]),
        ("payment.captured", first["id"]),
        ("payment.authorized", first["id"]),
    ]


async def test_delayed_webhooks_arrive_after_the_delay(
    hooked: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    await _set_faults(hooked, webhook_delay_ms=800)

    answered_at = time.monotonic()
    await _authorized(hooked)
    [delivery] = await receiver.wait_for(1)

    assert 0.8 <= delivery.at - answered_at < 3.0


async def test_a_restart_keeps_payments_keys_and_unsent_webhooks(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    key, body = _key(), _order(1234)
    receiver.answers = [500] * 1000  # the shop is down
    async with running_psp(tmp_path, webhook_url=receiver.url) as before, before.client() as client:
        created = await _post(client, "/v1/payments", body, key)
        payment = created.json()
        captured = await _post(client, f"/v1/payments/{payment['id']}/capture", {})
        while len(receiver.deliveries) < 2:
            await asyncio.sleep(0.05)
        effects = await _effects(client)
        stopped = await before.stop()

    receiver.answers.clear()  # the shop is back
    async with running_psp(tmp_path, webhook_url=receiver.url) as after, after.client() as client:
        fetched = await client.get(f"/v1/payments/{payment['id']}")
        replayed = await _post(client, "/v1/payments", body, key)
        deliveries = await receiver.wait_for(2, timeout=10)
        effects_after = await _effects(client)

    assert stopped == 0  # SIGTERM is a clean shutdown
    assert after.pid != before.pid
    assert fetched.json() == captured.json()
    assert (replayed.status_code, replayed.content) == (201, created.content)
    assert replayed.headers["idempotent-replayed"] == "true"
    assert (
        effects_after
        == effects
        == [
            (payment["id"], "authorize", 1234),
            (payment["id"], "capture", 1234),
        ]
    )
    assert sorted(d.event["type"] for d in deliveries) == ["payment.authorized", "payment.captured"]
