"""The sandbox carrier (docs/sandbox-carrier.md) over real HTTP against the real
`ironcart sandbox-carrier` process: idempotent shipments, signed tracking webhooks, and the
faults tests use to disturb them (drop, duplicate, reorder, delay), the exception side state,
call faults, labels, and the auto-advance mode.

One process (posting to one webhook receiver) serves the module; each test watches only its
own shipments. Auto-advance moves every shipment, so it gets a process of its own.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.support.carrier import CarrierProcess, running_carrier
from tests.support.psp import Delivery, WebhookReceiver, receiving_webhooks

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SHIPMENT_ID = re.compile(r"shp_[0-9A-Z]{26}")
TRACKING_NUMBER = re.compile(r"SBX[0-9A-Z]{26}")
STEPS = ["picked_up", "in_transit", "out_for_delivery", "delivered"]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with receiving_webhooks() as webhook_receiver:
        yield webhook_receiver


@pytest.fixture(scope="module")
async def carrier(
    tmp_path_factory: pytest.TempPathFactory, receiver: WebhookReceiver
) -> AsyncIterator[CarrierProcess]:
    directory = tmp_path_factory.mktemp("sandbox-carrier")
    async with running_carrier(directory, webhook_url=receiver.url) as process:
        yield process


@pytest.fixture
async def client(carrier: CarrierProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with carrier.client() as http:
        yield http


def _body(country: str = "GB", reference: str | None = None) -> dict[str, Any]:
    return {
        "reference": reference or f"ref-{uuid.uuid4().hex[:12]}",
        "destination": {"country": country, "postal_code": "SW1A 1AA"},
        "lines": [{"sku": "SKU-1", "quantity": 2}],
    }


async def _create(
    client: httpx.AsyncClient, body: dict[str, Any] | None = None, key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key or uuid.uuid4().hex}
    return await client.post("/v1/shipments", json=body or _body(), headers=headers)


async def _shipment(client: httpx.AsyncClient) -> str:
    response = await _create(client)
    assert response.status_code == 201, response.text
    shipment_id: str = response.json()["id"]
    return shipment_id


async def _advance(client: httpx.AsyncClient, shipment_id: str, **body: Any) -> httpx.Response:
    return await client.post(f"/_sandbox/shipments/{shipment_id}/advance", json=body)


def _of(receiver: WebhookReceiver, shipment_id: str) -> list[Delivery]:
    return [d for d in receiver.accepted if d.event["data"]["shipment_id"] == shipment_id]


async def _deliveries(
    receiver: WebhookReceiver, shipment_id: str, count: int, timeout: float = 5.0
) -> list[Delivery]:
    """This shipment's deliveries, in arrival order, once there are at least `count`."""
    with anyio.fail_after(timeout):
        while len(found := _of(receiver, shipment_id)) < count:
            await anyio.sleep(0.02)
    return found


async def _outbox(client: httpx.AsyncClient, shipment_id: str) -> list[dict[str, Any]]:
    response = await client.get("/_sandbox/webhooks")
    assert response.status_code == 200, response.text
    return [row for row in response.json()["data"] if row["shipment_id"] == shipment_id]


def _occurred(delivery: Delivery) -> datetime:
    return datetime.fromisoformat(delivery.event["data"]["occurred_at"])


async def test_a_shipment_is_made_once_per_idempotency_key(client: httpx.AsyncClient) -> None:
    key, body = uuid.uuid4().hex, _body()

    created = await _create(client, body, key)
    replayed = await _create(client, body, key)
    reused = await _create(client, _body(), key)
    no_key = await client.post("/v1/shipments", json=_body())
    undeliverable = await _create(client, _body(country="ZZ"))
    bad_country = await _create(client, _body(country="gb"))

    assert created.status_code == 201, created.text
    shipment = created.json()
    assert SHIPMENT_ID.fullmatch(shipment["id"])
    assert TRACKING_NUMBER.fullmatch(shipment["tracking_number"])
    assert (shipment["status"], shipment["reference"]) == ("created", body["reference"])
    assert (replayed.status_code, replayed.content) == (201, created.content)
    assert replayed.headers["idempotent-replayed"] == "true"
    errors = [(r.status_code, r.json()["error"]["code"]) for r in (reused, no_key, undeliverable)]
    assert errors == [
        (422, "idempotency_key_reused"), (400, "missing_idempotency_key"), (422, "undeliverable"),
    ]  # fmt: skip
    assert (bad_country.status_code, bad_country.json()["error"]["code"]) == (
        400,
        "invalid_request",
    )
    read = await client.get(f"/v1/shipments/{shipment['id']}")
    assert read.json() == {**shipment, "tracking": []}
    missing = await client.get("/v1/shipments/shp_" + "0" * 26)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "shipment_not_found")
    async with httpx.AsyncClient(base_url=str(client.base_url)) as anonymous:
        assert (await anonymous.get(f"/v1/shipments/{shipment['id']}")).status_code == 401


async def test_the_label_url_serves_the_label(client: httpx.AsyncClient) -> None:
    shipment = (await _create(client)).json()

    label = await client.get(shipment["label_url"])

    assert label.status_code == 200, label.text
    assert label.headers["content-type"] == "text/plain; charset=utf-8"
    assert shipment["tracking_number"] in label.text
    assert "2 x SKU-1" in label.text
    missing = await client.get("/v1/shipments/shp_" + "0" * 26 + "/label")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "shipment_not_found")


async def test_an_advance_reports_every_step_signed(
    client: httpx.AsyncClient, carrier: CarrierProcess, receiver: WebhookReceiver
) -> None:
    shipment_id = await _shipment(client)

    advanced = await _advance(client, shipment_id, status="delivered", location="Leeds hub")

    assert advanced.status_code == 200, advanced.text
    events = advanced.json()["events"]
    assert [e["status"] for e in events] == STEPS
    assert advanced.json()["shipment"]["status"] == "delivered"
    arrived = await _deliveries(receiver, shipment_id, 4)
    assert all(d.signed_with(carrier.secret) for d in arrived)
    assert not any(d.signed_with("another-secret") for d in arrived)
    # Sent at once: arrival order is not promised, `occurred_at` is (1 ms apart).
    by_time = sorted(arrived, key=_occurred)
    assert [d.event["id"] for d in by_time] == [e["id"] for e in events]
    assert [d.event["data"]["status"] for d in by_time] == STEPS
    assert {d.event["data"]["location"] for d in arrived} == {"Leeds hub"}
    assert {d.event["type"] for d in arrived} == {"shipment.tracking"}
    tracking = (await client.get(f"/v1/shipments/{shipment_id}")).json()["tracking"]
    assert [(t["id"], t["status"]) for t in tracking] == [(e["id"], e["status"]) for e in events]
    backwards = await _advance(client, shipment_id, status="in_transit")
    assert (backwards.status_code, backwards.json()["error"]["code"]) == (409, "invalid_state")
    rows = await _outbox(client, shipment_id)
    assert [(row["state"], row["attempts"], row["last_status"]) for row in rows] == [
        ("delivered", 1, 200)
    ] * 4


async def test_duplicate_sends_each_event_twice_with_the_same_id(
    client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    shipment_id = await _shipment(client)

    advanced = await _advance(client, shipment_id, status="in_transit", duplicate=True)

    events = advanced.json()["events"]
    arrived = await _deliveries(receiver, shipment_id, 4)
    assert Counter(d.event["id"] for d in arrived) == {e["id"]: 2 for e in events}
    assert set(Counter(d.body for d in arrived).values()) == {2}  # each copy is the same bytes
    tracking = (await client.get(f"/v1/shipments/{shipment_id}")).json()["tracking"]
    assert [t["status"] for t in tracking] == ["picked_up", "in_transit"]  # recorded once


async def test_reorder_sends_the_newest_event_first(
    client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    shipment_id = await _shipment(client)

    advanced = await _advance(client, shipment_id, status="delivered", reorder=True)

    events = advanced.json()["events"]
    arrived = await _deliveries(receiver, shipment_id, 4)
    # One after another, each sent once the previous was answered: arrival order is promised.
    assert [d.event["id"] for d in arrived] == [e["id"] for e in reversed(events)]
    assert [d.event["data"]["status"] for d in arrived] == list(reversed(STEPS))
    assert _occurred(arrived[0]) > _occurred(arrived[-1])


async def test_drop_records_the_event_but_never_sends_it(
    client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    shipment_id = await _shipment(client)

    dropped = (await _advance(client, shipment_id, status="picked_up", drop=True)).json()
    sent = (await _advance(client, shipment_id, status="in_transit")).json()

    [arrived] = await _deliveries(receiver, shipment_id, 1)
    assert arrived.event["id"] == sent["events"][0]["id"]
    rows = await _outbox(client, shipment_id)
    assert [(row["id"], row["state"], row["attempts"]) for row in rows] == [
        (dropped["events"][0]["id"], "dropped", 0),
        (sent["events"][0]["id"], "delivered", 1),
    ]
    tracking = (await client.get(f"/v1/shipments/{shipment_id}")).json()["tracking"]
    assert [t["status"] for t in tracking] == ["picked_up", "in_transit"]
    assert [d.event["id"] for d in _of(receiver, shipment_id)] == [arrived.event["id"]]


async def test_delay_sends_the_events_that_much_later(
    client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    shipment_id = await _shipment(client)
    started = time.monotonic()

    advanced = await _advance(client, shipment_id, status="picked_up", delay_ms=800)

    assert advanced.status_code == 200, advanced.text
    waiting = await _outbox(client, shipment_id)
    assert [(row["state"], row["attempts"]) for row in waiting] == [("pending", 0)]
    [arrived] = await _deliveries(receiver, shipment_id, 1)
    assert arrived.at - started >= 0.8
    assert arrived.event["id"] == advanced.json()["events"][0]["id"]


async def test_an_exception_is_one_event_left_by_the_next_advance(
    client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    shipment_id = await _shipment(client)

    await _advance(client, shipment_id, status="in_transit")
    exception = await _advance(client, shipment_id, status="exception", location="Depot")
    resumed = await _advance(client, shipment_id, status="delivered")

    assert [e["status"] for e in exception.json()["events"]] == ["exception"]
    assert exception.json()["shipment"]["status"] == "exception"
    # The shipment goes on from the step after the last one reached before the exception.
    assert [e["status"] for e in resumed.json()["events"]] == STEPS[2:]
    arrived = await _deliveries(receiver, shipment_id, 5)
    assert [d.event["data"]["status"] for d in sorted(arrived, key=_occurred)] == [
        *STEPS[:2], "exception", *STEPS[2:],
    ]  # fmt: skip
    again = await _advance(client, shipment_id, status="exception")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "invalid_state")


async def test_out_of_an_exception_only_the_step_reached_may_be_reported_again(
    client: httpx.AsyncClient,
) -> None:
    fresh, moving = await _shipment(client), await _shipment(client)
    await _advance(client, moving, status="out_for_delivery")
    for shipment_id in (fresh, moving):
        await _advance(client, shipment_id, status="exception")

    from_created = await _advance(client, fresh, status="in_transit")
    backwards = await _advance(client, moving, status="in_transit")
    same_step = await _advance(client, moving, status="out_for_delivery")

    # An exception before the pickup: the pickup is still to come.
    assert [e["status"] for e in from_created.json()["events"]] == STEPS[:2]
    assert (backwards.status_code, backwards.json()["error"]["code"]) == (409, "invalid_state")
    assert [e["status"] for e in same_step.json()["events"]] == ["out_for_delivery"]


@pytest.mark.parametrize(
    "body",
    [
        {"status": "in_transit", "duplicate": "yes"},
        {"status": "in_transit", "delay_ms": -1},
        {"status": "in_transit", "delay_ms": 600_001},
        {"status": "in_transit", "explode": True},
        {"status": "lost"},
        {},
    ],
    ids=[
        "duplicate-not-bool",
        "negative-delay",
        "delay-too-long",
        "unknown-field",
        "bad-status",
        "no-status",
    ],
)
async def test_a_malformed_advance_is_a_400_and_changes_nothing(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    shipment_id = await _shipment(client)

    response = await _advance(client, shipment_id, **body)

    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_request")
    read = (await client.get(f"/v1/shipments/{shipment_id}")).json()
    assert (read["status"], read["tracking"]) == ("created", [])
    assert await _outbox(client, shipment_id) == []


async def test_call_faults_fail_shipment_creation_until_reset(client: httpx.AsyncClient) -> None:
    key = uuid.uuid4().hex
    try:
        faults = await client.put("/_sandbox/faults", json={"error_rate": 1.0})
        assert faults.status_code == 200, faults.text
        failed = await _create(client, key=key)
    finally:
        reset = await client.delete("/_sandbox/faults")
    assert reset.json()["error_rate"] == 0.0
    assert (failed.status_code, failed.json()["error"]["code"]) == (500, "internal_error")
    retried = await _create(client, key=key)  # the same key, now processed
    assert retried.status_code == 201, retried.text
    assert "idempotent-replayed" not in retried.headers


async def test_auto_advance_moves_every_shipment_a_step_at_a_time(tmp_path: Path) -> None:
    # The store keeps another account's shipment (the process ran with another API key): it
    # is not this account's to move, and does not stop this account's shipments moving.
    async with (
        running_carrier(tmp_path, api_key="ck_test_another_account") as before,
        before.client() as other_account,
    ):
        foreign = await _shipment(other_account)
    async with (
        receiving_webhooks() as own_receiver,
        running_carrier(
            tmp_path, webhook_url=own_receiver.url, auto_advance_seconds=0.2
        ) as process,
        process.client() as http,
    ):
        first, second = await _shipment(http), await _shipment(http)

        arrived = {sid: await _deliveries(own_receiver, sid, 4) for sid in (first, second)}

        for deliveries in arrived.values():
            assert [d.event["data"]["status"] for d in deliveries] == STEPS
            gaps = [
                (_occurred(later) - _occurred(earlier)).total_seconds()
                for earlier, later in itertools.pairwise(deliveries)
            ]
            assert min(gaps) >= 0.15, gaps  # one step per round, not a burst
        for sid in (first, second):
            assert (await http.get(f"/v1/shipments/{sid}")).json()["status"] == "delivered"
        await anyio.sleep(0.5)  # two more rounds: a delivered shipment moves no more
        assert len(own_receiver.accepted) == 8
    async with (
        running_carrier(tmp_path, api_key="ck_test_another_account") as after,
        after.client() as other_account,
    ):
        assert (await other_account.get(f"/v1/shipments/{foreign}")).json()["status"] == "created"
