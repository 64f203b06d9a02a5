"""Carts over HTTP on SQLite, PostgreSQL and MariaDB: anonymous and customer carts, privacy,
repricing, limits, concurrent adds, merge on login and the purge of abandoned carts."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from ironcart.cart.repository import carts, lines
from tests.support.app import register_and_login, running_app, settings_for
from tests.support.catalog import product_payload, staff_headers

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

PROBLEM = "application/problem+json"


async def _product(
    client: httpx.AsyncClient,
    staff: dict[str, str],
    *,
    price: str = "10.00",
    currency: str = "USD",
    published: bool = True,
) -> str:
    sku = f"SKU-{uuid.uuid4().hex[:10]}"
    payload = product_payload(
        f"Product {sku}", price=price, sku=sku, currency=currency, published=published
    )
    response = await client.post("/api/v1/products", json=payload, headers=staff)
    assert response.status_code == 201, response.text
    return sku


async def _stock(app: FastAPI, sku: str, units: int) -> None:
    inventory = app.state.container.inventory
    code = f"wh-{uuid.uuid4().hex[:8]}"
    await inventory.create_warehouse(code=code, name="Main", priority=1)
    await inventory.receive(sku=sku, warehouse=code, quantity=units)


async def _stocked(
    app: FastAPI, client: httpx.AsyncClient, staff: dict[str, str], units: int, **kwargs: Any
) -> str:
    sku = await _product(client, staff, **kwargs)
    await _stock(app, sku, units)
    return sku


async def _anonymous_cart(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    created = await client.post("/api/v1/carts")
    assert created.status_code == 201, created.text
    return created.json()["id"], {"X-Cart-Token": created.json()["token"]}


async def _customer(client: httpx.AsyncClient) -> dict[str, str]:
    tokens = await register_and_login(client, f"shopper-{uuid.uuid4().hex[:10]}@example.com")
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def _customer_cart(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await client.post("/api/v1/carts", headers=headers)
    assert response.status_code in {200, 201}, response.text
    cart_id: str = response.json()["id"]
    return cart_id


async def _add(
    client: httpx.AsyncClient, cart_id: str, headers: dict[str, str], sku: str, quantity: int
) -> httpx.Response:
    return await client.post(
        f"/api/v1/carts/{cart_id}/items", json={"sku": sku, "quantity": quantity}, headers=headers
    )


def _quantities(body: dict[str, Any]) -> dict[str, int]:
    return {line["sku"]: line["quantity"] for line in body["lines"]}


def _assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:ironcart:problem:{code}"
    return body


def _usd(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "USD"}


async def test_anonymous_cart_flow(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        mug = await _stocked(app, client, staff, 10, price="10.00")
        tea = await _stocked(app, client, staff, 5, price="2.50")

        created = await client.post("/api/v1/carts")
        assert created.status_code == 201
        body = created.json()
        token = body["token"]
        assert created.headers["x-cart-token"] == token
        assert len(token) >= 43
        assert created.headers["etag"] == '"v1"'
        assert created.headers["cache-control"] == "no-store"
        assert created.headers["location"] == f"/api/v1/carts/{body['id']}"
        assert body["kind"] == "anonymous"
        assert (body["lines"], body["subtotal"], body["currency"]) == ([], None, None)
        cart_url, mine = f"/api/v1/carts/{body['id']}", {"X-Cart-Token": token}

        added = await _add(client, body["id"], mine, mug, 2)
        assert added.status_code == 200, added.text
        assert added.headers["etag"] == '"v2"'
        assert added.json()["lines"] == [
            {
                "sku": mug,
                "name": f"Product {mug}",
                "variant_name": "Default",
                "quantity": 2,
                "price_seen": _usd("10.00"),
                "current_price": _usd("10.00"),
                "price_changed": False,
                "available": 10,
                "availability_changed": False,
                "insufficient_stock": False,
                "purchasable": True,
                "line_total": _usd("20.00"),
            }
        ]
        assert added.json()["subtotal"] == _usd("20.00")

        assert (await _add(client, body["id"], mine, mug, 1)).json()["lines"][0]["quantity"] == 3
        both = await _add(client, body["id"], mine, tea, 4)
        assert _quantities(both.json()) == {mug: 3, tea: 4}
        assert (both.json()["subtotal"], both.json()["item_count"]) == (_usd("40.00"), 7)

        fewer = await client.patch(f"{cart_url}/items/{tea}", json={"quantity": 1}, headers=mine)
        assert fewer.status_code == 200
        assert fewer.json()["subtotal"] == _usd("32.50")
        zero = await client.patch(f"{cart_url}/items/{tea}", json={"quantity": 0}, headers=mine)
        assert _quantities(zero.json()) == {mug: 3}
        await _add(client, body["id"], mine, tea, 1)
        removed = await client.delete(f"{cart_url}/items/{tea}", headers=mine)
        assert removed.status_code == 200
        assert _quantities(removed.json()) == {mug: 3}
        again = await client.delete(f"{cart_url}/items/{tea}", headers=mine)
        _assert_problem(again, 404, "cart.line_not_found")

        read = await client.get(cart_url, headers=mine)
        assert read.status_code == 200
        assert read.json() == removed.json()
        assert read.headers["etag"] == f'"v{read.json()["version"]}"'

        # The token is stored only as its SHA-256 digest.
        async with app.state.container.engine.connect() as connection:
            row = (await connection.execute(select(carts).where(carts.c.id == body["id"]))).one()
        assert row.token_digest == hashlib.sha256(token.encode()).hexdigest()
        assert token not in {str(value) for value in row}


async def test_if_match_guards_writes(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        mug = await _stocked(app, client, staff, 10)
        cart_id, mine = await _anonymous_cart(client)
        first = await _add(client, cart_id, mine, mug, 1)

        stale = await client.patch(
            f"/api/v1/carts/{cart_id}/items/{mug}",
            json={"quantity": 5},
            headers={**mine, "If-Match": '"v1"'},
        )
        _assert_problem(stale, 412, "cart.stale_version")
        unchanged = await client.get(f"/api/v1/carts/{cart_id}", headers=mine)
        assert unchanged.json() == first.json()

        current = await client.patch(
            f"/api/v1/carts/{cart_id}/items/{mug}",
            json={"quantity": 5},
            headers={**mine, "If-Match": first.headers["etag"]},
        )
        assert current.status_code == 200
        assert current.headers["etag"] == '"v3"'
        malformed = await _add(client, cart_id, {**mine, "If-Match": "yesterday"}, mug, 1)
        _assert_problem(malformed, 412, "ironcart.precondition_failed")


async def test_customer_cart_flow(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        mug = await _stocked(app, client, staff, 10)
        customer = await _customer(client)

        created = await client.post("/api/v1/carts", headers=customer)
        assert created.status_code == 201
        assert created.json()["kind"] == "customer"
        assert "token" not in created.json()
        assert "x-cart-token" not in created.headers
        cart_id = created.json()["id"]
        again = await client.post("/api/v1/carts", headers=customer)
        assert (again.status_code, again.json()["id"]) == (200, cart_id)

        added = await _add(client, cart_id, customer, mug, 3)
        assert added.status_code == 200
        read = await client.get(f"/api/v1/carts/{cart_id}", headers=customer)
        assert _quantities(read.json()) == {mug: 3}

        _assert_problem(await client.get(f"/api/v1/carts/{cart_id}"), 404, "cart.not_found")
        forged = await client.get(
            f"/api/v1/carts/{cart_id}", headers={"Authorization": "Bearer not-a-token"}
        )
        assert forged.status_code == 401

        # One open cart per customer, whatever the race.
        racer = await _customer(client)
        opened = await asyncio.gather(
            *(client.post("/api/v1/carts", headers=racer) for _ in range(10))
        )
        assert len({response.json()["id"] for response in opened}) == 1
        assert sorted(response.status_code for response in opened) == [200] * 9 + [201]


async def test_a_cart_is_reachable_only_by_its_owner_or_token(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        mug = await _stocked(app, client, staff, 10)
        owner, stranger = await _customer(client), await _customer(client)
        customer_cart = await _customer_cart(client, owner)
        await _add(client, customer_cart, owner, mug, 1)
        anonymous_cart, token = await _anonymous_cart(client)
        await _add(client, anonymous_cart, token, mug, 2)
        _other_cart, other_token = await _anonymous_cart(client)
        wrong_token = {"X-Cart-Token": "A" * 43}

        attempts = [
            (customer_cart, stranger),
            (customer_cart, {}),
            (customer_cart, other_token),
            (anonymous_cart, wrong_token),
            (anonymous_cart, other_token),
            (anonymous_cart, stranger),
            (anonymous_cart, {}),
            (str(uuid.uuid4()), token),
        ]
        for cart_id, headers in attempts:
            url = f"/api/v1/carts/{cart_id}"
            responses = [
                await client.get(url, headers=headers),
                await _add(client, cart_id, headers, mug, 1),
                await client.patch(f"{url}/items/{mug}", json={"quantity": 5}, headers=headers),
                await client.delete(f"{url}/items/{mug}", headers=headers),
            ]
            for response in responses:
                problem = _assert_problem(response, 404, "cart.not_found")
                assert problem["detail"] == "Cart not found"  # says nothing of existence
        merge = await client.post(
            f"/api/v1/carts/{customer_cart}/merge", headers={**stranger, **token}
        )
        _assert_problem(merge, 404, "cart.not_found")

        # Nothing happened to either cart.
        assert _quantities(
            (await client.get(f"/api/v1/carts/{customer_cart}", headers=owner)).json()
        ) == {mug: 1}
        assert _quantities(
            (await client.get(f"/api/v1/carts/{anonymous_cart}", headers=token)).json()
        ) == {mug: 2}


async def test_a_price_change_after_adding_is_shown(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        mug = await _stocked(app, client, staff, 10, price="10.00")
        cart_id, mine = await _anonymous_cart(client)
        await _add(client, cart_id, mine, mug, 2)

        changed = await client.patch(
            f"/api/v1/variants/{mug}",
            json={"price": _usd("12.50")},
            headers={**staff, "If-Match": '"v1"'},
        )
        assert changed.status_code == 200, changed.text

        body = (await client.get(f"/api/v1/carts/{cart_id}", headers=mine)).json()
        line = body["lines"][0]
        assert (line["price_seen"], line["current_price"], line["price_changed"]) == (
            _usd("10.00"),
            _usd("12.50"),
            True,
        )
        assert line["line_total"] == _usd("25.00")
        assert body["subtotal"] == _usd("25.00")


async def test_an_availability_drop_is_flagged(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        mug = await _stocked(app, client, staff, 5)
        cart_id, mine = await _anonymous_cart(client)
        await _add(client, cart_id, mine, mug, 4)

        await app.state.container.inventory.reserve(
            sku=mug, quantity=3, owner="another-checkout", ttl_seconds=600
        )
        line = (await client.get(f"/api/v1/carts/{cart_id}", headers=mine)).json()["lines"][0]
        assert (line["available"], line["availability_changed"], line["insufficient_stock"]) == (
            2,
            True,
            True,
        )
        more = await _add(client, cart_id, mine, mug, 1)
        problem = _assert_problem(more, 409, "cart.insufficient_stock")
        assert (problem["sku"], problem["requested"], problem["available"]) == (mug, 5, 2)
        lower = await client.patch(
            f"/api/v1/carts/{cart_id}/items/{mug}", json={"quantity": 2}, headers=mine
        )
        assert lower.json()["lines"][0]["insufficient_stock"] is False


async def test_quantity_stock_and_catalog_rules(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        mug = await _stocked(app, client, staff, 200)
        scarce = await _stocked(app, client, staff, 3)
        hidden = await _stocked(app, client, staff, 10, published=False)
        euro = await _stocked(app, client, staff, 10, currency="EUR")
        cart_id, mine = await _anonymous_cart(client)
        await _add(client, cart_id, mine, mug, 1)
        before = (await client.get(f"/api/v1/carts/{cart_id}", headers=mine)).json()

        for quantity in (0, -1, 100, "2", 1.5, True):
            refused = await _add(client, cart_id, mine, mug, quantity)  # type: ignore[arg-type]
            _assert_problem(refused, 422, "validation_error")
        _assert_problem(await _add(client, cart_id, mine, "NOPE-1", 1), 422, "cart.unknown_sku")
        _assert_problem(await _add(client, cart_id, mine, hidden, 1), 422, "cart.unknown_sku")
        mismatch = _assert_problem(
            await _add(client, cart_id, mine, euro, 1), 422, "cart.currency_mismatch"
        )
        assert (mismatch["currency"], mismatch["cart_currency"]) == ("EUR", "USD")
        short = _assert_problem(
            await _add(client, cart_id, mine, scarce, 4), 409, "cart.insufficient_stock"
        )
        assert (short["requested"], short["available"]) == (4, 3)
        assert (await client.get(f"/api/v1/carts/{cart_id}", headers=mine)).json() == before

        assert (await _add(client, cart_id, mine, mug, 98)).json()["lines"][0]["quantity"] == 99
        capped = _assert_problem(
            await _add(client, cart_id, mine, mug, 1), 409, "cart.line_quantity_limit"
        )
        assert (capped["requested"], capped["maximum"]) == (100, 99)
        too_many = await client.patch(
            f"/api/v1/carts/{cart_id}/items/{mug}", json={"quantity": 100}, headers=mine
        )
        _assert_problem(too_many, 422, "validation_error")


async def test_unknown_fields_and_malformed_input_are_refused(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        mug = await _stocked(app, client, staff, 10)
        cart_id, mine = await _anonymous_cart(client)
        url = f"/api/v1/carts/{cart_id}/items"
        bodies = [
            {"sku": mug, "quantity": 1, "price": _usd("0.01")},
            {"sku": mug, "quantity": 1, "owner_id": "someone"},
            {"quantity": 1},
            {"sku": "x" * 65, "quantity": 1},
            {"sku": "semi;colon", "quantity": 1},
        ]
        for body in bodies:
            _assert_problem(
                await client.post(url, json=body, headers=mine), 422, "validation_error"
            )
        await _add(client, cart_id, mine, mug, 1)
        patch = await client.patch(
            f"{url}/{mug}", json={"quantity": 2, "price_seen": "0.01"}, headers=mine
        )
        _assert_problem(patch, 422, "validation_error")
        bad_path = await client.patch(f"{url}/bad;sku", json={"quantity": 2}, headers=mine)
        _assert_problem(bad_path, 422, "validation_error")
        read = (await client.get(f"/api/v1/carts/{cart_id}", headers=mine)).json()
        assert _quantities(read) == {mug: 1}
        assert read["lines"][0]["price_seen"] == _usd("10.00")


async def test_a_cart_holds_at_most_100_lines(sqlite_url: str) -> None:
    async with running_app(settings_for(sqlite_url)) as (app, client):
        staff = await staff_headers(app, client)
        payload = product_payload("Many Variants")
        payload["variants"] = [
            {"sku": f"MANY-{i}", "name": f"V{i}", "price": _usd("1.00")} for i in range(100)
        ]
        assert (await client.post("/api/v1/products", json=payload, headers=staff)).is_success
        extra = await _stocked(app, client, staff, 5)
        for i in range(100):
            await _stock(app, f"MANY-{i}", 1)
        cart_id, mine = await _anonymous_cart(client)
        for i in range(100):
            assert (await _add(client, cart_id, mine, f"MANY-{i}", 1)).status_code == 200
        refused = _assert_problem(
            await _add(client, cart_id, mine, extra, 1), 409, "cart.too_many_lines"
        )
        assert refused["maximum"] == 100
        body = (await client.get(f"/api/v1/carts/{cart_id}", headers=mine)).json()
        assert (len(body["lines"]), body["subtotal"]) == (100, _usd("100.00"))


async def test_concurrent_adds_never_lose_an_update(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        mug = await _stocked(app, client, staff, 50)
        cart_id, mine = await _anonymous_cart(client)

        responses = await asyncio.gather(*(_add(client, cart_id, mine, mug, 1) for _ in range(20)))

        assert [response.status_code for response in responses] == [200] * 20
        # Each add produced its own version: 20 writes, none lost, none merged.
        assert sorted(response.json()["version"] for response in responses) == list(range(2, 22))
        body = (await client.get(f"/api/v1/carts/{cart_id}", headers=mine)).json()
        assert (_quantities(body), body["version"]) == ({mug: 20}, 21)


async def test_concurrent_adds_stop_cleanly_at_the_cap(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        mug = await _stocked(app, client, staff, 500)
        cart_id, mine = await _anonymous_cart(client)
        await _add(client, cart_id, mine, mug, 95)

        responses = await asyncio.gather(*(_add(client, cart_id, mine, mug, 1) for _ in range(10)))

        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200] * 4 + [409] * 6
        for response in responses:
            if response.status_code == 409:
                _assert_problem(response, 409, "cart.line_quantity_limit")
        body = (await client.get(f"/api/v1/carts/{cart_id}", headers=mine)).json()
        assert _quantities(body) == {mug: 99}


async def test_concurrent_writes_naming_one_version_let_one_win(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        mug = await _stocked(app, client, staff, 50)
        cart_id, mine = await _anonymous_cart(client)
        guarded = {**mine, "If-Match": '"v1"'}

        responses = await asyncio.gather(
            *(_add(client, cart_id, guarded, mug, 1) for _ in range(10))
        )

        assert sorted(response.status_code for response in responses) == [200] + [412] * 9
        body = (await client.get(f"/api/v1/carts/{cart_id}", headers=mine)).json()
        assert (_quantities(body), body["version"]) == ({mug: 1}, 2)


async def test_merge_on_login(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        mug = await _stocked(app, client, staff, 200)
        tea = await _stocked(app, client, staff, 200)
        pen = await _stocked(app, client, staff, 200)
        anonymous_cart, token = await _anonymous_cart(client)
        await _add(client, anonymous_cart, token, mug, 2)
        await _add(client, anonymous_cart, token, tea, 1)
        customer = await _customer(client)
        cart_id = await _customer_cart(client, customer)
        await _add(client, cart_id, customer, mug, 1)
        await _add(client, cart_id, customer, pen, 3)
        merge_url = f"/api/v1/carts/{cart_id}/merge"

        merged = await client.post(merge_url, headers={**customer, **token})
        assert merged.status_code == 200, merged.text
        assert _quantities(merged.json()) == {mug: 3, pen: 3, tea: 1}
        assert merged.headers["etag"] == '"v4"'
        gone = await client.get(f"/api/v1/carts/{anonymous_cart}", headers=token)
        _assert_problem(gone, 404, "cart.not_found")
        _assert_problem(await _add(client, anonymous_cart, token, mug, 1), 404, "cart.not_found")

        repeated = await client.post(merge_url, headers={**customer, **token})
        assert repeated.status_code == 200
        assert repeated.json() == merged.json()

        _assert_problem(
            await client.post(merge_url, headers=token), 401, "ironcart.unauthenticated"
        )
        _assert_problem(await client.post(merge_url, headers=customer), 422, "validation_error")
        wrong = {**customer, "X-Cart-Token": "B" * 43}
        _assert_problem(await client.post(merge_url, headers=wrong), 404, "cart.not_found")
        other = await _customer(client)
        other_cart = await _customer_cart(client, other)
        stolen = await client.post(f"/api/v1/carts/{other_cart}/merge", headers={**other, **token})
        _assert_problem(stolen, 404, "cart.not_found")
        assert (await client.get(f"/api/v1/carts/{other_cart}", headers=other)).json()[
            "lines"
        ] == []

        # Summing is capped at the per-line limit.
        second, second_token = await _anonymous_cart(client)
        await _add(client, second, second_token, mug, 98)
        capped = await client.post(merge_url, headers={**customer, **second_token})
        assert _quantities(capped.json()) == {mug: 99, pen: 3, tea: 1}


async def test_abandoned_anonymous_carts_are_purged(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        mug = await _stocked(app, client, staff, 10)
        anonymous_cart, token = await _anonymous_cart(client)
        await _add(client, anonymous_cart, token, mug, 2)
        customer = await _customer(client)
        customer_cart = await _customer_cart(client, customer)
        await _add(client, customer_cart, customer, mug, 1)
        service = app.state.container.cart
        now = datetime.now(UTC)

        assert await service.purge_abandoned(before=now - timedelta(days=30)) == 0
        assert await service.purge_abandoned(before=now + timedelta(seconds=5)) == 1

        _assert_problem(
            await client.get(f"/api/v1/carts/{anonymous_cart}", headers=token),
            404,
            "cart.not_found",
        )
        async with app.state.container.engine.connect() as connection:
            left = await connection.execute(
                select(func.count()).select_from(lines).where(lines.c.cart_id == anonymous_cart)
            )
            assert left.scalar_one() == 0
        kept = await client.get(f"/api/v1/carts/{customer_cart}", headers=customer)
        assert _quantities(kept.json()) == {mug: 1}


async def test_concurrent_merges_of_one_cart_fold_it_in_once(database_url: str) -> None:
    async with running_app(settings_for(database_url)) as (app, client):
        staff = await staff_headers(app, client)
        mug = await _stocked(app, client, staff, 50)
        anonymous_cart, token = await _anonymous_cart(client)
        await _add(client, anonymous_cart, token, mug, 3)
        customer = await _customer(client)
        cart_id = await _customer_cart(client, customer)
        await _add(client, cart_id, customer, mug, 1)

        responses = await asyncio.gather(
            *(
                client.post(f"/api/v1/carts/{cart_id}/merge", headers={**customer, **token})
                for _ in range(8)
            )
        )

        assert [response.status_code for response in responses] == [200] * 8
        assert {response.json()["version"] for response in responses} == {3}
        body = (await client.get(f"/api/v1/carts/{cart_id}", headers=customer)).json()
        assert (_quantities(body), body["version"]) == ({mug: 4}, 3)
