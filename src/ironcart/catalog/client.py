"""The port other contexts use to read the catalog: in-process, or over HTTP between services."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ironcart.catalog.service import CatalogService
from ironcart.contracts.catalog import VariantSnapshot


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
