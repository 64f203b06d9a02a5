"""Payment rules without I/O: forward-only transitions, orphans, refund limits, keys, webhooks."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from ironcart.contracts.payments import PaymentCaptured, PaymentFailed, PaymentVoided
from ironcart.payments.domain import (
    InvalidPayment,
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    Payment,
    PaymentNotRefundable,
    PaymentStatus,
    ProviderStatus,
    RefundExceedsCaptured,
    WebhookOutsideTolerance,
    authorize_key,
    can_move,
    capture_key,
    is_orphan,
    payment_amount,
    refund_key,
    reported_target,
    status_after_refunds,
    void_key,
)
from ironcart.payments.events import moved
from ironcart.payments.sandbox_gateway import SandboxWebhookVerifier, parse_payment, sign
from ironcart.platform.money import Money
from ironcart.platform.outbox import decode_event, encode_event

S = PaymentStatus
P = ProviderStatus
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SECRET = "whsec_unit_test"


def _payment(status: PaymentStatus = S.CAPTURED, **changes: object) -> Payment:
    payment = Payment(
        id="pay-1",
        order_id="order-1",
        xid="xid-1",
        provider="sandbox",
        provider_payment_id="pay_psp",
        status=status,
        amount=Money.of("100.00", "USD"),
        amount_captured_minor=10_000 if status is S.CAPTURED else 0,
        amount_refunded_minor=0,
        amount_refund_pending_minor=0,
        authorize_key=authorize_key("order-1", "xid-1"),
        decline_code=None,
        version=1,
        created_at=NOW,
        updated_at=NOW,
    )
    return replace(payment, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("current", "reported", "expected"),
    [
        pytest.param(S.AUTHORIZING, P.AUTHORIZED, S.AUTHORIZED, id="authorized"),
        pytest.param(S.AUTHORIZING, P.DECLINED, S.DECLINED, id="declined"),
        pytest.param(S.AUTHORIZING, P.CAPTURED, S.CAPTURED, id="skip-to-captured"),
        pytest.param(S.AUTHORIZING, P.VOIDED, S.VOIDED, id="voided-before-answer"),
        pytest.param(S.AUTHORIZED, P.CAPTURED, S.CAPTURED, id="captured"),
        pytest.param(S.AUTHORIZED, P.REFUNDED, S.CAPTURED, id="refunded-means-captured"),
        pytest.param(S.AUTHORIZED, P.VOIDED, S.VOIDED, id="voided"),
        pytest.param(S.CAPTURING, P.CAPTURED, S.CAPTURED, id="capture-answer"),
        pytest.param(S.CAPTURING, P.VOIDED, S.VOIDED, id="hold-expired-at-provider"),
        pytest.param(S.AUTHORIZED, P.AUTHORIZED, None, id="same-state"),
        pytest.param(S.CAPTURED, P.AUTHORIZED, None, id="late-authorized-never-regresses"),
        pytest.param(S.CAPTURED, P.VOIDED, None, id="captured-is-never-voided"),
        pytest.param(S.PARTIALLY_REFUNDED, P.CAPTURED, None, id="refunds-stay"),
        pytest.param(S.VOIDED, P.AUTHORIZED, None, id="voided-stays-voided"),
        pytest.param(S.VOIDED, P.CAPTURED, None, id="voided-is-final"),
        pytest.param(S.DECLINED, P.AUTHORIZED, None, id="declined-is-final"),
        pytest.param(S.FAILED, P.CAPTURED, None, id="failed-is-final"),
    ],
)
def test_provider_reports_only_move_forward(
    current: PaymentStatus, reported: ProviderStatus, expected: PaymentStatus | None
) -> None:
    assert reported_target(current, reported) is expected


def test_every_move_has_a_source_and_none_leaves_a_final_status() -> None:
    finals = {S.DECLINED, S.VOIDED, S.FAILED, S.REFUNDED}
    for target in PaymentStatus:
        for final in finals:
            assert not can_move(final, target)
    assert can_move(S.AUTHORIZED, S.CAPTURING)
    assert not can_move(S.AUTHORIZING, S.CAPTURING)
    assert not can_move(S.CAPTURED, S.AUTHORIZED)


@pytest.mark.parametrize(
    ("current", "reported", "cancelled", "expected"),
    [
        pytest.param(S.VOIDED, P.AUTHORIZED, False, True, id="authorized-after-give-up"),
        pytest.param(S.FAILED, P.AUTHORIZED, False, True, id="authorized-after-failure"),
        pytest.param(S.AUTHORIZED, P.AUTHORIZED, True, True, id="branch-cancelled"),
        pytest.param(S.AUTHORIZING, P.AUTHORIZED, True, True, id="cancelled-in-flight"),
        pytest.param(S.AUTHORIZED, P.AUTHORIZED, False, False, id="normal-hold"),
        pytest.param(S.CAPTURED, P.AUTHORIZED, True, False, id="captured-never"),
        pytest.param(S.VOIDED, P.VOIDED, True, False, id="already-voided"),
    ],
)
def test_orphan_authorizations_are_the_ones_nobody_will_capture(
    current: PaymentStatus, reported: ProviderStatus, cancelled: bool, expected: bool
) -> None:
    assert is_orphan(current, reported, cancelled=cancelled) is expected


@pytest.mark.parametrize(
    ("refunded", "expected"),
    [
        (0, S.CAPTURED),
        (1, S.PARTIALLY_REFUNDED),
        (9_999, S.PARTIALLY_REFUNDED),
        (10_000, S.REFUNDED),
    ],
)
def test_status_after_refunds(refunded: int, expected: PaymentStatus) -> None:
    assert status_after_refunds(captured_minor=10_000, refunded_minor=refunded) is expected


def test_a_refund_fits_in_what_is_left() -> None:
    payment = _payment(amount_refunded_minor=6_000, amount_refund_pending_minor=1_000)
    assert payment.refundable == Money.of("30.00", "USD")
    payment.check_refund(Money.of("30.00", "USD"))
    with pytest.raises(RefundExceedsCaptured) as raised:
        payment.check_refund(Money.of("30.01", "USD"))
    assert raised.value.extra == {"requested": "30.01", "refundable": "30.00", "currency": "USD"}


def test_a_refund_needs_a_capture_and_the_same_currency() -> None:
    with pytest.raises(PaymentNotRefundable):
        _payment(S.AUTHORIZED).check_refund(Money.of("1.00", "USD"))
    with pytest.raises(InvalidPayment):
        _payment().check_refund(Money.of("1.00", "EUR"))


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        pytest.param(Decimal("0"), "USD", id="zero"),
        pytest.param(Decimal("-1"), "USD", id="negative"),
        pytest.param(Decimal("1.001"), "USD", id="too-many-decimals"),
        pytest.param(Decimal("1.5"), "JPY", id="yen-has-no-minor-unit"),
        pytest.param(Decimal("1"), "usd", id="lowercase-currency"),
        pytest.param(Decimal("NaN"), "USD", id="nan"),
    ],
)
def test_invalid_amounts_are_refused(amount: Decimal, currency: str) -> None:
    with pytest.raises(InvalidPayment):
        payment_amount(amount, currency)


def test_idempotency_keys_are_derived_from_order_operation_and_attempt() -> None:
    assert authorize_key("o1", "x1") == "o1:authorize:x1"
    assert capture_key("o1", "x1") == "o1:capture:x1"
    assert void_key("o1", "x1") == "o1:void:x1"
    assert refund_key("o1", "r1") == "o1:refund:r1"
    assert len(authorize_key("o" * 64, "x" * 64)) <= 200


def test_moves_announce_their_events_and_the_codec_round_trips() -> None:
    captured = moved(_payment(S.CAPTURING), S.CAPTURED, at=NOW, amount_captured_minor=10_000)
    assert captured == PaymentCaptured("pay-1", "order-1", Decimal("100.00"), "USD", NOW)
    assert decode_event("PaymentCaptured", encode_event(captured)) == captured
    failed = moved(_payment(S.AUTHORIZING), S.DECLINED, at=NOW, decline_code="card_declined")
    assert isinstance(failed, PaymentFailed)
    assert failed.decline_code == "card_declined"
    nothing_held = _payment(S.AUTHORIZING, provider_payment_id=None)
    assert moved(nothing_held, S.VOIDED, at=NOW) is None
    assert isinstance(moved(_payment(S.AUTHORIZED), S.VOIDED, at=NOW), PaymentVoided)


def _event_body(**payment: object) -> bytes:
    data = {
        "id": "pay_1",
        "status": "authorized",
        "amount": 1999,
        "currency": "USD",
        "amount_captured": 0,
        "amount_refunded": 0,
        "reference": "pay-1",
        "decline_code": None,
    }
    data.update(payment)
    event = {"id": "evt_1", "type": "payment.authorized", "created": 1_700_000_000}
    return orjson.dumps({**event, "data": {"payment": data}})


def test_a_signed_webhook_is_verified() -> None:
    body = _event_body()
    event = SandboxWebhookVerifier(secret=SECRET).verify(
        body, sign(SECRET, 1_700_000_000, body), now=1_700_000_100
    )
    assert (event.id, event.type, event.payment.status) == (
        "evt_1",
        "payment.authorized",
        P.AUTHORIZED,
    )
    assert event.payment == parse_payment(orjson.loads(body)["data"]["payment"])


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("t=1700000000", id="no-signature"),
        pytest.param("v1=abc", id="no-timestamp"),
        pytest.param("t=abc,v1=abc", id="timestamp-not-a-number"),
        pytest.param("t=1700000000,v1=" + "0" * 64, id="wrong-digest"),
        pytest.param("t=1700000000,v1=" + "a" * 2000, id="too-long"),
    ],
)
def test_a_webhook_without_a_valid_signature_is_refused(header: str | None) -> None:
    with pytest.raises(InvalidWebhookSignature):
        SandboxWebhookVerifier(secret=SECRET).verify(_event_body(), header, now=1_700_000_000)


def test_a_webhook_signed_with_another_secret_or_body_is_refused() -> None:
    body = _event_body()
    verifier = SandboxWebhookVerifier(secret=SECRET)
    with pytest.raises(InvalidWebhookSignature):
        verifier.verify(body, sign("another-secret", 1_700_000_000, body), now=1_700_000_000)
    tampered = _event_body(amount=1)
    with pytest.raises(InvalidWebhookSignature):
        verifier.verify(tampered, sign(SECRET, 1_700_000_000, body), now=1_700_000_000)


@pytest.mark.parametrize("skew", [301, -301, 10_000])
def test_a_webhook_outside_the_tolerance_is_refused(skew: int) -> None:
    body = _event_body()
    header = sign(SECRET, 1_700_000_000, body)
    with pytest.raises(WebhookOutsideTolerance):
        SandboxWebhookVerifier(secret=SECRET, tolerance_seconds=300).verify(
            body, header, now=1_700_000_000 + skew
        )


def test_the_timestamp_is_signed_with_the_body() -> None:
    body = _event_body()
    digest = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    replayed = f"t=1700000300,v1={digest}"  # an old signature under a fresh timestamp
    with pytest.raises(InvalidWebhookSignature):
        SandboxWebhookVerifier(secret=SECRET).verify(body, replayed, now=1_700_000_300)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[]", id="not-an-object"),
        pytest.param(b'{"id": "evt_1", "type": "x", "created": 1}', id="no-data"),
        pytest.param(_event_body(status="stolen"), id="unknown-status"),
        pytest.param(_event_body(amount="1999"), id="amount-not-an-integer"),
        pytest.param(_event_body(amount=-1), id="negative-amount"),
    ],
)
def test_a_signed_but_malformed_webhook_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidWebhookPayload):
        SandboxWebhookVerifier(secret=SECRET).verify(
            body, sign(SECRET, 1_700_000_000, body), now=1_700_000_000
        )
