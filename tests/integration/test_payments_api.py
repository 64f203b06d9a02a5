"""Payments over HTTP on every backend: the sandbox PSP's real webhooks posted to the app,
bad webhooks as problem+json (never a 500), and the staff listing of an order's payments."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi import FastAPI

from ironcart.payments.domain import PaymentDeclined
from ironcart.payments.sandbox_gateway import sign
from ironcart.payments.service import PaymentService
from tests.support.app import DEMO_PASSWORD, register_and_login, running_app, settings_for
from tests.support.psp import Delivery, PspProcess, WebhookReceiver, receiving_webhooks, running_psp

pytestmark = [pytest.mark.anyio, pytest.mark.integration]
PROBLEM = "application/problem+json"
WEBHOOK = "/api/v1/payments/webhooks/sandbox"
# Header bytes the server decodes as latin-1: "t=²" ("²".isdigit(), yet int() refuses it),
# "v1=é" (compare_digest refuses non-ASCII text), 64 non-hex characters.
MALFORMED_SIGNATURES = [
    b"t=\xb2,v1=ab",
    b"t=1,v1=\xe9",
    b"t=1700000000,v1=" + b"\xe9" * 64,
    b"t=1700000000,v1=" + b"g" * 64,
]


@dataclass
class Shop:
    app: FastAPI
    client: httpx.AsyncClient
    psp: PspProcess
    receiver: WebhookReceiver
    staff: dict[str, str]

    @property
    def payments(self) -> PaymentService:
        service: PaymentService = self.app.state.container.payments
        return service

    async def post_webhook(
        self, body: bytes, signature: str | bytes | None, *, provider: str = "sandbox"
    ) -> httpx.Response:
        headers: dict[str, str | bytes] = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Sandbox-Signature"] = signature
        return await self.client.post(
            f"/api/v1/payments/webhooks/{provider}", content=body, headers=headers
        )

    async def forward(self, delivery: Delivery) -> httpx.Response:
        """Post a delivery the PSP made, byte for byte, with its signature."""
        return await self.post_webhook(delivery.body, delivery.headers["sandbox-signature"])

    async def listing(self, order_id: str) -> httpx.Response:
        return await self.client.get(
            "/api/v1/payments", params={"order_id": order_id}, headers=self.staff
        )


@pytest.fixture
async def shop(database_url: str, tmp_path: Path) -> AsyncIterator[Shop]:
    async with (
        receiving_webhooks() as receiver,
        running_psp(tmp_path, webhook_url=receiver.url) as psp,
    ):
        settings = settings_for(
            database_url,
            payments={
                "psp_url": psp.url,
                "psp_api_key": psp.api_key,
                "webhook_secret": psp.secret,
            },
        )
        async with running_app(settings) as (app, client):
            email = f"staff-{uuid.uuid4().hex[:8]}@example.com"
            await app.state.container.identity.create_user(
                email=email, password=DEMO_PASSWORD, name="Cashier", roles=["staff"]
            )
            token = await client.post(
                "/api/v1/auth/token",
                data={"grant_type": "password", "username": email, "password": DEMO_PASSWORD},
            )
            assert token.status_code == 200, token.text
            staff = {"Authorization": f"Bearer {token.json()['access_token']}"}
            yield Shop(app, client, psp, receiver, staff)


def _problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["type"] == f"urn:ironcart:problem:{code}"


def _ids() -> tuple[str, str]:
    return f"order-{uuid.uuid4().hex[:12]}", f"xid-{uuid.uuid4().hex}"


async def test_psp_webhooks_posted_to_the_app_apply_once_and_in_any_order(shop: Shop) -> None:
    order_id, xid = _ids()
    await shop.payments.try_authorize(
        xid=xid, order_id=order_id, amount=Decimal("42.50"), currency="EUR", card_token="tok_visa"
    )
    await shop.payments.confirm_capture(xid=xid)
    deliveries = await shop.receiver.wait_for(2)
    by_type = {delivery.event["type"]: delivery for delivery in deliveries}

    captured = await shop.forward(by_type["payment.captured"])
    authorized = await shop.forward(by_type["payment.authorized"])  # late, out of order
    duplicate = await shop.forward(by_type["payment.captured"])

    assert captured.status_code == 200, captured.text
    assert captured.json() == {"received": True, "duplicate": False}
    assert authorized.json() == {"received": True, "duplicate": False}
    assert duplicate.json() == {"received": True, "duplicate": True}
    listing = await shop.listing(order_id)
    assert listing.status_code == 200, listing.text
    assert listing.headers["cache-control"] == "no-store"
    [payment] = listing.json()["data"]
    assert payment["status"] == "captured"
    assert payment["amount"] == {"amount": "42.50", "currency": "EUR"}
    assert payment["amount_captured"] == {"amount": "42.50", "currency": "EUR"}
    assert payment["amount_refunded"] == {"amount": "0.00", "currency": "EUR"}
    assert (
        payment["provider_payment_id"] == by_type["payment.captured"].event["data"]["payment"]["id"]
    )


async def test_bad_webhooks_are_problems_and_change_nothing(shop: Shop) -> None:
    order_id, xid = _ids()
    await shop.payments.try_authorize(
        xid=xid, order_id=order_id, amount=Decimal("10.00"), currency="USD", card_token="tok_visa"
    )
    [delivery] = await shop.receiver.wait_for(1)
    event = delivery.event
    event["data"]["payment"]["status"] = "captured"
    event["data"]["payment"]["amount_captured"] = 1000
    forged = orjson.dumps(event)
    now = int(time.time())
    secret = shop.psp.secret

    _problem(
        await shop.post_webhook(delivery.body, None), 400, "payments.webhook_signature_invalid"
    )
    _problem(
        await shop.post_webhook(forged, delivery.headers["sandbox-signature"]),
        400,
        "payments.webhook_signature_invalid",
    )
    _problem(
        await shop.post_webhook(forged, sign("not-the-secret", now, forged)),
        400,
        "payments.webhook_signature_invalid",
    )
    _problem(
        await shop.post_webhook(delivery.body, sign(secret, now - 3600, delivery.body)),
        400,
        "payments.webhook_timestamp_out_of_tolerance",
    )
    _problem(
        await shop.post_webhook(b"{not json", sign(secret, now, b"{not json")),
        400,
        "payments.webhook_payload_invalid",
    )
    _problem(
        await shop.post_webhook(delivery.body, "t=1," + "v1=" + "a" * 2000),
        422,
        "validation_error",
    )
    for malformed in MALFORMED_SIGNATURES:
        _problem(
            await shop.post_webhook(delivery.body, malformed),
            400,
            "payments.webhook_signature_invalid",
        )
    _problem(
        await shop.post_webhook(
            delivery.body, delivery.headers["sandbox-signature"], provider="stripe"
        ),
        404,
        "payments.unknown_provider",
    )
    _problem(
        await shop.post_webhook(delivery.body, None, provider="Not A Provider"),
        422,
        "validation_error",
    )

    [payment] = (await shop.listing(order_id)).json()["data"]
    assert payment["status"] == "authorized"
    accepted = await shop.forward(delivery)  # the genuine one still applies after all that
    assert accepted.json() == {"received": True, "duplicate": False}


async def test_a_signed_event_for_a_payment_we_do_not_know_is_acknowledged(shop: Shop) -> None:
    body = orjson.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex}",
            "type": "payment.authorized",
            "created": int(time.time()),
            "data": {
                "payment": {
                    "id": "pay_unknown",
                    "status": "authorized",
                    "amount": 100,
                    "currency": "USD",
                    "amount_captured": 0,
                    "amount_refunded": 0,
                    "reference": "not-ours",
                    "decline_code": None,
                }
            },
        }
    )
    response = await shop.post_webhook(body, sign(shop.psp.secret, int(time.time()), body))
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "duplicate": False}


async def test_staff_list_the_payments_of_an_order(shop: Shop) -> None:
    order_id = f"order-{uuid.uuid4().hex[:12]}"
    with pytest.raises(PaymentDeclined):
        await shop.payments.try_authorize(
            xid=f"xid-{uuid.uuid4().hex}",
            order_id=order_id,
            amount=Decimal("5.00"),
            currency="USD",
            card_token="tok_insufficient_funds",
        )
    xid = f"xid-{uuid.uuid4().hex}"
    await shop.payments.try_authorize(
        xid=xid, order_id=order_id, amount=Decimal("5.00"), currency="USD", card_token="tok_visa"
    )
    customer = await register_and_login(shop.client, f"c-{uuid.uuid4().hex[:8]}@example.com")

    listing = await shop.listing(order_id)
    empty = await shop.listing("order-nobody-placed")
    anonymous = await shop.client.get("/api/v1/payments", params={"order_id": order_id})
    forbidden = await shop.client.get(
        "/api/v1/payments",
        params={"order_id": order_id},
        headers={"Authorization": f"Bearer {customer['access_token']}"},
    )
    missing = await shop.client.get("/api/v1/payments", headers=shop.staff)
    too_long = await shop.listing("o" * 65)

    assert listing.status_code == 200, listing.text
    assert [(p["status"], p["decline_code"]) for p in listing.json()["data"]] == [
        ("declined", "insufficient_funds"),
        ("authorized", None),
    ]
    assert listing.json()["data"][1]["xid"] == xid
    assert empty.json() == {"data": []}
    _problem(anonymous, 401, "ironcart.unauthenticated")
    _problem(forbidden, 403, "auth.insufficient_scope")
    _problem(missing, 422, "validation_error")
    _problem(too_long, 422, "validation_error")
