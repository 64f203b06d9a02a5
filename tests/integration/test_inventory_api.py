"""Inventory's staff API over HTTP: ETag / If-Match, adjustments, warehouses, errors."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from ironcart.inventory.repository import movements
from tests.support.app import DEMO_PASSWORD, register_and_login, running_app, settings_for

pytestmark = [pytest.mark.anyio, pytest.mark.integration]
PROBLEM = "application/problem+json"


@dataclass
class Staff:
    app: FastAPI
    client: httpx.AsyncClient
    user_id: str
    headers: dict[str, str]

    async def warehouse(self, name: str, priority: int = 10) -> str:
        code = f"{name}-{uuid.uuid4().hex[:6]}"
        created = await self.client.post(
            "/api/v1/warehouses",
            json={"code": code, "name": name.title(), "priority": priority},
            headers=self.headers,
        )
        assert created.status_code == 201, created.text
        return code

    async def put(
        self, sku: str, body: dict[str, object], precondition: dict[str, str]
    ) -> httpx.Response:
        return await self.client.put(
            f"/api/v1/inventory/{sku}", json=body, headers={**self.headers, **precondition}
        )


@pytest.fixture
async def staff(database_url: str) -> AsyncIterator[Staff]:
    async with running_app(settings_for(database_url)) as (app, client):
        email = f"staff-{uuid.uuid4().hex[:8]}@example.com"
        user = await app.state.container.identity.create_user(
            email=email, password=DEMO_PASSWORD, name="Stock Keeper", roles=["staff"]
        )
        token = await client.post(
            "/api/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": DEMO_PASSWORD},
        )
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        yield Staff(app, client, user.id, headers)


def _sku() -> str:
    return f"SKU-{uuid.uuid4().hex[:10]}"


def _problem(response: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, object] = response.json()
    assert body["status"] == status
    if code is not None:
        assert body["type"] == f"urn:ironcart:problem:{code}"
    return body


async def test_get_and_put_with_etag_and_if_match(staff: Staff) -> None:
    east, west = await staff.warehouse("east", 1), await staff.warehouse("west", 2)
    sku = _sku()
    _problem(await staff.client.get(f"/api/v1/inventory/{sku}", headers=staff.headers), 404)

    created = await staff.put(
        sku,
        {"levels": [{"warehouse": east, "on_hand": 30}], "reason": "opening stock"},
        {"If-None-Match": "*"},
    )
    assert created.status_code == 200, created.text

    read = await staff.client.get(f"/api/v1/inventory/{sku}", headers=staff.headers)
    assert read.status_code == 200
    assert read.headers["etag"] == created.headers["etag"]
    assert read.json() == {
        "sku": sku,
        "levels": [
            {
                "warehouse": east,
                "warehouse_active": True,
                "on_hand": 30,
                "reserved": 0,
                "available": 30,
            }
        ],
        "available": 30,
        "low_stock_threshold": 0,
    }
    etag = read.headers["etag"]
    change = {
        "levels": [{"warehouse": east, "on_hand": 25}, {"warehouse": west, "on_hand": 5}],
        "low_stock_threshold": 3,
        "reason": "stock count",
    }

    _problem(await staff.put(sku, change, {}), 428, "ironcart.precondition_required")
    _problem(await staff.put(sku, change, {"If-Match": '"v999"'}), 412)
    _problem(await staff.put(sku, change, {"If-Match": "garbage"}), 412)
    updated = await staff.put(sku, change, {"If-Match": etag})

    assert updated.status_code == 200, updated.text
    assert updated.headers["etag"] != etag
    assert updated.json()["available"] == 30
    assert updated.json()["low_stock_threshold"] == 3
    # The old ETag is stale now: a second writer holding it is refused and changes nothing
    stale = await staff.put(sku, {**change, "low_stock_threshold": 9}, {"If-Match": etag})
    _problem(stale, 412, "inventory.stale_version")
    again = await staff.client.get(f"/api/v1/inventory/{sku}", headers=staff.headers)
    assert again.headers["etag"] == updated.headers["etag"]
    assert again.json() == updated.json()
    not_modified = await staff.client.get(
        f"/api/v1/inventory/{sku}",
        headers={**staff.headers, "If-None-Match": again.headers["etag"]},
    )
    assert not_modified.status_code == 304

    ledger = await _ledger(staff, sku)
    assert sorted(ledger) == sorted(
        [
            ("adjustment", 30, "opening stock", staff.user_id),
            ("adjustment", -5, "stock count", staff.user_id),
            ("adjustment", 5, "stock count", staff.user_id),
        ]
    )
    assert await staff.app.state.container.inventory.reconcile() == []


async def _ledger(staff: Staff, sku: str) -> list[tuple[str, int, str, str]]:
    async with staff.app.state.container.engine.connect() as connection:
        rows = await connection.execute(
            select(
                movements.c.kind,
                movements.c.on_hand_delta,
                movements.c.reason,
                movements.c.reference,
            )
            .where(movements.c.sku == sku)
            .order_by(movements.c.id)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def test_adjustment_with_reason_writes_a_ledger_row(staff: Staff) -> None:
    main = await staff.warehouse("main")
    sku = _sku()
    url = f"/api/v1/inventory/{sku}/adjustments"

    received = await staff.client.post(
        url, json={"warehouse": main, "delta": 12, "reason": "delivery 4711"}, headers=staff.headers
    )
    assert received.status_code == 200, received.text
    assert received.json()["available"] == 12
    assert received.headers["etag"]
    shrink = await staff.client.post(
        url, json={"warehouse": main, "delta": -2, "reason": "damaged"}, headers=staff.headers
    )
    assert shrink.json()["available"] == 10

    assert await _ledger(staff, sku) == [
        ("adjustment", 12, "delivery 4711", staff.user_id),
        ("adjustment", -2, "damaged", staff.user_id),
    ]

    # Reserved units cannot be adjusted away (409), and nothing is written
    await staff.app.state.container.inventory.reserve(
        sku=sku, quantity=8, owner="cart-1", ttl_seconds=600
    )
    too_much = await staff.client.post(
        url, json={"warehouse": main, "delta": -3, "reason": "lost"}, headers=staff.headers
    )
    _problem(too_much, 409, "inventory.below_reserved")
    assert len(await _ledger(staff, sku)) == 3


async def test_a_transfer_moves_units_between_warehouses_in_one_step(staff: Staff) -> None:
    east, west = await staff.warehouse("east", 1), await staff.warehouse("west", 2)
    sku = _sku()
    inventory = staff.app.state.container.inventory
    await inventory.receive(sku=sku, warehouse=east, quantity=10)
    url = f"/api/v1/inventory/{sku}/transfers"

    moved = await staff.client.post(
        url,
        json={"from_warehouse": east, "to_warehouse": west, "quantity": 4, "reason": "rebalance"},
        headers=staff.headers,
    )

    assert moved.status_code == 200, moved.text
    levels = {level["warehouse"]: level["on_hand"] for level in moved.json()["levels"]}
    assert levels == {east: 6, west: 4}
    assert moved.json()["available"] == 10  # a transfer sells and loses nothing
    ledger = await _ledger(staff, sku)
    assert [(kind, delta) for kind, delta, _, _ in ledger] == [
        ("receipt", 10),
        ("transfer", -4),
        ("transfer", 4),
    ]
    assert ledger[1][3] == ledger[2][3]  # one reference ties the pair together
    assert ledger[1][2] == f"rebalance (by {staff.user_id})"
    assert await inventory.reconcile() == []

    # Reserved units stay where they are: only free units leave (409, nothing written).
    await inventory.reserve(sku=sku, quantity=5, owner="cart-1", ttl_seconds=600)
    written = len(await _ledger(staff, sku))
    too_many = await staff.client.post(
        url,
        json={"from_warehouse": east, "to_warehouse": west, "quantity": 2, "reason": "more"},
        headers=staff.headers,
    )
    _problem(too_many, 409, "inventory.below_reserved")
    nowhere = await staff.client.post(
        url,
        json={"from_warehouse": east, "to_warehouse": "no-such", "quantity": 1, "reason": "x"},
        headers=staff.headers,
    )
    _problem(nowhere, 422, "inventory.unknown_warehouse")
    assert len(await _ledger(staff, sku)) == written
    assert await inventory.reconcile() == []
    unknown = _sku()
    ghost = await staff.client.post(
        f"/api/v1/inventory/{unknown}/transfers",
        json={"from_warehouse": east, "to_warehouse": west, "quantity": 1, "reason": "x"},
        headers=staff.headers,
    )
    _problem(ghost, 404, "inventory.sku_not_found")
    _problem(await staff.client.get(f"/api/v1/inventory/{unknown}", headers=staff.headers), 404)


async def test_concurrent_transfers_never_move_more_than_is_there(staff: Staff) -> None:
    east, west = await staff.warehouse("east", 1), await staff.warehouse("west", 2)
    sku = _sku()
    inventory = staff.app.state.container.inventory
    await inventory.receive(sku=sku, warehouse=east, quantity=10)
    await inventory.receive(sku=sku, warehouse=west, quantity=1)

    async def move(source: str, target: str) -> int:
        return (
            await staff.client.post(
                f"/api/v1/inventory/{sku}/transfers",
                json={
                    "from_warehouse": source,
                    "to_warehouse": target,
                    "quantity": 2,
                    "reason": "x",
                },
                headers=staff.headers,
            )
        ).status_code

    answers = await asyncio.gather(*(move(east, west) for _ in range(8)), move(west, east))

    # 10 at east: 5 transfers of 2 fit; a 6th only if the one back from west (which holds 1,
    # so it goes only after a transfer there) came in time.
    back = 1 if answers[8] == 200 else 0
    moved = answers[:8].count(200)
    assert answers.count(200) + answers.count(409) == 9
    assert moved in ({5, 6} if back else {5})
    stock = await inventory.get_stock(sku=sku)
    on_hand = {level.warehouse.code: level.on_hand for level in stock.levels}
    assert on_hand == {east: 10 - 2 * moved + 2 * back, west: 1 + 2 * moved - 2 * back}
    assert await inventory.reconcile() == []


async def test_a_return_puts_stock_back_through_the_ledger(staff: Staff) -> None:
    main = await staff.warehouse("main")
    sku = _sku()
    inventory = staff.app.state.container.inventory
    await inventory.receive(sku=sku, warehouse=main, quantity=1)

    back = await staff.client.post(
        f"/api/v1/inventory/{sku}/returns",
        json={"warehouse": main, "quantity": 2, "reason": "unopened", "reference": "order-42"},
        headers=staff.headers,
    )

    assert back.status_code == 200, back.text
    assert back.json()["available"] == 3
    assert (await _ledger(staff, sku))[-1] == ("return", 2, "unopened", "order-42")
    assert await inventory.reconcile() == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param(
            "PUT", "/api/v1/inventory/SKU-1", {"reason": "x", "extra": 1}, id="put-extra-field"
        ),
        pytest.param("PUT", "/api/v1/inventory/SKU-1", {"levels": []}, id="put-without-reason"),
        pytest.param(
            "PUT",
            "/api/v1/inventory/SKU-1",
            {"levels": [{"warehouse": "main", "on_hand": -1}], "reason": "x"},
            id="put-negative-stock",
        ),
        pytest.param(
            "PUT",
            "/api/v1/inventory/SKU-1",
            {"levels": [{"warehouse": "main", "on_hand": 1}] * 2, "reason": "x"},
            id="put-same-warehouse-twice",
        ),
        pytest.param(
            "PUT",
            "/api/v1/inventory/SKU-1",
            {"levels": [], "reason": "r" * 501},
            id="reason-too-long",
        ),
        pytest.param(
            "POST",
            "/api/v1/inventory/SKU-1/adjustments",
            {"warehouse": "main", "delta": 0, "reason": "x"},
            id="zero-delta",
        ),
        pytest.param(
            "POST",
            "/api/v1/inventory/SKU-1/adjustments",
            {"warehouse": "main", "delta": 1, "reason": "   "},
            id="blank-reason",
        ),
        pytest.param(
            "POST",
            "/api/v1/inventory/bad%20sku%21/adjustments",
            {"warehouse": "main", "delta": 1, "reason": "x"},
            id="malformed-sku",
        ),
        pytest.param(
            "POST", "/api/v1/warehouses", {"code": "no spaces", "name": "x"}, id="malformed-code"
        ),
        pytest.param("PATCH", "/api/v1/warehouses/main", {}, id="empty-patch"),
        pytest.param(
            "POST",
            "/api/v1/inventory/SKU-1/transfers",
            {"from_warehouse": "a", "to_warehouse": "b", "quantity": 0, "reason": "x"},
            id="transfer-nothing",
        ),
        pytest.param(
            "POST",
            "/api/v1/inventory/SKU-1/transfers",
            {"from_warehouse": "a", "to_warehouse": "a", "quantity": 1, "reason": "x"},
            id="transfer-to-itself",
        ),
        pytest.param(
            "POST",
            "/api/v1/inventory/SKU-1/returns",
            {"warehouse": "a", "quantity": -1, "reason": "x"},
            id="return-negative",
        ),
    ],
)
async def test_bad_input_is_a_422_problem(
    staff: Staff, method: str, path: str, body: dict[str, object]
) -> None:
    response = await staff.client.request(
        method, path, json=body, headers={**staff.headers, "If-Match": '"v1"'}
    )
    problem = _problem(response, 422, "validation_error")
    assert problem["errors"]


async def test_unknown_sku_or_warehouse(staff: Staff) -> None:
    missing = await staff.client.get(f"/api/v1/inventory/{_sku()}", headers=staff.headers)
    _problem(missing, 404, "inventory.sku_not_found")
    unknown = await staff.put(
        _sku(),
        {"levels": [{"warehouse": "nowhere", "on_hand": 1}], "reason": "x"},
        {"If-None-Match": "*"},
    )
    _problem(unknown, 422, "inventory.unknown_warehouse")
    patch = await staff.client.patch(
        "/api/v1/warehouses/nowhere", json={"priority": 1}, headers=staff.headers
    )
    _problem(patch, 404, "inventory.warehouse_not_found")


async def test_warehouses_crud(staff: Staff) -> None:
    code = await staff.warehouse("north", 5)
    duplicate = await staff.client.post(
        "/api/v1/warehouses", json={"code": code, "name": "Again"}, headers=staff.headers
    )
    _problem(duplicate, 409, "inventory.warehouse_code_taken")

    patched = await staff.client.patch(
        f"/api/v1/warehouses/{code}",
        json={"name": "North Hub", "priority": 2},
        headers=staff.headers,
    )
    assert patched.status_code == 200
    assert (patched.json()["name"], patched.json()["priority"]) == ("North Hub", 2)
    deleted = await staff.client.delete(f"/api/v1/warehouses/{code}", headers=staff.headers)
    assert deleted.status_code == 204

    listed = await staff.client.get("/api/v1/warehouses", headers=staff.headers)
    assert listed.status_code == 200
    mine = [item for item in listed.json() if item["code"] == code]
    assert [(item["name"], item["priority"], item["active"]) for item in mine] == [
        ("North Hub", 2, False)
    ]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/api/v1/inventory/SKU-1", id="read-stock"),
        pytest.param("PUT", "/api/v1/inventory/SKU-1", id="set-stock"),
        pytest.param("POST", "/api/v1/inventory/SKU-1/adjustments", id="adjust"),
        pytest.param("POST", "/api/v1/inventory/SKU-1/transfers", id="transfer"),
        pytest.param("POST", "/api/v1/inventory/SKU-1/returns", id="return"),
        pytest.param("GET", "/api/v1/warehouses", id="list-warehouses"),
        pytest.param("POST", "/api/v1/warehouses", id="create-warehouse"),
        pytest.param("DELETE", "/api/v1/warehouses/main", id="delete-warehouse"),
    ],
)
async def test_only_staff_may_call(staff: Staff, method: str, path: str) -> None:
    anonymous = await staff.client.request(method, path, json={})
    _problem(anonymous, 401)
    assert anonymous.headers["www-authenticate"].startswith("Bearer")

    customer = await register_and_login(staff.client, f"buyer-{uuid.uuid4().hex[:8]}@example.com")
    forbidden = await staff.client.request(
        method, path, json={}, headers={"Authorization": f"Bearer {customer['access_token']}"}
    )
    _problem(forbidden, 403, "auth.insufficient_scope")
