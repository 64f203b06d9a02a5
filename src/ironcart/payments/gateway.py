"""The port to a payment provider (PSP), in the provider-neutral terms the service uses.

Every call that changes money carries an idempotency key, so an adapter may retry it and the
provider applies it once. Adapters raise only these errors:

GatewayError
 ├── Declined              the card was declined (`decline_code`; `payment` when the PSP made one)
 ├── ProviderRejected      a 4xx: the request is wrong for the payment's state (`code`, `status`)
 └── ProviderUnavailable   5xx, timeouts, connection errors, after the adapter's retries

Webhooks are checked by a `WebhookVerifier` of the same provider (signature, age, shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ironcart.payments.domain import ProviderStatus


@dataclass(frozen=True, slots=True)
class ProviderPayment:
    id: str
    status: ProviderStatus
    amount_minor: int
    currency: str
    amount_captured_minor: int
    amount_refunded_minor: int
    reference: str
    decline_code: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderRefund:
    id: str
    payment_id: str
    amount_minor: int
    status: str


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A verified provider event about one payment (the payment as it was at `created`)."""

    id: str
    type: str
    created: int
    payment: ProviderPayment


class GatewayError(Exception):
    """Something the provider said, or could not say."""


class Declined(GatewayError):
    def __init__(self, decline_code: str, payment: ProviderPayment | None = None) -> None:
        self.decline_code = decline_code
        self.payment = payment
        super().__init__(f"declined: {decline_code}")


class ProviderRejected(GatewayError):
    def __init__(self, status: int, code: str, message: str = "") -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"{status} {code}: {message}")


class ProviderUnavailable(GatewayError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class PaymentGateway(Protocol):
    async def authorize(
        self,
        *,
        amount_minor: int,
        currency: str,
        card_token: str,
        reference: str,
        idempotency_key: str,
    ) -> ProviderPayment:
        """Hold the amount on the card; `Declined` when the card is refused."""
        ...

    async def capture(
        self, *, payment_id: str, amount_minor: int, idempotency_key: str
    ) -> ProviderPayment:
        """Take (part of) the held amount."""
        ...

    async def void(self, *, payment_id: str, idempotency_key: str) -> ProviderPayment:
        """Release the hold; voiding a voided payment answers it unchanged."""
        ...

    async def refund(
        self, *, payment_id: str, amount_minor: int, idempotency_key: str
    ) -> ProviderRefund:
        """Give back part of what was captured."""
        ...

    async def get(self, payment_id: str) -> ProviderPayment | None:
        """The payment as the provider has it now; None if it does not know it."""
        ...

    async def find_by_idempotency_key(self, idempotency_key: str) -> ProviderPayment | None:
        """The payment an authorize with this key created; None if none arrived or it failed."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class WebhookVerifier(Protocol):
    def verify(self, body: bytes, signature_header: str | None, *, now: float) -> WebhookEvent:
        """The event if signed by the provider within the tolerance; a domain error otherwise."""
        ...
