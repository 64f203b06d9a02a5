"""Catalog's internal API: what `HttpCatalogClient` calls, for services holding the
`service:catalog` scope only (401 without a token, 403 without the scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from pydantic import Field

from ironcart.catalog.client import InProcessCatalogClient
from ironcart.contracts.catalog import VariantSnapshot
from ironcart.platform.http.auth import internal_router
from ironcart.platform.http.schemas import StrictModel

router = internal_router("catalog")


async def _catalog(request: Request) -> InProcessCatalogClient:
    return InProcessCatalogClient(request.app.state.container.catalog)


Catalog = Annotated[InProcessCatalogClient, Depends(_catalog)]


class SkuList(StrictModel):
    skus: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=500)]


# A lookup by a list of SKUs: a read, sent as POST because the list may be long.
@router.post("/variants/lookup")
async def variants(body: SkuList, catalog: Catalog) -> dict[str, VariantSnapshot]:
    return await catalog.variants(body.skus)
