"""Payments use cases: checkout's TCC participant (try = authorize, confirm = capture,
cancel = void), refunds, provider webhooks and the reconciliation of what was left pending.

The provider is never asked inside a transaction. What may change money is made durable
first (a payment `authorizing` or `capturing`, a refund `pending`, each with its idempotency
key), then the provider is asked, then its answer is recorded. A crash in between leaves a
record that a repeated call, a webhook or `reconcile_pending` finishes with the same key:
the provider replays, it never charges twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TypeVar

import structlog
from prometheus_client import Counter

from ironcart.contracts.payments import PaymentSnapshot, RefundSnapshot
from ironcart.payments.domain import (
    CAPTURED_STATUSES,
    CARD_TOKEN_MAX_LENGTH,
    KEY_MAX_LENGTH,
    ORDER_ID_MAX_LENGTH,
    InvalidPayment,
    Payment,
    PaymentDeclined,
    PaymentNotCapturable,
    PaymentProviderUnavailable,
    PaymentStatus,
    ProviderStatus,
    Refund,
    RefundRejected,
    RefundStatus,
    UnknownProvider,
    check_text,
    is_orphan,
    payment_amount,
)
from ironcart.payments.events import refund_snapshot, snapshot
from ironcart.payments.gateway import (
    Declined,
    PaymentGateway,
    ProviderPayment,
    ProviderRejected,
    ProviderUnavailable,
    WebhookVerifier,
)
from ironcart.payments.records import MAX_ATTEMPTS, PaymentRecords
from ironcart.payments.repository import PaymentsUnitOfWork
from ironcart.platform.errors import IronCartError
from ironcart.platform.txn.fence import FenceConflict, FenceError, FenceState, Suspended

_log = structlog.get_logger("ironcart.payments")
T = TypeVar("T")
RECONCILE_BATCH = 100
S = PaymentStatus

OPERATIONS = Counter(
    "ironcart_payments_operations_total",
    "Payment operations asked of the provider, by outcome.",
    ["operation", "outcome"],
)


def _now() -> datetime:
    return datetime.now(UTC)


class PaymentNotVoidable(FenceConflict):
    """The provider refuses to void: the payment was captured there."""


class PaymentService:
    def __init__(
        self,
        *,
        uow_factory: Callable[[], PaymentsUnitOfWork],
        gateway: PaymentGateway,
        verifier: WebhookVerifier,
        provider: str = "sandbox",
        clock: Callable[[], datetime] = _now,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self._gateway = gateway
        self._verifier = verifier
        self._provider = provider
        self._clock = clock
        self._records = PaymentRecords(
            uow_factory=uow_factory, provider=provider, clock=clock, max_attempts=max_attempts
        )

    async def aclose(self) -> None:
        """Release the provider's connections."""
        await self._gateway.aclose()

    # -- reading ------------------------------------------------------------------------------

    async def payment_for_order(self, order_id: str) -> PaymentSnapshot | None:
        """The order's latest payment (one per checkout attempt), or None."""
        found = await self._records.list_for_order(order_id)
        return snapshot(found[-1]) if found else None

    async def payments_for_order(self, order_id: str) -> list[PaymentSnapshot]:
        """Every payment of the order, oldest first (staff)."""
        return [snapshot(payment) for payment in await self._records.list_for_order(order_id)]

    # -- try: authorize -------------------------------------------------------------------------

    async def try_authorize(
        self, *, xid: str, order_id: str, amount: Decimal, currency: str, card_token: str
    ) -> PaymentSnapshot:
        """Hold `amount` on the card. `PaymentDeclined` (402), `PaymentProviderUnavailable`
        (503); `Suspended` when the branch was cancelled first. Repeating it is safe."""
        check_text("transaction id", xid, 64)
        check_text("order id", order_id, ORDER_ID_MAX_LENGTH)
        check_text("card token", card_token, CARD_TOKEN_MAX_LENGTH)
        money = payment_amount(amount, currency)
        payment, first = await self._records.begin_try(xid=xid, order_id=order_id, amount=money)
        if not first:
            if payment.order_id != order_id or payment.amount != money:
                raise InvalidPayment("This transaction id was used for another payment.")
            if payment.status is not S.AUTHORIZING:
                return _outcome(payment)
            # Asked before without a recorded answer: the key finds what the provider did.
            found = await self._ask(self._gateway.find_by_idempotency_key(payment.authorize_key))
            if found is not None:
                return await self._settle_authorization(payment, found)
        return await self._authorize(payment, card_token)

    async def _authorize(self, payment: Payment, card_token: str) -> PaymentSnapshot:
        try:
            found = await self._gateway.authorize(
                amount_minor=payment.amount.to_minor(),
                currency=payment.currency,
                card_token=card_token,
                reference=payment.id,
                idempotency_key=payment.authorize_key,
            )
        except Declined as declined:
            OPERATIONS.labels("authorize", "declined").inc()
            if declined.payment is None:
                await self._records.give_up(
                    payment.id, S.DECLINED, decline_code=declined.decline_code
                )
                raise PaymentDeclined(declined.decline_code) from None
            return await self._settle_authorization(payment, declined.payment)
        except ProviderRejected as rejected:
            # A 4xx: the provider did nothing (a bad card token, or our request is wrong).
            OPERATIONS.labels("authorize", "rejected").inc()
            await self._records.give_up(payment.id, S.FAILED, decline_code=rejected.code)
            if rejected.code == "invalid_card_token":
                raise PaymentDeclined(rejected.code) from None
            raise PaymentProviderUnavailable(
                f"The payment provider refused the request ({rejected.code})."
            ) from None
        except ProviderUnavailable as error:
            # Unknown outcome: the payment stays `authorizing`; cancel or reconciliation
            # finds what happened by its idempotency key.
            OPERATIONS.labels("authorize", "unavailable").inc()
            _log.warning("payment_provider_unavailable", operation="authorize", error=str(error))
            raise PaymentProviderUnavailable from None
        OPERATIONS.labels("authorize", "authorized").inc()
        return await self._settle_authorization(payment, found)

    async def _settle_authorization(
        self, payment: Payment, found: ProviderPayment
    ) -> PaymentSnapshot:
        settled = await self._records.settle_authorization(payment.id, found)
        if settled is None or settled.status is S.VOIDED:
            # Cancelled while the provider was asked: nothing may stay held.
            if found.status is ProviderStatus.AUTHORIZED:
                await self._void(payment, found.id)
            raise Suspended(f"Branch payment of {payment.xid} was cancelled during its try.")
        return _outcome(settled)

    # -- confirm: capture -----------------------------------------------------------------------

    async def confirm_capture(self, *, xid: str) -> PaymentSnapshot:
        """Take the held money. Idempotent; `FenceConflict` if the branch was cancelled."""
        payment = await self._records.for_confirm(xid)
        if payment.status is S.AUTHORIZING:
            payment = await self._resolve(payment)
        if payment.status is S.AUTHORIZED:
            payment = await self._records.mark_capturing(payment.id)
        if payment.status is S.CAPTURING:
            captured = await self._capture(payment)
            return snapshot(await self._records.confirm(payment.id, captured))
        if payment.status in CAPTURED_STATUSES:
            return snapshot(await self._records.confirm(payment.id, None))
        raise PaymentNotCapturable(payment.status.value)

    async def _capture(self, payment: Payment) -> ProviderPayment:
        provider_id = payment.provider_payment_id
        if provider_id is None:  # capturing is reached from authorized only
            raise PaymentNotCapturable(payment.status.value)
        try:
            found = await self._gateway.capture(
                payment_id=provider_id,
                amount_minor=payment.amount.to_minor(),
                idempotency_key=payment.capture_key,
            )
        except ProviderRejected as rejected:
            current = await self._ask(self._gateway.get(provider_id))
            if current is not None and _captured(current):
                return current  # captured before, under another key: same money, once
            OPERATIONS.labels("capture", "rejected").inc()
            if current is not None:
                await self._records.apply(payment.id, current)
            raise PaymentNotCapturable(
                payment.status.value, f"The provider refused the capture ({rejected.code})."
            ) from None
        except ProviderUnavailable as error:
            OPERATIONS.labels("capture", "unavailable").inc()
            _log.warning("payment_provider_unavailable", operation="capture", error=str(error))
            raise PaymentProviderUnavailable from None
        OPERATIONS.labels("capture", "captured").inc()
        return found

    # -- cancel: void ---------------------------------------------------------------------------

    async def cancel_void(self, *, xid: str) -> PaymentSnapshot | None:
        """Release whatever the try held. Idempotent; a cancel before any try is recorded
        (the late try is then refused); `FenceConflict` once the branch is confirmed."""
        payment = await self._records.begin_cancel(xid)
        if payment is None:
            return None
        for _ in range(3):  # a webhook may record the authorization while we look
            if payment.status not in {S.AUTHORIZING, S.AUTHORIZED}:
                break
            found = await self._provider_view(payment)
            if found is None:
                payment = await self._records.give_up(payment.id, S.VOIDED)
            elif found.status is ProviderStatus.AUTHORIZED:
                payment = await self._void(payment, found.id)
            else:
                payment = await self._records.apply(payment.id, found)
        return snapshot(payment)

    async def _void(self, payment: Payment, provider_id: str) -> Payment:
        try:
            found = await self._gateway.void(
                payment_id=provider_id, idempotency_key=payment.void_key
            )
        except ProviderRejected as rejected:
            current = await self._ask(self._gateway.get(provider_id))
            if current is None or _captured(current):
                OPERATIONS.labels("void", "rejected").inc()
                _log.error("payment_void_refused", payment_id=payment.id, code=rejected.code)
                if current is not None:
                    await self._records.apply(payment.id, current)
                raise PaymentNotVoidable(
                    f"The provider refused to void ({rejected.code})."
                ) from None
            found = current
        except ProviderUnavailable as error:
            OPERATIONS.labels("void", "unavailable").inc()
            _log.warning("payment_provider_unavailable", operation="void", error=str(error))
            raise PaymentProviderUnavailable from None
        OPERATIONS.labels("void", "voided").inc()
        return await self._records.apply(payment.id, found)

    async def _resolve(self, payment: Payment) -> Payment:
        """An `authorizing` payment brought to what the provider did with its key."""
        found = await self._provider_view(payment)
        return payment if found is None else await self._records.apply(payment.id, found)

    async def _provider_view(self, payment: Payment) -> ProviderPayment | None:
        if payment.provider_payment_id is not None:
            return await self._ask(self._gateway.get(payment.provider_payment_id))
        return await self._ask(self._gateway.find_by_idempotency_key(payment.authorize_key))

    async def _ask(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except ProviderUnavailable as error:
            _log.warning("payment_provider_unavailable", operation="read", error=str(error))
            raise PaymentProviderUnavailable from None

    # -- refunds --------------------------------------------------------------------------------

    async def refund(
        self, *, order_id: str, amount: Decimal, idempotency_key: str
    ) -> RefundSnapshot:
        """Give back part of what was captured; never more than is left (409). The same key
        is the same refund; while the provider cannot answer it stays pending (503)."""
        check_text("order id", order_id, ORDER_ID_MAX_LENGTH)
        check_text("idempotency key", idempotency_key, KEY_MAX_LENGTH)
        refund, payment = await self._records.reserve_refund(
            order_id=order_id, amount=amount, idempotency_key=idempotency_key
        )
        return refund_snapshot(await self._refund_at_provider(refund, payment))

    async def _refund_at_provider(self, refund: Refund, payment: Payment) -> Refund:
        if refund.status is RefundStatus.FAILED:
            raise RefundRejected(refund.failure_code or "refused")
        if refund.status is RefundStatus.SUCCEEDED or payment.provider_payment_id is None:
            return refund
        try:
            done = await self._gateway.refund(
                payment_id=payment.provider_payment_id,
                amount_minor=refund.amount.to_minor(),
                idempotency_key=refund.provider_key,
            )
        except ProviderRejected as rejected:
            OPERATIONS.labels("refund", "rejected").inc()
            await self._records.settle_refund(refund, failure_code=rejected.code)
            raise RefundRejected(rejected.code) from None
        except ProviderUnavailable as error:
            OPERATIONS.labels("refund", "unavailable").inc()
            _log.warning("payment_provider_unavailable", operation="refund", error=str(error))
            raise PaymentProviderUnavailable(
                "The payment provider cannot be reached; the refund is pending. "
                "Retry with the same idempotency key."
            ) from None
        OPERATIONS.labels("refund", "refunded").inc()
        return await self._records.settle_refund(refund, provider_refund_id=done.id)

    # -- webhooks -------------------------------------------------------------------------------

    async def handle_webhook(
        self, *, provider: str, body: bytes, signature_header: str | None
    ) -> bool:
        """Verify and apply a provider event; False for a duplicate (acknowledged, no effect)."""
        if provider != self._provider:
            raise UnknownProvider(f"No payment provider {provider!r}.")
        event = self._verifier.verify(body, signature_header, now=self._clock().timestamp())
        payment = await self._records.find_for(event.payment)
        if payment is None:
            _log.info("payment_webhook_unmatched", event_id=event.id, type=event.type)
        else:
            await self._void_if_orphan(payment, event.payment)
        return await self._records.record_webhook(event, None if payment is None else payment.id)

    async def _void_if_orphan(self, payment: Payment, reported: ProviderPayment) -> None:
        """An authorization nobody will capture (given up, or its branch cancelled) is voided."""
        cancelled = await self._records.fence_state(payment.xid) is FenceState.CANCELLED
        if not is_orphan(payment.status, reported.status, cancelled=cancelled):
            return
        _log.warning("payment_orphan_authorization", payment_id=payment.id, xid=payment.xid)
        # Refused (captured there): logged by _void; the event is recorded all the same.
        with contextlib.suppress(PaymentNotVoidable):
            await self._void(payment, reported.id)

    # -- reconciliation -------------------------------------------------------------------------

    async def reconcile_pending(
        self, *, older_than_seconds: float, limit: int = RECONCILE_BATCH
    ) -> int:
        """Bring payments left authorizing/capturing, and refunds left pending, to the
        provider's state; returns how many were settled. `older_than_seconds` must exceed
        the gateway's deadline per call, so that no request of theirs is still in flight."""
        before = self._clock() - timedelta(seconds=older_than_seconds)
        settled = 0
        for payment in await self._records.pending_payments(before=before, limit=limit):
            settled += await self._quietly(self._reconcile_payment(payment), payment.id)
        for refund in await self._records.pending_refunds(before=before, limit=limit):
            settled += await self._quietly(self._reconcile_refund(refund), refund.id)
        return settled

    async def _quietly(self, job: Awaitable[bool], subject: str) -> int:
        try:
            return 1 if await job else 0
        except (IronCartError, FenceError) as error:
            _log.warning("payment_reconcile_failed", subject=subject, error=str(error))
            return 0

    async def _reconcile_payment(self, payment: Payment) -> bool:
        if payment.status is S.CAPTURING:
            await self._records.confirm(payment.id, await self._capture(payment))
            return True
        found = await self._provider_view(payment)
        cancelled = await self._records.fence_state(payment.xid) is FenceState.CANCELLED
        if found is None:
            # Nothing arrived within the deadline of every attempt: nothing is held.
            target = S.VOIDED if cancelled else S.FAILED
            await self._records.give_up(payment.id, target, decline_code="no_authorization")
        elif cancelled and found.status is ProviderStatus.AUTHORIZED:
            await self._void(payment, found.id)
        else:
            await self._records.apply(payment.id, found)
        return True

    async def _reconcile_refund(self, refund: Refund) -> bool:
        payment = await self._records.get(refund.payment_id)
        return (await self._refund_at_provider(refund, payment)).status is not RefundStatus.PENDING


def _captured(found: ProviderPayment) -> bool:
    return found.status in {
        ProviderStatus.CAPTURED,
        ProviderStatus.PARTIALLY_REFUNDED,
        ProviderStatus.REFUNDED,
    }


def _outcome(payment: Payment) -> PaymentSnapshot:
    """A try's answer: the payment, or the decline it ended in."""
    if payment.status in {S.DECLINED, S.FAILED}:
        raise PaymentDeclined(payment.decline_code or payment.status.value)
    return snapshot(payment)
