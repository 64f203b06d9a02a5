"""Rate limits on the API: per client IP, per user, per service client, per hot resource.

Every request under `/api/` is counted against the limits that apply to it (one fixed-window
counter each, in Redis when configured, see `platform.ratelimit`; the per-IP counter stays in
each process unless `per_ip_shared`: nginx's `limit_req` is the shared per-address limit):

- a person (a valid bearer token of a user): the per-IP limit and the per-user limit (`sub`);
- a service client (a valid client-credentials token): the per-client limit only (a larger
  one, and service calls come from few addresses, so the per-IP limit would starve them);
- anyone else: the per-IP limit. An invalid token counts as none here; the route answers 401;
- a hot resource (one SKU added to carts or checked out): `hot_resource_limit`, a dependency
  on those routes, counted against that resource for every caller together.

Over a limit: 429 problem+json with `Retry-After`. Every limited response (2xx included)
carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (IETF draft
httpapi-ratelimit-headers) of the tightest limit that applied (fewest requests remaining).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from fastapi import Depends, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ironcart.contracts.identity import Principal
from ironcart.platform.errors import RateLimited
from ironcart.platform.http.auth import VERIFIED_PRINCIPAL
from ironcart.platform.http.problems import problem
from ironcart.platform.ratelimit import Limit, RateLimiter, Usage
from ironcart.platform.security.tokens import AccessTokenVerifier, InvalidAccessToken
from ironcart.platform.settings import AdmissionSettings

USAGES = "ironcart.ratelimit.usages"  # scope key: the Usage of every limit counted so far
LIMITER = "ironcart.ratelimit.limiter"  # scope key: the limiter, for `hot_resource_limit`
HOT_RESOURCE = "hot-resource"
MAX_RESOURCES_COUNTED = 100  # a checkout holds at most 100 lines
_RESOURCE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def headers_for(usages: Iterable[Usage]) -> list[tuple[bytes, bytes]]:
    """The RateLimit-* headers of the tightest usage (fewest remaining, then latest reset)."""
    tightest = min(usages, key=lambda usage: (usage.remaining, -usage.reset_seconds), default=None)
    if tightest is None:
        return []
    return [
        (b"ratelimit-limit", str(tightest.limit).encode()),
        (b"ratelimit-remaining", str(tightest.remaining).encode()),
        (b"ratelimit-reset", str(tightest.reset_seconds).encode()),
    ]


def refusal(usages: list[Usage]) -> RateLimited:
    """The 429 for a request over at least one limit: retry when the last of them resets."""
    wait = max(usage.reset_seconds for usage in usages if not usage.allowed)
    return RateLimited(
        "Too many requests; retry after the time in Retry-After.", retry_after_seconds=wait
    )


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return (token.strip() or None) if scheme.lower() == "bearer" else None
    return None


class RateLimitMiddleware:
    """Pure ASGI: counts `/api/` requests against the IP, user and client limits."""

    def __init__(self, app: ASGIApp, *, settings: AdmissionSettings) -> None:
        self.app = app
        self.per_ip = Limit("api-ip", settings.per_ip)
        self.per_user = Limit("api-user", settings.per_user)
        self.per_client = Limit("api-client", settings.per_client)
        self._limiter: RateLimiter | None = None
        # The per-IP count of anonymous traffic (most of it cached catalogue reads) stays in
        # this process unless `per_ip_shared`: a Redis round trip per request would cost the
        # read path most of its throughput, and the edge (nginx `limit_req`) is where one
        # limit per address is shared by every instance. People, clients and hot resources
        # are always counted in the shared store.
        self._ip_limiter = None if settings.per_ip_shared else RateLimiter.in_process()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        limiter = self.limiter(scope)
        principal = await self._principal(scope)
        if principal is not None:  # the route's auth dependency need not verify it again
            scope[VERIFIED_PRINCIPAL] = principal
        # One after the other, not gathered: a gather makes a task per counter (most requests
        # have one, counted in this process), which cost more than the counting itself.
        usages = [
            await self._counter(limiter, lim).consume(lim, key)
            for lim, key in self._limits_for(scope, principal)
        ]
        if not all(usage.allowed for usage in usages):
            await self._refuse(usages, scope, receive, send)
            return
        scope[USAGES] = usages
        scope[LIMITER] = limiter

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers_for(scope[USAGES])]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def limiter(self, scope: Scope) -> RateLimiter:
        """Built on first use from the app's container: shared in Redis when it has one."""
        if self._limiter is None:
            redis = scope["app"].state.container.redis
            self._limiter = RateLimiter.redis(redis) if redis else RateLimiter.in_process()
        return self._limiter

    def _counter(self, shared: RateLimiter, limit: Limit) -> RateLimiter:
        if limit is self.per_ip and self._ip_limiter is not None:
            return self._ip_limiter
        return shared

    def _limits_for(self, scope: Scope, principal: Principal | None) -> list[tuple[Limit, str]]:
        if principal is not None and principal.client_id is not None:
            return [(self.per_client, principal.client_id)]
        client = scope.get("client")
        checks = [(self.per_ip, client[0] if client else "unknown")]
        if principal is not None:
            checks.append((self.per_user, principal.subject))
        return checks

    async def _principal(self, scope: Scope) -> Principal | None:
        token = _bearer(scope)
        if token is None:
            return None
        verifier: AccessTokenVerifier = scope["app"].state.token_verifier
        try:
            return await verifier.verify(token)
        except InvalidAccessToken:
            return None

    async def _refuse(self, usages: list[Usage], scope: Scope, rcv: Receive, send: Send) -> None:
        error = refusal(usages)
        headers = {
            name.decode(): value.decode()
            for name, value in headers_for(u for u in usages if not u.allowed)
        }
        headers["Retry-After"] = str(error.retry_after_seconds)
        response = problem(429, error.code, title=error.title, detail=error.detail, headers=headers)
        await response(scope, rcv, send)


def hot_resource_limit(
    settings_of: Callable[[Request], AdmissionSettings],
    resources_of: Callable[[Any], Iterable[str]],
) -> Any:
    """A dependency counting each resource `resources_of(json body)` names (e.g. its SKUs)."""

    async def dependency(request: Request) -> None:
        limiter: RateLimiter | None = request.scope.get(LIMITER)
        if limiter is None:  # rate limits are off (or the path is outside /api)
            return
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return  # the route's validation answers 422
        # Only well-formed names, and no more than a valid request holds: counting happens
        # before validation, and each name costs a round trip to the limiter's store.
        names = {name for name in resources_of(body) if _RESOURCE_NAME.match(name)}
        limit = Limit(HOT_RESOURCE, settings_of(request).per_hot_resource)
        counted = sorted(names)[:MAX_RESOURCES_COUNTED]
        usages = list(await asyncio.gather(*(limiter.consume(limit, name) for name in counted)))
        request.scope[USAGES] = [*request.scope.get(USAGES, []), *usages]
        if not all(usage.allowed for usage in usages):
            raise refusal(usages)

    return Depends(dependency)


def skus_of_line(body: Any) -> list[str]:
    """The SKU of a cart line body: `{"sku": ...}`."""
    sku = body.get("sku") if isinstance(body, dict) else None
    return [sku] if isinstance(sku, str) else []


def skus_of_lines(body: Any) -> list[str]:
    """The SKUs of a checkout with explicit `lines` (a checkout of a cart names none)."""
    lines = body.get("lines") if isinstance(body, dict) else None
    if not isinstance(lines, list):
        return []
    return [sku for line in lines for sku in skus_of_line(line)]


def admission_settings(request: Request) -> AdmissionSettings:
    settings: AdmissionSettings = request.app.state.container.settings.admission
    return settings
