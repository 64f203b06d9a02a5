"""Catalog HTTP API. Public reads are served from the response cache as encoded bytes;
staff writes are validated and guarded by `If-Match` (optimistic locking)."""

from __future__ import annotations

import re
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ironcart.catalog.domain import (
    MAX_PAGE_SIZE,
    InvalidCatalogData,
    ListingQuery,
    ProductNotFound,
    Sort,
    decode_cursor,
    encode_cursor,
)
from ironcart.catalog.schemas import (
    CategoryCreate,
    CategoryUpdate,
    CollectionCreate,
    ProductCreate,
    ProductPage,
    ProductRead,
    ProductUpdate,
    VariantCreate,
    VariantRead,
    VariantUpdate,
    encode_category,
    encode_category_tree,
    encode_listing,
    encode_product,
    encode_variant,
)
from ironcart.catalog.service import CatalogService, ProductDraft, VariantDraft
from ironcart.platform.cache import Built, CachedResponse, ResponseCache
from ironcart.platform.http.auth import StaffOnly
from ironcart.platform.http.preconditions import required_version, version_etag
from ironcart.platform.money import exponent

PUBLIC_CACHE_CONTROL = "public, max-age=1, stale-while-revalidate=5, stale-if-error=300"
JSON = "application/json"
router = APIRouter(tags=["catalog"])


async def get_catalog(request: Request) -> CatalogService:
    service: CatalogService = request.app.state.container.catalog
    return service


async def get_cache(request: Request) -> ResponseCache:
    cache: ResponseCache = request.app.state.container.cache
    return cache


Catalog = Annotated[CatalogService, Depends(get_catalog)]
Cache = Annotated[ResponseCache, Depends(get_cache)]


def _cached(entry: CachedResponse, request_etag: str | None) -> Response:
    headers = {"ETag": entry.etag, "Cache-Control": PUBLIC_CACHE_CONTROL}
    if entry.stale:
        headers["Warning"] = '110 - "Response is stale"'
    if request_etag is not None and entry.etag in _etags(request_etag):
        return Response(status_code=304, headers=headers)
    return Response(entry.body, media_type=JSON, headers=headers)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def _staff(body: bytes, version: int, status: int = 200) -> Response:
    return Response(
        body,
        status_code=status,
        media_type=JSON,
        headers={"ETag": version_etag(version), "Cache-Control": "no-store"},
    )


def _minor(value: str | None, currency: str, name: str) -> int | None:
    if value is None:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise InvalidCatalogData(f"{name} must be a decimal amount.") from None
    if not amount.is_finite() or amount < 0 or amount > Decimal("1e10"):
        raise InvalidCatalogData(f"{name} is out of range.")
    return int(amount.scaleb(exponent(currency)))


def _attributes(values: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        name, separator, wanted = value.partition(":")
        if not separator or not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name) or not wanted:
            raise InvalidCatalogData("attr must look like name:value, e.g. colour:red.")
        pairs.append((name, wanted))
    return tuple(sorted(pairs))


@router.get("/api/v1/products", responses={200: {"model": ProductPage}})
async def list_products(
    request: Request,
    catalog: Catalog,
    cache: Cache,
    q: Annotated[str | None, Query(max_length=200)] = None,
    category: Annotated[str | None, Query(max_length=120)] = None,
    collection: Annotated[str | None, Query(max_length=120)] = None,
    min_price: Annotated[str | None, Query(max_length=20)] = None,
    max_price: Annotated[str | None, Query(max_length=20)] = None,
    attr: Annotated[list[str], Query(max_length=140)] = [],  # noqa: B006 - FastAPI copies it
    in_stock: bool = False,
    sort: Sort | None = None,
    cursor: Annotated[str | None, Query(max_length=600)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 24,
) -> Response:
    """Published products: search (`q`), filters, sorting, keyset pagination (`cursor`)."""
    if len(attr) > 10:
        raise InvalidCatalogData("At most 10 attr filters.")
    text = " ".join(q.split()) if q else None
    chosen = sort or (Sort.RELEVANCE if text else Sort.NEWEST)
    currency = request.app.state.container.settings.catalog.currency
    query = ListingQuery(
        text=text,
        category_path=category,
        min_price_minor=_minor(min_price, currency, "min_price"),
        max_price_minor=_minor(max_price, currency, "max_price"),
        attributes=_attributes(attr),
        in_stock_only=in_stock,
        sort=chosen,
        limit=limit,
        after=decode_cursor(cursor, chosen if text or chosen is not Sort.RELEVANCE else Sort.NEWEST)
        if cursor
        else None,
    )
    key = "listing:" + repr(
        (
            text,
            category,
            collection,
            query.min_price_minor,
            query.max_price_minor,
            query.attributes,
            in_stock,
            chosen.value,
            cursor,
            limit,
        )
    )

    async def build() -> Built:
        resolved = query
        if collection is not None:
            resolved = replace(query, collection_id=await catalog.collection_id(slug=collection))
        page = await catalog.list_products(query=resolved)
        next_cursor = encode_cursor(page.sort, *page.next_key) if page.next_key else None
        return Built(encode_listing(page, next_cursor))

    entry = await cache.get_or_build(key, tags=("listing",), build=build, cache_name="listing")
    return _cached(entry, request.headers.get("if-none-match"))


async def product_page(ref: str, catalog: CatalogService, cache: ResponseCache) -> CachedResponse:
    async def build() -> Built:
        product, availability = await catalog.product_page(id_or_slug=ref)
        return Built(encode_product(product, availability), etag_prefix=f"v{product.version}")

    return await cache.get_or_build(
        f"product:{ref}", tags=(f"product:{ref}", "products"), build=build, cache_name="product"
    )


@router.get("/api/v1/products/{ref}", responses={200: {"model": ProductRead}})
async def get_product(
    ref: Annotated[str, Path(max_length=120)], request: Request, catalog: Catalog, cache: Cache
) -> Response:
    """A published product by id or slug, with its variants and live availability."""
    try:
        entry = await product_page(ref, catalog, cache)
    except ProductNotFound:
        return await _unpublished_for_staff(ref, request, catalog)
    return _cached(entry, request.headers.get("if-none-match"))


async def _unpublished_for_staff(ref: str, request: Request, catalog: CatalogService) -> Response:
    """Staff may read unpublished products (never cached); everyone else gets 404."""
    from ironcart.platform.http.auth import current_principal

    if "authorization" not in request.headers:
        raise ProductNotFound
    principal = await current_principal(request)
    if not principal.has_scope("staff"):
        raise ProductNotFound
    product = await catalog.get_product(id_or_slug=ref, include_unpublished=True)
    availability = await catalog.availability(product_id=product.id)
    return _staff(encode_product(product, availability), product.version)


@router.post("/api/v1/products", status_code=201, responses={201: {"model": ProductRead}})
async def create_product(body: ProductCreate, _staff_user: StaffOnly, catalog: Catalog) -> Response:
    draft = ProductDraft(
        name=body.name,
        description=body.description,
        slug=body.slug,
        published=body.published,
        category=body.category,
        images=body.images,
        attributes=body.attributes,
        variants=[_variant_draft(v) for v in body.variants],
    )
    product = await catalog.create_product(draft=draft)
    return _staff(encode_product(product, None), product.version, status=201)


def _variant_draft(body: VariantCreate) -> VariantDraft:
    return VariantDraft(
        sku=body.sku,
        name=body.name,
        price=body.price.to_money(),
        weight_grams=body.weight_grams,
        barcode=body.barcode,
        attributes=body.attributes,
    )


@router.patch("/api/v1/products/{product_id}", responses={200: {"model": ProductRead}})
async def update_product(
    product_id: str, body: ProductUpdate, request: Request, _staff_user: StaffOnly, catalog: Catalog
) -> Response:
    changes: dict[str, Any] = body.model_dump(exclude_unset=True)
    product = await catalog.update_product(
        product_id=product_id, expected_version=required_version(request), changes=changes
    )
    return _staff(encode_product(product, None), product.version)


@router.delete("/api/v1/products/{product_id}", status_code=204)
async def delete_product(
    product_id: str, request: Request, _staff_user: StaffOnly, catalog: Catalog
) -> Response:
    await catalog.delete_product(product_id=product_id, expected_version=required_version(request))
    return Response(status_code=204)


@router.post(
    "/api/v1/products/{product_id}/variants",
    status_code=201,
    responses={201: {"model": ProductRead}},
)
async def add_variant(
    product_id: str, body: VariantCreate, request: Request, _staff_user: StaffOnly, catalog: Catalog
) -> Response:
    product = await catalog.add_variant(
        product_id=product_id,
        expected_version=required_version(request),
        draft=_variant_draft(body),
    )
    return _staff(encode_product(product, None), product.version, status=201)


@router.patch("/api/v1/variants/{sku}", responses={200: {"model": VariantRead}})
async def update_variant(
    sku: str, body: VariantUpdate, request: Request, _staff_user: StaffOnly, catalog: Catalog
) -> Response:
    changes: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"price"})
    if body.price is not None:
        changes["price"] = body.price.to_money()
    variant = await catalog.update_variant(
        sku=sku, expected_version=required_version(request), changes=changes
    )
    return _staff(encode_variant(variant), variant.version)


@router.delete("/api/v1/variants/{sku}", status_code=204)
async def delete_variant(
    sku: str, request: Request, _staff_user: StaffOnly, catalog: Catalog
) -> Response:
    await catalog.delete_variant(sku=sku, expected_version=required_version(request))
    return Response(status_code=204)


@router.get("/api/v1/categories")
async def list_categories(request: Request, catalog: Catalog, cache: Cache) -> Response:
    """The category tree."""

    async def build() -> Built:
        return Built(encode_category_tree(await catalog.categories()))

    entry = await cache.get_or_build(
        "categories", tags=("categories",), build=build, cache_name="categories"
    )
    return _cached(entry, request.headers.get("if-none-match"))


@router.post("/api/v1/categories", status_code=201)
async def create_category(
    body: CategoryCreate, _staff_user: StaffOnly, catalog: Catalog
) -> Response:
    category = await catalog.create_category(
        name=body.name, slug=body.slug, parent=body.parent, position=body.position
    )
    return _staff(encode_category(category), category.version, status=201)


@router.patch("/api/v1/categories/{category_id}")
async def update_category(
    category_id: str,
    body: CategoryUpdate,
    request: Request,
    _staff_user: StaffOnly,
    catalog: Catalog,
) -> Response:
    category = await catalog.update_category(
        category_id=category_id,
        expected_version=required_version(request),
        changes=body.model_dump(exclude_unset=True),
    )
    return _staff(encode_category(category), category.version)


@router.delete("/api/v1/categories/{category_id}", status_code=204)
async def delete_category(
    category_id: str, request: Request, _staff_user: StaffOnly, catalog: Catalog
) -> Response:
    await catalog.delete_category(
        category_id=category_id, expected_version=required_version(request)
    )
    return Response(status_code=204)


@router.post("/api/v1/collections", status_code=201)
async def create_collection(
    body: CollectionCreate, _staff_user: StaffOnly, catalog: Catalog
) -> Response:
    collection_id = await catalog.create_collection(
        name=body.name, slug=body.slug, product_ids=body.product_ids
    )
    return Response(b'{"id":"' + collection_id.encode() + b'"}', status_code=201, media_type=JSON)


_PRODUCT_PATH = re.compile(r"^/api/v1/products/([A-Za-z0-9._-]{1,120})$")


class ProductPageFastPath:
    """Pure ASGI: answers `GET /api/v1/products/{ref}` from the in-process cache, no framework.

    Only an entry that is fresh and current in L1 is served here; anything else (a miss,
    a stale entry, a conditional request we cannot answer) falls through to the router.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = _PRODUCT_PATH.match(scope["path"])
            if match is not None:
                cache: ResponseCache = scope["app"].state.container.cache
                entry = cache.peek(f"product:{match.group(1)}")
                if entry is not None:
                    scope["ironcart.route"] = "/api/v1/products/{ref}"
                    await self._send(entry, scope, send)
                    return
        await self.app(scope, receive, send)

    async def _send(self, entry: CachedResponse, scope: Scope, send: Send) -> None:
        status, body = 200, entry.body
        for name, value in scope["headers"]:
            if name == b"if-none-match" and entry.etag in _etags(value.decode("latin-1")):
                status, body = 304, b""
        headers = [
            (b"etag", entry.etag.encode()),
            (b"cache-control", PUBLIC_CACHE_CONTROL.encode()),
        ]
        if status == 200:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
