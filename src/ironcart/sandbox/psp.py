"""`ironcart sandbox-psp`: the payment provider IronCart tests against, over HTTP.

The contract is docs/sandbox-psp.md. This module is the HTTP edge (Starlette, no middleware):
authentication, the per-call faults, JSON in and out, and the one place where `PspError`
becomes an `{"error": {"code", "message"}}` answer. The rules are in `psp_domain`, the use
cases in `psp_service`, the SQLite file in `psp_store`, webhook delivery in `psp_webhooks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ironcart.platform.tracing import trace_sandbox
from ironcart.sandbox.common import (
    authenticate,
    cancel,
    json_object,
    listing,
    on_http_error,
    on_sandbox_error,
    respond,
    respond_json,
    serve_app,
)
from ironcart.sandbox.psp_domain import (
    InjectedFault,
    PspError,
    idempotency_key_of,
    text_of,
)
from ironcart.sandbox.psp_faults import CallFaults, FaultInjector, Faults
from ironcart.sandbox.psp_service import Operation, PspService, json_response
from ironcart.sandbox.psp_store import SqlPspStore, StoredResponse
from ironcart.sandbox.psp_transport import KeepAliveTransport
from ironcart.sandbox.psp_webhooks import WebhookDispatcher

logger = logging.getLogger("ironcart.sandbox.psp")
REPLAYED = {"Idempotent-Replayed": "true"}
MAX_BODY_BYTES = 64 * 1024
WEBHOOK_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class PspConfig:
    store_path: Path
    api_key: str
    webhook_secret: str
    webhook_url: str | None = None
    webhook_first_backoff_seconds: float = 0.5


class PspApi:
    """The routes; `create_app` wires them into a Starlette app."""

    def __init__(self, config: PspConfig) -> None:
        self._config = config
        self._bearer = f"Bearer {config.api_key}".encode()
        self.store = SqlPspStore(config.store_path)
        self.faults = FaultInjector()
        self.webhooks: WebhookDispatcher | None = None
        self.service = PspService(
            self.store,
            self.faults,
            # Keys and payments belong to an account, named without keeping the secret itself.
            account=hashlib.sha256(config.api_key.encode()).hexdigest()[:16],
            webhooks_enabled=config.webhook_url is not None,
            on_events=self._wake_webhooks,
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.store.close)
            if self._config.webhook_url is not None:
                transport = KeepAliveTransport(timeout=WEBHOOK_TIMEOUT_SECONDS)
                client = httpx.AsyncClient(transport=transport, timeout=WEBHOOK_TIMEOUT_SECONDS)
                stack.push_async_callback(client.aclose)
                self.webhooks = WebhookDispatcher(
                    self.store,
                    client,
                    url=self._config.webhook_url,
                    secret=self._config.webhook_secret,
                    first_backoff_seconds=self._config.webhook_first_backoff_seconds,
                    logger=logger,
                )
                task = asyncio.create_task(self.webhooks.run())
                stack.push_async_callback(cancel, task)
            yield

    def routes(self) -> list[Route]:
        return [
            Route("/v1/payments", self.create_payment, methods=["POST"]),
            Route("/v1/payments", self.list_payments, methods=["GET"]),
            Route("/v1/payments/by-idempotency-key/{key:path}", self.payment_by_key),
            Route("/v1/payments/{payment_id}", self.get_payment),
            Route("/v1/payments/{payment_id}/capture", self.capture, methods=["POST"]),
            Route("/v1/payments/{payment_id}/void", self.void, methods=["POST"]),
            Route("/v1/payments/{payment_id}/refunds", self.refund, methods=["POST"]),
            Route("/_sandbox/faults", self.get_faults),
            Route("/_sandbox/faults", self.put_faults, methods=["PUT"]),
            Route("/_sandbox/faults", self.reset_faults, methods=["DELETE"]),
            Route("/_sandbox/payments", self.sandbox_payments),
            Route("/_sandbox/ledger", self.sandbox_ledger),
            Route("/_sandbox/webhooks", self.sandbox_webhooks),
            Route("/_sandbox/webhooks/flush", self.flush_webhooks, methods=["POST"]),
            Route("/_sandbox/health", self.health),
        ]

    # /v1: payments

    async def create_payment(self, request: Request) -> Response:
        call, key, payload = await self._begin_post(request)
        return await self._post(request, call, key, payload, self.service.authorize(payload))

    async def capture(self, request: Request) -> Response:
        call, key, payload = await self._begin_post(request)
        operation = self.service.capture(request.path_params["payment_id"], payload)
        return await self._post(request, call, key, payload, operation)

    async def void(self, request: Request) -> Response:
        call, key, payload = await self._begin_post(request)
        operation = self.service.void(request.path_params["payment_id"])
        return await self._post(request, call, key, payload, operation)

    async def refund(self, request: Request) -> Response:
        call, key, payload = await self._begin_post(request)
        operation = self.service.refund(request.path_params["payment_id"], payload)
        return await self._post(request, call, key, payload, operation)

    async def get_payment(self, request: Request) -> Response:
        call = await self._begin_get(request)
        payment = self.service.get_payment(request.path_params["payment_id"])
        return await _answer(json_response(200, payment.to_json()), call)

    async def list_payments(self, request: Request) -> Response:
        call = await self._begin_get(request)
        reference = text_of(dict(request.query_params), "reference")
        payments = self.service.payments_with_reference(reference)
        return await _answer(listing([payment.to_json() for payment in payments]), call)

    async def payment_by_key(self, request: Request) -> Response:
        call = await self._begin_get(request)
        payment = self.service.payment_by_key(request.path_params["key"])
        return await _answer(json_response(200, payment.to_json()), call)

    async def _begin_post(self, request: Request) -> tuple[CallFaults, str, dict[str, Any]]:
        call = self._begin(request)
        key = idempotency_key_of(request.headers.get("idempotency-key"))
        return call, key, await json_object(request)

    async def _begin_get(self, request: Request) -> CallFaults:
        call = self._begin(request)
        if call.latency_seconds:
            await asyncio.sleep(call.latency_seconds)
        return call

    def _begin(self, request: Request) -> CallFaults:
        """Authenticate, then roll the faults; an injected error answers before anything else."""
        self._authenticate(request)
        call = self.faults.roll_call()
        if call.error:
            raise InjectedFault("internal_error", "injected fault (sandbox error_rate)")
        return call

    async def _post(
        self,
        request: Request,
        call: CallFaults,
        key: str,
        payload: dict[str, Any],
        operation: Operation,
    ) -> Response:
        response, replayed = await self.service.run_idempotent(
            key=key,
            path=request.scope["path"],
            payload=payload,
            latency_seconds=call.latency_seconds,
            operation=operation,
        )
        return await _answer(response, call, REPLAYED if replayed else None)

    def _authenticate(self, request: Request) -> None:
        authenticate(request, self._bearer)

    # /_sandbox: the test control plane

    async def get_faults(self, request: Request) -> Response:
        self._authenticate(request)
        return respond_json(200, self.faults.faults.to_json())

    async def put_faults(self, request: Request) -> Response:
        self._authenticate(request)
        self.faults.set(Faults.parse(await json_object(request)))
        return respond_json(200, self.faults.faults.to_json())

    async def reset_faults(self, request: Request) -> Response:
        self._authenticate(request)
        self.faults.set(Faults())
        return respond_json(200, self.faults.faults.to_json())

    async def sandbox_payments(self, request: Request) -> Response:
        self._authenticate(request)
        return respond(listing([payment.to_json() for payment in self.service.all_payments()]))

    async def sandbox_ledger(self, request: Request) -> Response:
        self._authenticate(request)
        return respond(listing(self.service.ledger()))

    async def sandbox_webhooks(self, request: Request) -> Response:
        self._authenticate(request)
        return respond(listing(self.service.webhook_events()))

    async def flush_webhooks(self, request: Request) -> Response:
        self._authenticate(request)
        flushed = self.webhooks.flush() if self.webhooks is not None else 0
        return respond_json(200, {"flushed": flushed})

    async def health(self, _request: Request) -> Response:
        return respond_json(200, {"status": "ok"})

    def _wake_webhooks(self) -> None:
        if self.webhooks is not None:
            self.webhooks.wake()


def create_app(config: PspConfig) -> Starlette:
    api = PspApi(config)
    return Starlette(
        routes=api.routes(),
        lifespan=api.lifespan,
        exception_handlers={PspError: on_sandbox_error, HTTPException: on_http_error},
        max_body_size=MAX_BODY_BYTES,
    )


def serve(config: PspConfig, *, host: str, port: int, log_level: str) -> None:
    """Run the sandbox on one uvicorn worker until SIGINT/SIGTERM."""
    app = trace_sandbox(create_app(config), service="sandbox-psp")  # when IRONCART_TRACING__*
    serve_app(app, host=host, port=port, log_level=log_level)


async def _answer(
    response: StoredResponse, call: CallFaults, headers: dict[str, str] | None = None
) -> Response:
    if call.timeout_seconds:
        await asyncio.sleep(call.timeout_seconds)  # processed; the answer is what is late
    return respond(response, headers)
