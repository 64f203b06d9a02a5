"""Payments as checkout's TCC participant, against the real sandbox PSP and real databases:
try/confirm/cancel, empty rollback and suspension, lost answers, PSP faults, refunds
(also concurrent), webhooks (forged, stale, duplicate, out of order) and reconciliation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from ironcart.payments.domain import (
    IdempotencyKeyReused,
    InvalidWebhookSignature,
    PaymentDeclined,
    PaymentNotRefundable,
    PaymentProviderUnavailable,
    RefundExceedsCaptured,
    UnknownProvider,
    WebhookOutsideTolerance,
    authorize_key,
)
from ironcart.payments.sandbox_gateway import sign
from ironcart.platform.txn.fence import FenceConflict, Suspended
from tests.support.payments import PaymentsHarness, payments_harness
from tests.support.psp import Delivery, WebhookReceiver, receiving_webhooks

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

AMOUNT = Decimal("100.00")


@pytest.fixture
async def harness(database_url: str, tmp_path: Path) -> AsyncIterator[PaymentsHarness]:
    async with payments_harness(database_url, tmp_path) as found:
        yield found


async def _authorized(harness: PaymentsHarness, amount: Decimal = AMOUNT) -> tuple[str, str]:
    order_id, xid = harness.ids()
    payment = await harness.service.try_authorize(
        xid=xid, order_id=order_id, amount=amount, currency="USD", card_token="tok_visa"
    )
    assert payment.status == "authorized"
    return order_id, xid


async def _captured(harness: PaymentsHarness, amount: Decimal = AMOUNT) -> tuple[str, str]:
    order_id, xid = await _authorized(harness, amount)
    assert (await harness.service.confirm_capture(xid=xid)).status == "captured"
    return order_id, xid


# -- try / confirm / cancel ---------------------------------------------------------------------


async def test_try_then_confirm_captures_exactly_once(harness: PaymentsHarness) -> None:
    order_id, xid = harness.ids()
    tried = await harness.service.try_authorize(
        xid=xid, order_id=order_id, amount=Decimal("19.99"), currency="USD", card_token="tok_visa"
    )
    assert (tried.status, tried.amount, tried.amount_captured) == (
        "authorized",
        Decimal("19.99"),
        Decimal("0.00"),
    )
    assert tried.provider_payment_id is not None

    first = await harness.service.confirm_capture(xid=xid)
    again = await asyncio.gather(*(harness.service.confirm_capture(xid=xid) for _ in range(3)))

    assert first.status == "captured"
    assert first.amount_captured == Decimal("19.99")
    assert {payment.status for payment in again} == {"captured"}
    assert await harness.ledger(order_id) == [("authorize", 1999), ("capture", 1999)]
    assert await harness.outbox(order_id) == ["PaymentAuthorized", "PaymentCaptured"]
    at_psp = await harness.psp_payment(authorize_key(order_id, xid))
    assert at_psp is not None
    assert (at_psp["status"], at_psp["amount_captured"]) == ("captured", 1999)
    assert await harness.service.payment_for_order(order_id) == first


async def test_a_repeated_try_returns_the_stored_payment(harness: PaymentsHarness) -> None:
    order_id, xid = await _authorized(harness)
    again = await harness.service.try_authorize(
        xid=xid, order_id=order_id, amount=AMOUNT, currency="USD", card_token="tok_visa"
    )
    assert again.status == "authorized"
    assert await harness.ledger(order_id) == [("authorize", 10_000)]


async def test_try_then_cancel_voids_and_confirm_is_refused(harness: PaymentsHarness) -> None:
    order_id, xid = await _authorized(harness)

    cancelled = await harness.service.cancel_void(xid=xid)
    again = await harness.service.cancel_void(xid=xid)

    assert cancelled is not None
    assert again is not None
    assert (cancelled.status, again.status) == ("voided", "voided")
    with pytest.raises(FenceConflict):
        await harness.service.confirm_capture(xid=xid)
    assert await harness.ledger(order_id) == [("authorize", 10_000), ("void", 10_000)]
    assert await harness.outbox(order_id) == ["PaymentAuthorized", "PaymentVoided"]


async def test_cancel_after_confirm_is_refused(harness: PaymentsHarness) -> None:
    order_id, xid = await _captured(harness)
    with pytest.raises(FenceConflict):
        await harness.service.cancel_void(xid=xid)
    assert await harness.ledger(order_id) == [("authorize", 10_000), ("capture", 10_000)]


async def test_cancel_before_try_is_recorded_and_the_late_try_is_suspended(
    harness: PaymentsHarness,
) -> None:
    order_id, xid = harness.ids()

    assert await harness.service.cancel_void(xid=xid) is None  # empty rollback
    with pytest.raises(Suspended):
        await harness.service.try_authorize(
            xid=xid, order_id=order_id, amount=AMOUNT, currency="USD", card_token="tok_visa"
        )

    assert await harness.row(xid) is None
    assert await harness.psp_payment(authorize_key(order_id, xid)) is None
    assert await harness.ledger(order_id) == []
    assert harness.transport.requests == []  # the PSP was never asked


async def test_a_declined_card_holds_nothing(harness: PaymentsHarness) -> None:
    order_id, xid = harness.ids()
    for _ in range(2):  # the repeated try answers the same
        with pytest.raises(PaymentDeclined) as declined:
            await harness.service.try_authorize(
                xid=xid, order_id=order_id, amount=AMOUNT, currency="USD", card_token="tok_decline"
            )
        assert declined.value.decline_code == "card_declined"

    cancelled = await harness.service.cancel_void(xid=xid)

    assert cancelled is not None
    assert cancelled.status == "declined"
    row = await harness.row(xid)
    assert row is not None
    assert row["decline_code"] == "card_declined"
    assert [operation for operation, _ in await harness.ledger(order_id)] in ([], ["authorize"])
    assert "void" not in [operation for operation, _ in await harness.ledger(order_id)]
    assert await harness.outbox(order_id) == ["PaymentFailed"]


async def test_a_cancel_racing_its_try_never_leaves_money_held(harness: PaymentsHarness) -> None:
    await harness.faults(latency_ms=30, latency_rate=0.5, seed=3)  # widen the windows
    branches = [harness.ids() for _ in range(12)]

    async def try_(order_id: str, xid: str) -> object:
        return await harness.service.try_authorize(
            xid=xid, order_id=order_id, amount=AMOUNT, currency="USD", card_token="tok_visa"
        )

    async def race(order_id: str, xid: str, delay: float) -> list[object]:
        async def cancel() -> object:
            await asyncio.sleep(delay)
            return await harness.service.cancel_void(xid=xid)

        results = await asyncio.gather(try_(order_id, xid), cancel(), return_exceptions=True)
        return list(results)

    outcomes = await asyncio.gather(
        *(race(order_id, xid, 0.01 * (n % 4)) for n, (order_id, xid) in enumerate(branches))
    )
    await harness.faults()
    for (order_id, xid), (tried, cancelled) in zip(branches, outcomes, strict=True):
        assert not isinstance(cancelled, BaseException), cancelled
        assert not isinstance(tried, BaseException) or isinstance(tried, Suspended), tried
        await harness.service.cancel_void(xid=xid)  # the coordinator's cancel is idempotent
        held = await harness.psp_payment(authorize_key(order_id, xid))
        assert held is None or held["status"] == "voided", held
        row = await harness.row(xid)
        assert row is None or row["status"] == "voided", row
        assert [operation for operation, _ in await harness.ledger(order_id)] in (
            [],
            ["authorize", "void"],
        )


# -- lost answers -------------------------------------------------------------------------------


async def test_cancel_voids_an_authorization_whose_answer_was_lost(
    harness: PaymentsHarness,
) -> None:
    order_id, xid = harness.ids()
    harness.transport.lose("POST", "/v1/payments")  # every attempt: the PSP acts, we never hear

    with pytest.raises(PaymentProviderUnavailable):
        await harness.service.try_authorize(
            xid=xid, order_id=order_id, amount=AMOUNT, currency="USD", card_token="tok_visa"
        )
    row = await harness.row(xid)
    assert row is not None
    assert (row["status"], row["provider_payment_id"]) == ("authorizing", None)
    held = await harness.psp_payment(authorize_key(order_id, xid))
    assert held is not None
    assert held["status"] == "authorized"

    harness.transport.clear()
    cancelled = await harness.service.cancel_void(xid=xid)

    assert cancelled is not None
    assert (cancelled.status, cancelled.provider_payment_id) == ("voided", held["id"])
    voided = await harness.psp_payment(authorize_key(order_id, xid))
    assert voided is not None
    assert voided["status"] == "voided"
    assert await harness.ledger(order_id) == [("authorize", 10_000), ("void", 10_000)]


async def test_cancel_voids_an_authorization_that_arrived_after_the_try_gave_up(
    harness: PaymentsHarness,
) -> None:
    order_id, xid = harness.ids()
    harness.transport.refuse("POST", "/v1/payments")
    with pytest.raises(PaymentProviderUnavailable):
        await harness.service.try_authorize(
            xid=xid, order_id=order_id, amount=AMOUNT, currency="USD", card_token="tok_visa"
        )
    row = await harness.row(xid)
    assert row is not None
    # The request reaches the PSP after all (a retry from a network buffer, say): same key.
    late = await harness.control.post(
        "/v1/payments",
        json={
            "amount": 10_000,
            "currency": "USD",
            "card_token": "tok_visa",
            "reference": row["id"],
        },
        headers={"Idempotency-Key": row["authorize_key"]},
    )
    assert late.status_code == 201, late.text

    cancelled = await harness.service.cancel_void(xid=xid)

    assert cancelled is not None
    assert cancelled.status == "voided"
    assert await harness.ledger(order_id) == [("authorize", 10_000), ("void", 10_000)]


async def test_a_repeated_try_finds_the_authorization_whose_answer_was_lost(
    harness: PaymentsHarness,
) -> None:
    order_id, xid = harness.ids()
    harness.transport.lose("POST", "/v1/payments")
    with pytest.raises(PaymentProviderUnavailable):
        await harness.service.try_authorize(
            xid=xid, order_id=order_id, amount=AMOUNT, currency="USD", card_token="tok_visa"
        )
    harness.transport.clear()

    again = await harness.service.try_authorize(
        xid=xid, order_id=order_id, amount=AMOUNT, currency="USD", card_token="tok_visa"
    )
    captured = await harness.service.confirm_capture(xid=xid)

    assert again.status == "authorized"
    assert captured.status == "captured"
    assert await harness.ledger(order_id) == [("authorize", 10_000), ("capture", 10_000)]


async def test_confirm_resolves_an_authorizing_payment_and_survives_a_lost_capture(
    harness: PaymentsHarness,
) -> None:
    order_id, xid = harness.ids()
    harness.transport.lose("POST", "/v1/payments")
    with pytest.raises(PaymentProviderUnavailable):
        await harness.service.try_authorize(
            xid=xid, order_id=order_id, amount=AMOUNT, currency="USD", card_token="tok_visa"
        )
    harness.transport.clear()
    harness.transport.lose("POST", "/capture")

    with pytest.raises(PaymentProviderUnavailable):
        await harness.service.confirm_capture(xid=xid)  # captured at the PSP, not recorded
    row = await harness.row(xid)
    assert row is not None
    assert row["status"] == "capturing"
    harness.transport.clear()
    confirmed = await harness.service.confirm_capture(xid=xid)  # the recovery's repeat

    assert confirmed.status == "captured"
    assert await harness.ledger(order_id) == [("authorize", 10_000), ("capture", 10_000)]
    assert await harness.outbox(order_id) == ["PaymentAuthorized", "PaymentCaptured"]


# -- PSP faults ---------------------------------------------------------------------------------


async def test_psp_errors_are_retried_with_the_same_keys(harness: PaymentsHarness) -> None:
    await harness.faults(error_rate=0.4, seed=7)
    outcomes: list[str] = []
    orders: list[str] = []
    for _ in range(8):
        order_id, xid = harness.ids()
        orders.append(order_id)
        try:
            await harness.service.try_authorize(
                xid=xid, order_id=order_id, amount=AMOUNT, currency="USD", card_token="tok_visa"
            )
            await harness.service.confirm_capture(xid=xid)
            outcomes.append("captured")
        except PaymentProviderUnavailable:
            outcomes.append("unavailable")
    await harness.faults()

    assert outcomes.count("captured") >= 6
    for order_id in orders:  # never two authorizations or captures for one order
        operations = [operation for operation, _ in await harness.ledger(order_id)]
        assert operations.count("authorize") <= 1
        assert operations.count("capture") <= 1


async def test_a_try_again_answer_is_retried(harness: PaymentsHarness) -> None:
    order_id, xid = harness.ids()
    tried = await harness.service.try_authorize(
        xid=xid, order_id=order_id, amount=AMOUNT, currency="USD", card_token="tok_retry"
    )
    assert tried.status == "authorized"
    assert harness.transport.requests.count("POST /v1/payments") == 2
    assert await harness.ledger(order_id) == [("authorize", 10_000)]


async def test_a_psp_that_never_answers_is_unavailable_within_the_deadline(
    database_url: str, tmp_path: Path
) -> None:
    async with payments_harness(
        database_url, tmp_path, read_timeout_seconds=0.3, deadline_seconds=1.5, max_attempts=10
    ) as harness:
        await harness.faults(timeout_rate=1.0, timeout_ms=2500)
        order_id, xid = harness.ids()
        started = time.monotonic()
        with pytest.raises(PaymentProviderUnavailable):
            await harness.service.try_authorize(
                xid=xid, order_id=order_id, amount=AMOUNT, currency="USD", card_token="tok_visa"
            )
        elapsed = time.monotonic() - started
        await harness.faults()

        assert elapsed < 2.5
        row = await harness.row(xid)
        assert row is not None
        assert row["status"] == "authorizing"  # unknown outcome, kept for cancel/reconcile
        cancelled = await harness.service.cancel_void(xid=xid)
        assert cancelled is not None
        assert cancelled.status == "voided"
        operations = [operation for operation, _ in await harness.ledger(order_id)]
        assert operations in ([], ["authorize", "void"])


# -- refunds ------------------------------------------------------------------------------------


async def test_refunds_never_exceed_what_was_captured(harness: PaymentsHarness) -> None:
    order_id, _ = await _captured(harness)
    refund = harness.service.refund

    first = await refund(order_id=order_id, amount=Decimal("30"), idempotency_key="r1")
    replayed = await refund(order_id=order_id, amount=Decimal("30.00"), idempotency_key="r1")
    with pytest.raises(IdempotencyKeyReused):
        await refund(order_id=order_id, amount=Decimal("40"), idempotency_key="r1")
    with pytest.raises(RefundExceedsCaptured) as exceeded:
        await refund(order_id=order_id, amount=Decimal("70.01"), idempotency_key="r2")
    rest = await refund(order_id=order_id, amount=Decimal("70"), idempotency_key="r3")
    with pytest.raises(RefundExceedsCaptured):
        await refund(order_id=order_id, amount=Decimal("0.01"), idempotency_key="r4")

    assert (first.status, first.amount) == ("succeeded", Decimal("30.00"))
    assert replayed == first
    assert exceeded.value.extra["refundable"] == "70.00"
    assert rest.status == "succeeded"
    payment = await harness.service.payment_for_order(order_id)
    assert payment is not None
    assert (payment.status, payment.amount_refunded) == ("refunded", Decimal("100.00"))
    refunds = [entry for entry in await harness.ledger(order_id) if entry[0] == "refund"]
    assert refunds == [("refund", 3_000), ("refund", 7_000)]
    assert (await harness.outbox(order_id)).count("PaymentRefunded") == 2


async def test_an_order_without_a_capture_cannot_be_refunded(harness: PaymentsHarness) -> None:
    order_id, _ = await _authorized(harness)
    with pytest.raises(PaymentNotRefundable):
        await harness.service.refund(order_id=order_id, amount=Decimal("1"), idempotency_key="r")
    assert [operation for operation, _ in await harness.ledger(order_id)] == ["authorize"]


async def test_concurrent_refunds_never_exceed_the_capture(harness: PaymentsHarness) -> None:
    order_id, _ = await _captured(harness)

    results = await asyncio.gather(
        *(
            harness.service.refund(
                order_id=order_id, amount=Decimal("30"), idempotency_key=f"refund-{n}"
            )
            for n in range(10)
        ),
        return_exceptions=True,
    )

    succeeded = [result for result in results if not isinstance(result, BaseException)]
    refused = [result for result in results if isinstance(result, RefundExceedsCaptured)]
    assert len(succeeded) == 3
    assert len(refused) == 7
    refunds = [
        amount for operation, amount in await harness.ledger(order_id) if operation == "refund"
    ]
    assert refunds == [3_000, 3_000, 3_000]
    payment = await harness.service.payment_for_order(order_id)
    assert payment is not None
    assert (payment.status, payment.amount_refunded) == ("partially_refunded", Decimal("90.00"))
    row = await harness.row(payment.xid)
    assert row is not None
    assert row["amount_refund_pending_minor"] == 0


async def test_a_refund_whose_answer_was_lost_is_finished_by_its_key(
    harness: PaymentsHarness,
) -> None:
    order_id, _ = await _captured(harness)
    harness.transport.lose("POST", "/refunds")
    with pytest.raises(PaymentProviderUnavailable):
        await harness.service.refund(order_id=order_id, amount=Decimal("25"), idempotency_key="k")
    with pytest.raises(RefundExceedsCaptured):  # the pending refund holds its amount
        await harness.service.refund(order_id=order_id, amount=Decimal("80"), idempotency_key="x")
    harness.transport.clear()

    assert await harness.service.reconcile_pending(older_than_seconds=0) == 1
    again = await harness.service.refund(
        order_id=order_id, amount=Decimal("25"), idempotency_key="k"
    )

    assert again.status == "succeeded"
    refunds = [
        amount for operation, amount in await harness.ledger(order_id) if operation == "refund"
    ]
    assert refunds == [2_500]


# -- reconciliation -----------------------------------------------------------------------------


async def test_reconciliation_brings_pending_payments_to_the_provider_state(
    harness: PaymentsHarness,
) -> None:
    lost_authorize = harness.ids()
    never_arrived = harness.ids()
    harness.transport.lose("POST", "/v1/payments", times=4)
    harness.transport.refuse("POST", "/v1/payments", times=4)
    for order_id, xid in (lost_authorize, never_arrived):
        with pytest.raises(PaymentProviderUnavailable):
            await harness.service.try_authorize(
                xid=xid, order_id=order_id, amount=AMOUNT, currency="USD", card_token="tok_visa"
            )
    capturing_order, capturing_xid = await _authorized(harness)
    harness.transport.lose("POST", "/capture")
    with pytest.raises(PaymentProviderUnavailable):
        await harness.service.confirm_capture(xid=capturing_xid)
    harness.transport.clear()

    assert await harness.service.reconcile_pending(older_than_seconds=3600) == 0  # too recent
    assert await harness.service.reconcile_pending(older_than_seconds=0) == 3

    statuses = [
        (await harness.row(xid) or {}).get("status")
        for xid in (lost_authorize[1], never_arrived[1], capturing_xid)
    ]
    assert statuses == ["authorized", "failed", "captured"]
    assert await harness.outbox(capturing_order) == ["PaymentAuthorized", "PaymentCaptured"]
    confirmed = await harness.service.confirm_capture(xid=capturing_xid)  # fence was confirmed
    assert confirmed.status == "captured"
    assert await harness.ledger(capturing_order) == [("authorize", 10_000), ("capture", 10_000)]


# -- webhooks -----------------------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with receiving_webhooks() as found:
        yield found


@pytest.fixture
async def hooked(
    database_url: str, tmp_path: Path, receiver: WebhookReceiver
) -> AsyncIterator[PaymentsHarness]:
    """A harness whose PSP delivers its webhooks to `receiver` (the test forwards them)."""
    async with payments_harness(database_url, tmp_path, webhook_url=receiver.url) as found:
        yield found


async def _deliver(harness: PaymentsHarness, delivery: Delivery) -> bool:
    return await harness.service.handle_webhook(
        provider="sandbox",
        body=delivery.body,
        signature_header=delivery.headers["sandbox-signature"],
    )


def _of_type(deliveries: list[Delivery], kind: str) -> Delivery:
    return next(delivery for delivery in deliveries if delivery.event["type"] == kind)


async def test_webhooks_out_of_order_and_twice_end_in_one_correct_state(
    hooked: PaymentsHarness, receiver: WebhookReceiver
) -> None:
    order_id, xid = hooked.ids()
    hooked.transport.lose("POST", "/v1/payments")
    with pytest.raises(PaymentProviderUnavailable):
        await hooked.service.try_authorize(
            xid=xid, order_id=order_id, amount=AMOUNT, currency="USD", card_token="tok_visa"
        )
    hooked.transport.clear()
    hooked.transport.lose("POST", "/capture")
    with pytest.raises(PaymentProviderUnavailable):
        await hooked.service.confirm_capture(xid=xid)
    deliveries = await receiver.wait_for(2)
    authorized = _of_type(deliveries, "payment.authorized")
    captured = _of_type(deliveries, "payment.captured")

    assert await _deliver(hooked, captured) is True  # before the API answers, out of order
    assert await _deliver(hooked, authorized) is True  # late: never regresses
    assert await _deliver(hooked, captured) is False  # duplicate: acknowledged, no effect

    row = await hooked.row(xid)
    assert row is not None
    assert (row["status"], row["amount_captured_minor"]) == ("captured", 10_000)
    hooked.transport.clear()
    assert (await hooked.service.confirm_capture(xid=xid)).status == "captured"
    # The first confirm resolved the authorization by its key; the capture is announced once.
    assert await hooked.outbox(order_id) == ["PaymentAuthorized", "PaymentCaptured"]
    assert await hooked.ledger(order_id) == [("authorize", 10_000), ("capture", 10_000)]


async def test_a_webhook_before_the_api_answer_records_the_authorization(
    hooked: PaymentsHarness, receiver: WebhookReceiver
) -> None:
    order_id, xid = hooked.ids()
    hooked.transport.lose("POST", "/v1/payments")
    with pytest.raises(PaymentProviderUnavailable):
        await hooked.service.try_authorize(
            xid=xid, order_id=order_id, amount=AMOUNT, currency="USD", card_token="tok_visa"
        )
    [authorized] = await receiver.wait_for(1)

    assert await _deliver(hooked, authorized) is True

    row = await hooked.row(xid)
    assert row is not None
    assert row["status"] == "authorized"
    assert row["provider_payment_id"] == authorized.event["data"]["payment"]["id"]
    assert await hooked.outbox(order_id) == ["PaymentAuthorized"]


async def test_an_authorization_nobody_will_capture_is_voided_on_its_webhook(
    hooked: PaymentsHarness, receiver: WebhookReceiver
) -> None:
    order_id, xid = hooked.ids()
    hooked.transport.refuse("POST", "/v1/payments")
    with pytest.raises(PaymentProviderUnavailable):
        await hooked.service.try_authorize(
            xid=xid, order_id=order_id, amount=AMOUNT, currency="USD", card_token="tok_visa"
        )
    hooked.transport.clear()
    cancelled = await hooked.service.cancel_void(xid=xid)  # nothing at the PSP yet
    assert cancelled is not None
    assert (cancelled.status, cancelled.provider_payment_id) == ("voided", None)
    row = await hooked.row(xid)
    assert row is not None
    late = await hooked.control.post(  # the lost request lands after all
        "/v1/payments",
        json={
            "amount": 10_000,
            "currency": "USD",
            "card_token": "tok_visa",
            "reference": row["id"],
        },
        headers={"Idempotency-Key": row["authorize_key"]},
    )
    assert late.status_code == 201, late.text
    [authorized] = await receiver.wait_for(1)

    assert await _deliver(hooked, authorized) is True

    assert await hooked.ledger(order_id) == [("authorize", 10_000), ("void", 10_000)]
    voided = await hooked.row(xid)
    assert voided is not None
    assert (voided["status"], voided["provider_payment_id"]) == ("voided", late.json()["id"])


async def test_forged_stale_and_foreign_webhooks_change_nothing(
    hooked: PaymentsHarness, receiver: WebhookReceiver
) -> None:
    order_id, xid = await _authorized(hooked)
    await hooked.service.confirm_capture(xid=xid)
    deliveries = await receiver.wait_for(2)
    captured = _of_type(deliveries, "payment.captured")
    event = captured.event
    event["data"]["payment"]["status"] = "voided"
    forged_body = orjson.dumps(event)
    now = int(time.time())

    with pytest.raises(InvalidWebhookSignature):  # body changed under a real signature
        await hooked.service.handle_webhook(
            provider="sandbox",
            body=forged_body,
            signature_header=captured.headers["sandbox-signature"],
        )
    with pytest.raises(InvalidWebhookSignature):  # signed with a guessed secret
        await hooked.service.handle_webhook(
            provider="sandbox", body=forged_body, signature_header=sign("guess", now, forged_body)
        )
    with pytest.raises(WebhookOutsideTolerance):  # a genuine but old delivery, replayed
        await hooked.service.handle_webhook(
            provider="sandbox",
            body=captured.body,
            signature_header=sign(hooked.psp.secret, now - 301, captured.body),
        )
    with pytest.raises(UnknownProvider):
        await hooked.service.handle_webhook(
            provider="stripe", body=captured.body, signature_header=None
        )

    row = await hooked.row(xid)
    assert row is not None
    assert row["status"] == "captured"
    assert await _deliver(hooked, captured) is True  # refused attempts were not remembered
    assert await _deliver(hooked, captured) is False
    assert await hooked.outbox(order_id) == ["PaymentAuthorized", "PaymentCaptured"]
