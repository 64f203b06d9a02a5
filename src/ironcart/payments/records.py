"""Every transaction of the payments context: short, one unit of work each, never a call out.

The service asks the provider between these transactions, never inside one. A transaction
that lost to a deadlock, a serialization failure or SQLite's busy timeout is run again
(`platform.database.is_transient`). A status move records its outbox event in the same
transaction (`payments.events.moved`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypeVar

import structlog
from sqlalchemy.exc import DBAPIError

from ironcart.payments.domain import (
    CAPTURED_STATUSES,
    IdempotencyKeyReused,
    InvalidPayment,
    Payment,
    PaymentContention,
    PaymentNotFound,
    PaymentNotRefundable,
    PaymentStatus,
    Refund,
    RefundExceedsCaptured,
    RefundStatus,
    authorize_key,
    payment_amount,
    reported_target,
)
from ironcart.payments.events import moved, refunded
from ironcart.payments.gateway import ProviderPayment, WebhookEvent
from ironcart.payments.repository import PaymentsUnitOfWork
from ironcart.platform.database import is_transient
from ironcart.platform.money import Money, MoneyError
from ironcart.platform.txn.fence import FenceConflict, FenceState

_log = structlog.get_logger("ironcart.payments")
T = TypeVar("T")
MAX_ATTEMPTS = 50


class _Lost:
    """An insert-if-absent found the row taken by a concurrent writer: run the transaction again."""


LOST = _Lost()


def _now() -> datetime:
    return datetime.now(UTC)


class PaymentRecords:
    def __init__(
        self,
        *,
        uow_factory: Callable[[], PaymentsUnitOfWork],
        provider: str,
        clock: Callable[[], datetime] = _now,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self._uow = uow_factory
        self._provider = provider
        self._clock = clock
        self._max_attempts = max_attempts

    async def _retrying(self, attempt: Callable[[], Awaitable[T | _Lost]]) -> T:
        for _ in range(self._max_attempts):
            try:
                result = await attempt()
            except DBAPIError as error:
                if not is_transient(error):
                    raise
                _log.info("payments_transaction_retried", error=type(error.orig).__name__)
                continue
            if not isinstance(result, _Lost):
                return result
        raise PaymentContention

    # -- reads --------------------------------------------------------------------------------

    async def get(self, payment_id: str) -> Payment:
        async with self._uow().reading() as uow:
            payment = await uow.payments.get(payment_id)
        if payment is None:
            raise PaymentNotFound(f"No payment {payment_id!r}.")
        return payment

    async def list_for_order(self, order_id: str) -> list[Payment]:
        async with self._uow().reading() as uow:
            return await uow.payments.list_for_order(order_id)

    async def fence_state(self, xid: str) -> FenceState | None:
        async with self._uow().reading() as uow:
            return await uow.fences.state(xid)

    async def find_for(self, reported: ProviderPayment) -> Payment | None:
        """Our payment for a provider's: by its id, else by the reference we gave (our id)."""
        async with self._uow().reading() as uow:
            found = await uow.payments.get_by_provider_id(self._provider, reported.id)
            if found is None and reported.reference:
                found = await uow.payments.get(reported.reference)
        if found is None or found.provider_payment_id not in {None, reported.id}:
            return None
        return found

    async def pending_payments(self, *, before: datetime, limit: int) -> list[Payment]:
        async with self._uow().reading() as uow:
            return await uow.payments.pending(before=before, limit=limit)

    async def pending_refunds(self, *, before: datetime, limit: int) -> list[Refund]:
        async with self._uow().reading() as uow:
            return await uow.refunds.pending(before=before, limit=limit)

    # -- the TCC branch -----------------------------------------------------------------------

    async def begin_try(self, *, xid: str, order_id: str, amount: Money) -> tuple[Payment, bool]:
        """Fence the try and store the payment `authorizing`: (payment, first try?).

        `Suspended` when the branch was cancelled before; a repeated try gets the stored one.
        """
        return await self._retrying(lambda: self._begin_try(xid, order_id, amount))

    async def _begin_try(self, xid: str, order_id: str, amount: Money) -> tuple[Payment, bool]:
        async with self._uow() as uow:
            if not await uow.fences.begin_try(xid):
                stored = await uow.payments.get_by_xid(xid)
                if stored is None:
                    raise FenceConflict(f"Branch payment of {xid} was tried without a payment.")
                return stored, False
            now = self._clock()
            payment = Payment(
                id=str(uuid.uuid4()),
                order_id=order_id,
                xid=xid,
                provider=self._provider,
                provider_payment_id=None,
                status=PaymentStatus.AUTHORIZING,
                amount=amount,
                amount_captured_minor=0,
                amount_refunded_minor=0,
                amount_refund_pending_minor=0,
                authorize_key=authorize_key(order_id, xid),
                decline_code=None,
                version=1,
                created_at=now,
                updated_at=now,
            )
            await uow.payments.add(payment)
            await uow.commit()
        return payment, True

    async def settle_authorization(
        self, payment_id: str, reported: ProviderPayment
    ) -> Payment | None:
        """Record the provider's answer to the try, unless the branch was cancelled meanwhile
        (None: nothing written, the caller voids what was authorized)."""
        return await self._retrying(lambda: self._settle_authorization(payment_id, reported))

    async def _settle_authorization(
        self, payment_id: str, reported: ProviderPayment
    ) -> Payment | None:
        async with self._uow() as uow:
            payment = await self._get_in(uow, payment_id)
            if not await uow.fences.hold_tried(payment.xid, now=self._clock()):
                if await uow.fences.state(payment.xid) is FenceState.CANCELLED:
                    return None
                return payment  # confirmed by a repeated try's answer: it has moved on
            payment = await self._get_in(uow, payment_id)  # as it is under the fence lock
            await self._apply_in(uow, payment, reported)
            fresh = await self._get_in(uow, payment_id)
            await uow.commit()
        return fresh

    async def for_confirm(self, xid: str) -> Payment:
        """The payment of a branch that may be confirmed; `FenceConflict` otherwise."""
        async with self._uow().reading() as uow:
            state = await uow.fences.state(xid)
            payment = await uow.payments.get_by_xid(xid)
        if state is FenceState.CANCELLED:
            raise FenceConflict(f"Branch payment of {xid} is cancelled; it cannot be confirmed.")
        if state is None or payment is None:
            raise FenceConflict(f"Branch payment of {xid} was never tried.")
        return payment

    async def mark_capturing(self, payment_id: str) -> Payment:
        """authorized -> capturing while the branch is still tried (the capture is decided)."""
        return await self._retrying(lambda: self._mark_capturing(payment_id))

    async def _mark_capturing(self, payment_id: str) -> Payment:
        async with self._uow() as uow:
            payment = await self._get_in(uow, payment_id)
            if not await uow.fences.hold_tried(payment.xid, now=self._clock()):
                raise FenceConflict(f"Branch payment of {payment.xid} is not tried any more.")
            await uow.payments.move(payment.id, PaymentStatus.CAPTURING, now=self._clock())
            fresh = await self._get_in(uow, payment_id)
            await uow.commit()
        return fresh

    async def confirm(self, payment_id: str, captured: ProviderPayment | None) -> Payment:
        """One transaction: confirm the fence and record the capture (with its event)."""
        return await self._retrying(lambda: self._confirm(payment_id, captured))

    async def _confirm(self, payment_id: str, captured: ProviderPayment | None) -> Payment:
        async with self._uow() as uow:
            payment = await self._get_in(uow, payment_id)
            await uow.fences.begin_confirm(payment.xid)
            if captured is not None:
                await self._apply_in(uow, payment, captured)
            fresh = await self._get_in(uow, payment_id)
            await uow.commit()
        return fresh

    async def begin_cancel(self, xid: str) -> Payment | None:
        """Fence the cancel (an empty rollback when no try came); the branch's payment if any."""
        return await self._retrying(lambda: self._begin_cancel(xid))

    async def _begin_cancel(self, xid: str) -> Payment | None:
        async with self._uow() as uow:
            await uow.fences.begin_cancel(xid)
            # Read under the fence's lock: a capture decided before it is seen here.
            payment = await uow.payments.get_by_xid(xid)
            if payment is not None and (
                payment.status is PaymentStatus.CAPTURING or payment.status in CAPTURED_STATUSES
            ):
                raise FenceConflict(f"The payment of {xid} is {payment.status.value}.")
            await uow.commit()
        return payment

    # -- status moves -------------------------------------------------------------------------

    async def apply(self, payment_id: str, reported: ProviderPayment) -> Payment:
        """Bring the payment forward to what the provider reports (never backwards)."""
        return await self._retrying(lambda: self._apply(payment_id, reported))

    async def _apply(self, payment_id: str, reported: ProviderPayment) -> Payment:
        async with self._uow() as uow:
            payment = await self._get_in(uow, payment_id)
            await self._apply_in(uow, payment, reported)
            fresh = await self._get_in(uow, payment_id)
            await uow.commit()
        return fresh

    async def give_up(
        self, payment_id: str, target: PaymentStatus, *, decline_code: str | None = None
    ) -> Payment:
        """authorizing -> `target` (voided, failed): the provider holds nothing for it."""
        return await self._retrying(lambda: self._give_up(payment_id, target, decline_code))

    async def _give_up(
        self, payment_id: str, target: PaymentStatus, decline_code: str | None
    ) -> Payment:
        async with self._uow() as uow:
            payment = await self._get_in(uow, payment_id)
            if payment.provider_payment_id is None:
                await self._move_in(
                    uow,
                    payment,
                    target,
                    decline_code=decline_code,
                    sources=frozenset({PaymentStatus.AUTHORIZING}),
                )
            fresh = await self._get_in(uow, payment_id)
            await uow.commit()
        return fresh

    async def record_webhook(self, event: WebhookEvent, payment_id: str | None) -> bool:
        """Apply a provider event once: False when this event was seen before."""
        return await self._retrying(lambda: self._record_webhook(event, payment_id))

    async def _record_webhook(self, event: WebhookEvent, payment_id: str | None) -> bool:
        async with self._uow() as uow:
            if not await uow.webhook_events.add_if_absent(
                provider=self._provider,
                event_id=event.id,
                event_type=event.type,
                provider_payment_id=event.payment.id,
                now=self._clock(),
            ):
                return False
            payment = None if payment_id is None else await uow.payments.get(payment_id)
            if payment is not None:
                await self._apply_in(uow, payment, event.payment)
            await uow.commit()
        return True

    async def _apply_in(
        self, uow: PaymentsUnitOfWork, payment: Payment, reported: ProviderPayment
    ) -> bool:
        target = reported_target(payment.status, reported.status)
        if target is None:
            if payment.provider_payment_id is None:
                await uow.payments.attach_provider_id(payment.id, reported.id, now=self._clock())
            return False
        return await self._move_in(
            uow,
            payment,
            target,
            provider_payment_id=reported.id,
            decline_code=reported.decline_code if target is PaymentStatus.DECLINED else None,
            # Never more than we authorized, whatever a report says (the table refuses it too).
            amount_captured_minor=(
                min(reported.amount_captured_minor, payment.amount.to_minor())
                if target is PaymentStatus.CAPTURED
                else None
            ),
        )

    async def _move_in(
        self,
        uow: PaymentsUnitOfWork,
        payment: Payment,
        target: PaymentStatus,
        *,
        provider_payment_id: str | None = None,
        decline_code: str | None = None,
        amount_captured_minor: int | None = None,
        sources: frozenset[PaymentStatus] | None = None,
    ) -> bool:
        now = self._clock()
        if not await uow.payments.move(
            payment.id,
            target,
            now=now,
            provider_payment_id=provider_payment_id,
            decline_code=decline_code,
            amount_captured_minor=amount_captured_minor,
            sources=sources,
        ):
            return False
        event = moved(
            payment,
            target,
            at=now,
            amount_captured_minor=amount_captured_minor,
            decline_code=decline_code,
            provider_payment_id=provider_payment_id,
        )
        if event is not None:
            await uow.outbox.record(event)
        _log.info("payment_moved", payment_id=payment.id, status=target.value)
        return True

    async def _get_in(self, uow: PaymentsUnitOfWork, payment_id: str) -> Payment:
        payment = await uow.payments.get(payment_id)
        if payment is None:
            raise PaymentNotFound(f"No payment {payment_id!r}.")
        return payment

    # -- refunds ------------------------------------------------------------------------------

    async def reserve_refund(
        self, *, order_id: str, amount: Decimal, idempotency_key: str
    ) -> tuple[Refund, Payment]:
        """The refund of this key, created and its amount held on the payment if it is new."""
        return await self._retrying(lambda: self._reserve_refund(order_id, amount, idempotency_key))

    async def _reserve_refund(
        self, order_id: str, amount: Decimal, key: str
    ) -> tuple[Refund, Payment] | _Lost:
        async with self._uow() as uow:
            existing = await uow.refunds.get_by_key(order_id, key)
            if existing is not None:
                if _amount(amount, existing.amount.currency) != existing.amount:
                    raise IdempotencyKeyReused("This key was used for a refund of another amount.")
                return existing, await self._get_in(uow, existing.payment_id)
            payment = await uow.payments.captured_for_order(order_id)
            if payment is None:
                raise PaymentNotRefundable("Nothing was captured for this order.")
            money = _amount(amount, payment.currency)
            payment.check_refund(money)
            now = self._clock()
            refund = Refund(
                id=str(uuid.uuid4()),
                payment_id=payment.id,
                order_id=order_id,
                amount=money,
                status=RefundStatus.PENDING,
                idempotency_key=key,
                provider_refund_id=None,
                failure_code=None,
                created_at=now,
                updated_at=now,
            )
            if not await uow.refunds.add_if_absent(refund):
                return LOST  # the same key, concurrently: answer with that refund
            if not await uow.payments.reserve_refund(payment.id, money.to_minor(), now=now):
                fresh = await self._get_in(uow, payment.id)
                raise RefundExceedsCaptured(requested=money, refundable=fresh.refundable)
            await uow.commit()
        return refund, payment

    async def settle_refund(
        self,
        refund: Refund,
        *,
        provider_refund_id: str | None = None,
        failure_code: str | None = None,
    ) -> Refund:
        """Record the provider's answer (a refund id, or a failure) and release the hold."""
        return await self._retrying(
            lambda: self._settle_refund(refund, provider_refund_id, failure_code)
        )

    async def _settle_refund(
        self, refund: Refund, provider_refund_id: str | None, failure_code: str | None
    ) -> Refund:
        succeeded = failure_code is None
        status = RefundStatus.SUCCEEDED if succeeded else RefundStatus.FAILED
        async with self._uow() as uow:
            now = self._clock()
            if await uow.refunds.settle(
                refund.id,
                status,
                now=now,
                provider_refund_id=provider_refund_id,
                failure_code=failure_code,
            ):
                minor = refund.amount.to_minor()
                await uow.payments.settle_refund(
                    refund.payment_id, minor, succeeded=succeeded, now=now
                )
                if succeeded:
                    await uow.outbox.record(refunded(refund, at=now))
            fresh = await uow.refunds.get(refund.id)
            await uow.commit()
        if fresh is None:
            raise RuntimeError(f"refund {refund.id} vanished")
        return fresh


def _amount(amount: Decimal, currency: str) -> Money:
    try:
        return payment_amount(amount, currency)
    except (InvalidPayment, MoneyError) as error:
        raise InvalidPayment(f"Invalid refund amount: {error}") from None
