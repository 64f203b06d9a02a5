"""The sandbox PSP's use cases: idempotent payment operations and the lookups.

An operation runs in one transaction with its effects: the payment row, the ledger entry,
the webhook event(s) in the outbox and the response stored under the idempotency key. A
402/404/409 answer is stored too (in its own transaction, after the effects rolled back).
A 400 (the request is malformed) or a 5xx answer is not: a retry with the same key is then
processed afresh. A 400 forgets the key; a 5xx releases it (tok_retry counts the attempts).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from ironcart.sandbox.common import (
    Operation,
    StoredResponse,
    error_response,
    json_response,
    run_idempotent,
)
from ironcart.sandbox.psp_domain import (
    AUTHORIZED,
    RETRY_TOKEN,
    Conflict,
    NotFound,
    Payment,
    Refund,
    TryAgain,
    captured,
    new_id,
    new_payment,
    refunded,
    voided,
)
from ironcart.sandbox.psp_faults import FaultInjector
from ironcart.sandbox.psp_store import SqlPspStore

PAYMENTS_PATH = "/v1/payments"


class PspService:
    def __init__(
        self,
        store: SqlPspStore,
        faults: FaultInjector,
        *,
        account: str,
        webhooks_enabled: bool,
        on_events: Callable[[], None],
    ) -> None:
        self._store = store
        self._faults = faults
        self._account = account
        self._webhooks_enabled = webhooks_enabled
        self._on_events = on_events

    async def run_idempotent(
        self,
        *,
        key: str,
        path: str,
        payload: dict[str, Any],
        latency_seconds: float,
        operation: Operation,
    ) -> tuple[StoredResponse, bool]:
        """The response to a POST, and whether it is a replay of the stored one."""
        answer = await run_idempotent(
            self._store,
            account=self._account,
            key=key,
            path=path,
            payload=payload,
            latency_seconds=latency_seconds,
            operation=operation,
        )
        if not answer[1]:
            self._on_events()
        return answer

    # Operations (run inside the transaction opened by `common.run_idempotent`)

    def authorize(self, payload: dict[str, Any]) -> Operation:
        def operation(key: str, attempt: int) -> StoredResponse:
            payment = new_payment(payload)
            if payment.card_token == RETRY_TOKEN and attempt == 1:
                raise TryAgain("try_again", "processor busy: retry with the same Idempotency-Key")
            self._store.add_payment(payment, account=self._account, key=key)
            if payment.status != AUTHORIZED:
                self._emit("payment.declined", payment)
                return json_response(402, payment.to_json())
            self._store.add_ledger_entry(
                payment.id, "authorize", payment.amount, key=key, at=payment.updated_at
            )
            self._emit("payment.authorized", payment)
            return json_response(201, payment.to_json())

        return operation

    def capture(self, payment_id: str, payload: dict[str, Any]) -> Operation:
        def operation(key: str, _attempt: int) -> StoredResponse:
            payment = self.get_payment(payment_id)
            changed = captured(payment, payload)
            self._save(changed, previous=payment)
            self._store.add_ledger_entry(
                payment.id, "capture", changed.amount_captured, key=key, at=changed.updated_at
            )
            self._emit("payment.captured", changed)
            return json_response(200, changed.to_json())

        return operation

    def void(self, payment_id: str) -> Operation:
        def operation(key: str, _attempt: int) -> StoredResponse:
            payment = self.get_payment(payment_id)
            changed = voided(payment)
            if changed is None:
                return json_response(200, payment.to_json())
            self._save(changed, previous=payment)
            self._store.add_ledger_entry(
                payment.id, "void", payment.amount, key=key, at=changed.updated_at
            )
            self._emit("payment.voided", changed)
            return json_response(200, changed.to_json())

        return operation

    def refund(self, payment_id: str, payload: dict[str, Any]) -> Operation:
        def operation(key: str, _attempt: int) -> StoredResponse:
            payment = self.get_payment(payment_id)
            changed, refund = refunded(payment, payload)
            self._save(changed, previous=payment)
            self._store.add_refund(refund)
            self._store.add_ledger_entry(
                payment.id, "refund", refund.amount, key=key, at=refund.created_at
            )
            self._emit("payment.refunded", changed, refund)
            return json_response(201, refund.to_json())

        return operation

    def _save(self, payment: Payment, *, previous: Payment) -> None:
        if not self._store.update_payment(payment, expected_status=previous.status):
            raise Conflict("invalid_state", f"payment {payment.id} changed meanwhile")

    def _emit(self, event_type: str, payment: Payment, refund: Refund | None = None) -> None:
        if not self._webhooks_enabled:
            return
        faults = self._faults.roll_webhook()
        event_id = new_id("evt_")
        data: dict[str, Any] = {"payment": payment.to_json()}
        if refund is not None:
            data["refund"] = refund.to_json()
        created = time.time()
        body = orjson.dumps(
            {"id": event_id, "type": event_type, "created": int(created), "data": data}
        )
        state = "dropped" if faults.drop else "held" if faults.hold else "pending"
        for _ in range(2 if faults.duplicate else 1):
            self._store.add_event(
                event_id,
                event_type,
                payment.id,
                body,
                state=state,
                due=created + faults.delay_seconds,
            )

    # Lookups

    def get_payment(self, payment_id: str) -> Payment:
        payment = self._store.get_payment(self._account, payment_id)
        if payment is None:
            raise NotFound("payment_not_found", f"no payment {payment_id}")
        return payment

    def payments_with_reference(self, reference: str) -> list[Payment]:
        return self._store.payments_with_reference(self._account, reference)

    def payment_by_key(self, key: str) -> Payment:
        """The payment a `POST /v1/payments` with `key` created; 409 while that call runs."""
        payment = self._store.payment_by_key(self._account, key)
        if payment is not None:
            return payment
        if self._store.key_in_progress(self._account, key, PAYMENTS_PATH):
            raise Conflict("idempotency_key_in_use", "the request with this key is still running")
        raise NotFound("payment_not_found", "no payment was created with this Idempotency-Key")

    def all_payments(self) -> list[Payment]:
        return self._store.all_payments()

    def ledger(self) -> list[dict[str, Any]]:
        return self._store.ledger()

    def webhook_events(self) -> list[dict[str, Any]]:
        return self._store.events()


__all__ = ["Operation", "PspService", "error_response", "json_response"]
