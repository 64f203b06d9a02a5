"""The port other contexts use to reach identity: in-process, or over HTTP in microservices mode."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import httpx

from ironcart.identity.service import IdentityService
from ironcart.platform.http.tls import client_tls_context


class IdentityClient(Protocol):
    async def published_keys(self) -> Sequence[Mapping[str, Any]]:
        """The JWKS keys that verify access tokens issued by identity."""
        ...


class InProcessIdentityClient:
    def __init__(self, service: IdentityService) -> None:
        self._service = service

    async def published_keys(self) -> Sequence[Mapping[str, Any]]:
        """The JWKS keys, read from identity's own store."""
        return await self._service.published_keys()


class HttpIdentityClient:
    def __init__(self, base_url: str, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            transport=transport,
            timeout=httpx.Timeout(2.0, connect=1.0),
            verify=client_tls_context(),
        )

    async def published_keys(self) -> Sequence[Mapping[str, Any]]:
        """The JWKS keys, fetched from identity's `/.well-known/jwks.json`."""
        response = await self._http.get("/.well-known/jwks.json")
        response.raise_for_status()
        keys = response.json().get("keys", [])
        return [key for key in keys if isinstance(key, dict)]

    async def aclose(self) -> None:
        await self._http.aclose()
