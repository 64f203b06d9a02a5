"""Payments against the real sandbox PSP: a service wired to it, its control plane, and a
fault-injecting httpx transport in front of the real one (lost responses, refused connects).

    async with payments_harness(database_url, tmp_path) as harness:
        harness.transport.lose("POST", "/v1/payments", times=1)  # the PSP acts, we never hear
        ...
        assert await harness.ledger(order_id) == [...]
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from ironcart.payments.repository import PaymentsUnitOfWork, payments, payments_outbox
from ironcart.payments.sandbox_gateway import HttpSandboxGateway, SandboxWebhookVerifier
from ironcart.payments.service import PaymentService
from ironcart.platform.database import create_engine, session_factory
from tests.support.psp import PspProcess, running_psp


@dataclass
class _Rule:
    kind: str  # "lose": forward, then drop the answer; "refuse": never reach the PSP
    method: str
    path: str
    times: float


@dataclass
class FaultyTransport(httpx.AsyncBaseTransport):
    """The real transport, except for requests whose path ends with a rule's (`times` each)."""

    inner: httpx.AsyncBaseTransport = field(default_factory=httpx.AsyncHTTPTransport)
    rules: list[_Rule] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def lose(self, method: str, path: str, *, times: float = math.inf) -> None:
        """The PSP processes the request; its answer never arrives (a read timeout)."""
        self.rules.append(_Rule("lose", method, path, times))

    def refuse(self, method: str, path: str, *, times: float = math.inf) -> None:
        """The request never reaches the PSP (a connection error)."""
        self.rules.append(_Rule("refuse", method, path, times))

    def clear(self) -> None:
        self.rules.clear()

    def _rule(self, request: httpx.Request) -> _Rule | None:
        for rule in self.rules:
            if (
                rule.times > 0
                and request.method == rule.method
                and request.url.path.endswith(rule.path)
            ):
                rule.times -= 1
                return rule
        return None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        rule = self._rule(request)
        if rule is not None and rule.kind == "refuse":
            raise httpx.ConnectError("injected: connection refused", request=request)
        response = await self.inner.handle_async_request(request)
        if rule is not None and rule.kind == "lose":
            await response.aread()
            await response.aclose()
            raise httpx.ReadTimeout("injected: the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class PaymentsHarness:
    service: PaymentService
    engine: AsyncEngine
    psp: PspProcess
    control: httpx.AsyncClient
    transport: FaultyTransport

    @staticmethod
    def ids() -> tuple[str, str]:
        """A fresh (order id, xid)."""
        return f"order-{uuid.uuid4().hex[:12]}", f"xid-{uuid.uuid4().hex}"

    async def ledger(self, order_id: str) -> list[tuple[str, int]]:
        """(operation, amount) of every effective PSP operation for this order, in order."""
        response = await self.control.get("/_sandbox/ledger")
        assert response.status_code == 200, response.text
        return [
            (entry["operation"], entry["amount"])
            for entry in response.json()["data"]
            if str(entry["idempotency_key"]).startswith(f"{order_id}:")
        ]

    async def psp_payment(self, key: str) -> dict[str, Any] | None:
        """The PSP's payment created by the authorize with this idempotency key."""
        response = await self.control.get(f"/v1/payments/by-idempotency-key/{key}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    async def faults(self, **faults: Any) -> None:
        response = await self.control.put("/_sandbox/faults", json=faults)
        assert response.status_code == 200, response.text

    async def row(self, xid: str) -> dict[str, Any] | None:
        async with self.engine.connect() as connection:
            found = (
                await connection.execute(select(payments).where(payments.c.xid == xid))
            ).first()
        return None if found is None else dict(found._mapping)

    async def outbox(self, order_id: str) -> list[str]:
        """The event types recorded for this order, in order (subjects are per event type)."""
        query = select(
            payments_outbox.c.event_type, payments_outbox.c.subject, payments_outbox.c.payload
        ).order_by(payments_outbox.c.seq)
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        for event_type, subject, _ in rows:
            assert subject == f"payments.{event_type}"
        return [
            event_type
            for event_type, _, payload in rows
            if orjson.loads(payload).get("order_id") == order_id
        ]


def sandbox_gateway(
    psp: PspProcess, transport: httpx.AsyncBaseTransport, **options: Any
) -> HttpSandboxGateway:
    settings: dict[str, Any] = {
        "read_timeout_seconds": 2.0,
        "connect_timeout_seconds": 1.0,
        "max_attempts": 4,
        "deadline_seconds": 8.0,
        "backoff_initial_seconds": 0.01,
        "backoff_max_seconds": 0.1,
    }
    settings.update(options)
    return HttpSandboxGateway(
        base_url=psp.url, api_key=psp.api_key, transport=transport, **settings
    )


@asynccontextmanager
async def payments_harness(
    database_url: str,
    tmp_path: Path,
    *,
    webhook_url: str | None = None,
    **gateway_options: Any,
) -> AsyncIterator[PaymentsHarness]:
    """A payment service on a migrated database and a fresh sandbox PSP process."""
    async with AsyncExitStack() as stack:
        psp = await stack.enter_async_context(running_psp(tmp_path, webhook_url=webhook_url))
        engine = create_engine(database_url, pool_size=20)
        stack.push_async_callback(engine.dispose)
        sessions = session_factory(engine)
        transport = FaultyTransport()
        service = PaymentService(
            uow_factory=lambda: PaymentsUnitOfWork(sessions),
            gateway=sandbox_gateway(psp, transport, **gateway_options),
            verifier=SandboxWebhookVerifier(secret=psp.secret),
        )
        stack.push_async_callback(service.aclose)
        control = await stack.enter_async_context(psp.client())
        yield PaymentsHarness(service, engine, psp, control, transport)
