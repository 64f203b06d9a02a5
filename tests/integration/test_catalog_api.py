"""Catalog over HTTP on SQLite, PostgreSQL and MariaDB: staff edits, reads, listings, search."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.support.app import running_app, settings_for
from tests.support.catalog import product_payload, staff_headers

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def _create(
    client: httpx.AsyncClient, staff: dict[str, str], **kwargs: Any
) -> dict[str, Any]:
    name = kwargs.pop("name")
    response = await client.post(
        "/api/v1/products", json=product_payload(name, **kwargs), headers=staff
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_staff_creates_and_shoppers_read(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        created = await client.post(
            "/api/v1/products",
            json=product_payload("Trail Runner", price="89.90", sku="TR-1"),
            headers=staff,
        )
        assert created.status_code == 201
        product = created.json()
        assert created.headers["etag"] == '"v1"'
        assert product["slug"] == "trail-runner"
        assert product["price"] == {
            "min": {"amount": "89.90", "currency": "USD"},
            "max": {"amount": "89.90", "currency": "USD"},
        }

        by_id = await client.get(f"/api/v1/products/{product['id']}")
        by_slug = await client.get("/api/v1/products/trail-runner")
        assert by_id.status_code == by_slug.status_code == 200
        assert by_id.json() == by_slug.json()
        assert by_id.json()["variants"][0] == {
            "sku": "TR-1",
            "name": "Default",
            "price": {"amount": "89.90", "currency": "USD"},
            "weight_grams": 500,
            "barcode": None,
            "attributes": {},
            "version": 1,
            "available": 0,
            "in_stock": False,
        }
        assert by_id.headers["cache-control"].startswith("public")
        etag = by_id.headers["etag"]
        assert etag.startswith('"v1-')
        not_modified = await client.get(
            f"/api/v1/products/{product['id']}", headers={"If-None-Match": etag}
        )
        assert not_modified.status_code == 304
        assert not_modified.content == b""


async def test_unpublished_products_are_hidden_except_from_staff(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        product = await _create(client, staff, name="Secret Prototype", published=False)
        assert (await client.get(f"/api/v1/products/{product['id']}")).status_code == 404
        seen = await client.get(f"/api/v1/products/{product['id']}", headers=staff)
        assert seen.status_code == 200
        assert seen.json()["published"] is False
        listing = await client.get("/api/v1/products")
        assert product["id"] not in {item["id"] for item in listing.json()["items"]}


async def test_optimistic_locking_on_staff_edits(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        product = await _create(client, staff, name="Locked Lamp")
        url = f"/api/v1/products/{product['id']}"
        missing = await client.patch(url, json={"name": "No Match"}, headers=staff)
        assert missing.status_code == 428
        assert missing.headers["content-type"] == "application/problem+json"

        edits = await asyncio.gather(
            *(
                client.patch(url, json={"name": f"Lamp {i}"}, headers={**staff, "If-Match": '"v1"'})
                for i in range(10)
            )
        )
        statuses = sorted(edit.status_code for edit in edits)
        assert statuses == [200] + [412] * 9
        winner = next(edit for edit in edits if edit.status_code == 200)
        assert winner.headers["etag"] == '"v2"'
        stale = await client.patch(
            url, json={"name": "Too Late"}, headers={**staff, "If-Match": '"v1"'}
        )
        assert stale.status_code == 412
        current = await client.get(url)
        assert current.json()["name"] == winner.json()["name"]
        assert current.json()["version"] == 2


async def test_price_change_is_visible_immediately(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        product = await _create(client, staff, name="Desk Clock", sku="CLOCK-1", price="10.00")
        url = f"/api/v1/products/{product['id']}"
        assert (await client.get(url)).json()["price"]["min"]["amount"] == "10.00"
        changed = await client.patch(
            "/api/v1/variants/CLOCK-1",
            json={"price": {"amount": "12.50", "currency": "USD"}},
            headers={**staff, "If-Match": '"v1"'},
        )
        assert changed.status_code == 200, changed.text
        after = await client.get(url)
        assert after.json()["price"]["min"]["amount"] == "12.50"
        assert after.json()["variants"][0]["price"]["amount"] == "12.50"


async def test_listing_filters_sorting_and_keyset_pagination(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        shoes = (
            await client.post("/api/v1/categories", json={"name": "Shoes"}, headers=staff)
        ).json()
        trail = (
            await client.post(
                "/api/v1/categories", json={"name": "Trail Shoes", "parent": "shoes"}, headers=staff
            )
        ).json()
        prices = ["5.00", "15.00", "25.00", "35.00", "45.00", "55.00", "65.00"]
        ids = []
        for i, price in enumerate(prices):
            category = trail["slug"] if i % 2 else shoes["slug"]
            body = await _create(
                client,
                staff,
                name=f"Shoe {i}",
                price=price,
                category=category,
                attributes={"colour": "red" if i < 3 else "blue"},
            )
            ids.append(body["id"])
        await _create(client, staff, name="Unrelated Mug", price="9.00")

        tree = (await client.get("/api/v1/categories")).json()["items"]
        assert [(c["slug"], [k["slug"] for k in c["children"]]) for c in tree] == [
            ("shoes", ["trail-shoes"])
        ]

        in_shoes = await _all_pages(client, "/api/v1/products?category=shoes&sort=price&limit=2")
        assert [item["id"] for item in in_shoes] == ids  # cheapest first, descendants included
        in_trail = await _all_pages(client, "/api/v1/products?category=trail-shoes&limit=2")
        assert sorted(item["id"] for item in in_trail) == sorted(ids[1::2])
        priced = await _all_pages(
            client, "/api/v1/products?min_price=10&max_price=40&sort=-price&limit=2"
        )
        assert [i["price"]["min"]["amount"] for i in priced] == ["35.00", "25.00", "15.00"]
        red = await _all_pages(client, "/api/v1/products?attr=colour:red")
        assert sorted(item["id"] for item in red) == sorted(ids[:3])
        newest = await _all_pages(client, "/api/v1/products?limit=3")
        assert len(newest) == 8
        assert len({item["id"] for item in newest}) == 8


async def _all_pages(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        response = await client.get(next_url)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        next_url = f"{url}&cursor={cursor}" if cursor else None
        assert len(items) < 1000
    return items


async def test_in_stock_filter_follows_inventory_events(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        stocked = await _create(client, staff, name="Stocked Item", sku="STOCK-1")
        await _create(client, staff, name="Empty Item", sku="EMPTY-1")
        await app.state.container.catalog.record_availability(sku="STOCK-1", available=7)
        listing = (await client.get("/api/v1/products?in_stock=true")).json()["items"]
        assert [item["id"] for item in listing] == [stocked["id"]]
        detail = (await client.get(f"/api/v1/products/{stocked['id']}")).json()
        assert detail["available"] == 7
        assert detail["variants"][0]["in_stock"] is True


async def test_search_ranks_relevant_products_first(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        await _create(client, staff, name="Kettle", description="A steel kettle for tea.")
        best = await _create(
            client,
            staff,
            name="Espresso Machine",
            description="Espresso machine: espresso, espresso and more espresso.",
        )
        other = await _create(
            client,
            staff,
            name="Coffee Grinder",
            description="Grinds beans for espresso or filter coffee.",
        )
        for _ in range(3):
            await _create(client, staff, name="Tea Cup", description="Porcelain cup for tea.")
        found = (await client.get("/api/v1/products?q=espresso")).json()
        assert [item["id"] for item in found["items"]] == [best["id"], other["id"]]
        assert found["sort"] == "relevance"
        nothing = (await client.get("/api/v1/products?q=%22%29%28*")).json()
        assert nothing["items"] == []


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/api/v1/products?limit=0", 422),
        ("/api/v1/products?limit=1000", 422),
        ("/api/v1/products?sort=cheapest", 422),
        ("/api/v1/products?cursor=not-a-cursor", 422),
        ("/api/v1/products?min_price=abc", 422),
        ("/api/v1/products?attr=colour", 422),
        ("/api/v1/products?category=nope", 404),
        ("/api/v1/products/does-not-exist", 404),
    ],
)
async def test_bad_queries_are_clean_problems(sqlite_url: str, url: str, status: int) -> None:
    async with running_app(settings_for(sqlite_url)) as (_app, client):
        response = await client.get(url)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"


async def test_customers_cannot_write_the_catalog(sqlite_url: str) -> None:
    from tests.support.app import register_and_login

    async with running_app(settings_for(sqlite_url)) as (_app, client):
        tokens = await register_and_login(client, "shopper@example.com")
        response = await client.post(
            "/api/v1/products",
            json=product_payload("Hack"),
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )
        assert response.status_code == 403
        anonymous = await client.post("/api/v1/products", json=product_payload("Hack"))
        assert anonymous.status_code == 401
        assert (await client.get("/api/v1/products")).json()["items"] == []
