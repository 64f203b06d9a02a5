"""The port other contexts use to read the catalog: in-process, or over HTTP between services."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pydantic import TypeAdapter

from ironcart.catalog.service import CatalogService
from ironcart.contracts.catalog import VariantSnapshot
from ironcart.platform.http.service import ServiceClient

_VARIANTS = TypeAdapter(dict[str, VariantSnapshot])


class CatalogClient(Protocol):
    async def variants(self, skus: Sequence[str]) -> dict[str, VariantSnapshot]:
        """Current name, price and publication of each known SKU; unknown SKUs are absent."""
        ...


class InProcessCatalogClient:
    def __init__(self, service: CatalogService) -> None:
        self._service = service

    async def variants(self, skus: Sequence[str]) -> dict[str, VariantSnapshot]:
        """The variants, read from the catalog's own store."""
        return await self._service.variants(skus=skus)


class HttpCatalogClient:
    def __init__(self, service: ServiceClient) -> None:
        self._service = service

    async def variants(self, skus: Sequence[str]) -> dict[str, VariantSnapshot]:
        """The variants, read from the catalog service (a POST lookup, retried as a read)."""
        body = await self._service.request(
            "POST",
            "/internal/v1/catalog/variants/lookup",
            json={"skus": list(skus)},
            retryable=True,
        )
        return _VARIANTS.validate_python(body)
