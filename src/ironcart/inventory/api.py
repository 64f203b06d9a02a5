"""Inventory's staff HTTP API: stock per SKU (ETag / If-Match), adjustments, warehouses."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, Field, field_validator, model_validator

from ironcart.contracts.identity import Principal
from ironcart.inventory.domain import (
    MAX_STOCK,
    REASON_MAX_LENGTH,
    SKU_PATTERN,
    WAREHOUSE_CODE_PATTERN,
    SkuStock,
    Warehouse,
)
from ironcart.inventory.service import InventoryService
from ironcart.platform.http.auth import StaffOnly
from ironcart.platform.http.preconditions import required_version, version_etag
from ironcart.platform.http.schemas import StrictModel

MAX_LEVELS_PER_UPDATE = 100
MAX_PRIORITY = 1_000_000


async def get_inventory_service(request: Request) -> InventoryService:
    service: InventoryService = request.app.state.container.inventory
    return service


Inventory = Annotated[InventoryService, Depends(get_inventory_service)]
Sku = Annotated[str, Path(min_length=1, max_length=64, pattern=SKU_PATTERN.pattern)]
WarehouseCode = Annotated[str, Field(pattern=WAREHOUSE_CODE_PATTERN)]
WarehouseCodeInPath = Annotated[str, Path(pattern=WAREHOUSE_CODE_PATTERN)]
Reason = Annotated[str, Field(min_length=1, max_length=REASON_MAX_LENGTH, pattern=r"\S")]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"\S")]
Priority = Annotated[int, Field(ge=0, le=MAX_PRIORITY)]
Quantity = Annotated[int, Field(ge=0, le=MAX_STOCK)]


class LevelUpdate(StrictModel):
    warehouse: WarehouseCode
    on_hand: Quantity


class StockUpdate(StrictModel):
    levels: Annotated[list[LevelUpdate], Field(max_length=MAX_LEVELS_PER_UPDATE)] = Field(
        default_factory=list
    )
    low_stock_threshold: Quantity | None = None
    reason: Reason

    @field_validator("levels")
    @classmethod
    def _one_line_per_warehouse(cls, levels: list[LevelUpdate]) -> list[LevelUpdate]:
        codes = [level.warehouse for level in levels]
        if len(set(codes)) != len(codes):
            raise ValueError("each warehouse may appear once")
        return levels


class TransferCreate(StrictModel):
    from_warehouse: WarehouseCode
    to_warehouse: WarehouseCode
    quantity: Annotated[int, Field(ge=1, le=MAX_STOCK)]
    reason: Reason

    @model_validator(mode="after")
    def _two_warehouses(self) -> TransferCreate:
        if self.from_warehouse == self.to_warehouse:
            raise ValueError("a transfer goes to another warehouse")
        return self


class ReturnCreate(StrictModel):
    warehouse: WarehouseCode
    quantity: Annotated[int, Field(ge=1, le=MAX_STOCK)]
    reason: Reason
    reference: Annotated[str | None, Field(min_length=1, max_length=64)] = None  # e.g. the order


class AdjustmentCreate(StrictModel):
    warehouse: WarehouseCode
    delta: Annotated[int, Field(ge=-MAX_STOCK, le=MAX_STOCK)]
    reason: Reason

    @field_validator("delta")
    @classmethod
    def _not_zero(cls, delta: int) -> int:
        if delta == 0:
            raise ValueError("must not be 0")
        return delta


class LevelRead(BaseModel):
    warehouse: str
    warehouse_active: bool
    on_hand: int
    reserved: int
    available: int


class StockRead(BaseModel):
    sku: str
    levels: list[LevelRead]
    available: int
    low_stock_threshold: int

    @classmethod
    def of(cls, stock: SkuStock) -> StockRead:
        return cls(
            sku=stock.sku,
            levels=[
                LevelRead(
                    warehouse=level.warehouse.code,
                    warehouse_active=level.warehouse.active,
                    on_hand=level.on_hand,
                    reserved=level.reserved,
                    available=level.available,
                )
                for level in stock.levels
            ],
            available=stock.available,
            low_stock_threshold=stock.low_stock_threshold,
        )


class WarehouseCreate(StrictModel):
    code: WarehouseCode
    name: Name
    priority: Priority = 100


class WarehouseUpdate(StrictModel):
    name: Name | None = None
    priority: Priority | None = None
    active: bool | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> WarehouseUpdate:
        if self.name is None and self.priority is None and self.active is None:
            raise ValueError("name, priority or active is required")
        return self


class WarehouseRead(BaseModel):
    id: str
    code: str
    name: str
    priority: int
    active: bool

    @classmethod
    def of(cls, warehouse: Warehouse) -> WarehouseRead:
        return cls(
            id=warehouse.id,
            code=warehouse.code,
            name=warehouse.name,
            priority=warehouse.priority,
            active=warehouse.active,
        )


router = APIRouter(tags=["inventory"])


def _actor(principal: Principal) -> str:
    return (principal.user_id or principal.client_id or principal.subject)[:64]


def _expected_version(request: Request) -> int:
    """`If-None-Match: *` creates the SKU's inventory (version 0); otherwise `If-Match`."""
    if "if-match" not in request.headers and request.headers.get("if-none-match") == "*":
        return 0
    return required_version(request)


def _with_etag(stock: SkuStock, response: Response) -> StockRead:
    response.headers["ETag"] = version_etag(stock.version)
    return StockRead.of(stock)


@router.get("/api/v1/inventory/{sku}", response_model=StockRead)
async def read_stock(
    sku: Sku, request: Request, response: Response, _staff: StaffOnly, inventory: Inventory
) -> StockRead | Response:
    stock = await inventory.get_stock(sku=sku)
    etag = version_etag(stock.version)
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return _with_etag(stock, response)


@router.put("/api/v1/inventory/{sku}", response_model=StockRead)
async def update_stock(
    sku: Sku,
    body: StockUpdate,
    request: Request,
    response: Response,
    staff: StaffOnly,
    inventory: Inventory,
) -> StockRead:
    stock = await inventory.set_stock(
        sku=sku,
        expected_version=_expected_version(request),
        on_hand={level.warehouse: level.on_hand for level in body.levels},
        low_stock_threshold=body.low_stock_threshold,
        reason=body.reason,
        actor=_actor(staff),
    )
    return _with_etag(stock, response)


@router.post("/api/v1/inventory/{sku}/adjustments", response_model=StockRead)
async def adjust_stock(
    sku: Sku, body: AdjustmentCreate, response: Response, staff: StaffOnly, inventory: Inventory
) -> StockRead:
    stock = await inventory.adjust(
        sku=sku,
        warehouse=body.warehouse,
        delta=body.delta,
        reason=body.reason,
        actor=_actor(staff),
    )
    return _with_etag(stock, response)


@router.post("/api/v1/inventory/{sku}/transfers", response_model=StockRead)
async def transfer_stock(
    sku: Sku, body: TransferCreate, response: Response, staff: StaffOnly, inventory: Inventory
) -> StockRead:
    """Move units on hand between two warehouses (one transaction, two ledger rows)."""
    stock = await inventory.transfer(
        sku=sku,
        source=body.from_warehouse,
        target=body.to_warehouse,
        quantity=body.quantity,
        reason=body.reason,
        actor=_actor(staff),
    )
    return _with_etag(stock, response)


@router.post("/api/v1/inventory/{sku}/returns", response_model=StockRead)
async def return_stock(
    sku: Sku, body: ReturnCreate, response: Response, staff: StaffOnly, inventory: Inventory
) -> StockRead:
    """Returned goods back on the shelf through the ledger (a "return" movement)."""
    await inventory.restock_return(
        sku=sku,
        warehouse=body.warehouse,
        quantity=body.quantity,
        reference=body.reference or _actor(staff),
        reason=body.reason,
    )
    return _with_etag(await inventory.get_stock(sku=sku), response)


@router.get("/api/v1/warehouses", response_model=list[WarehouseRead])
async def list_warehouses(_staff: StaffOnly, inventory: Inventory) -> list[WarehouseRead]:
    return [WarehouseRead.of(warehouse) for warehouse in await inventory.list_warehouses()]


@router.post("/api/v1/warehouses", status_code=201, response_model=WarehouseRead)
async def create_warehouse(
    body: WarehouseCreate, response: Response, _staff: StaffOnly, inventory: Inventory
) -> WarehouseRead:
    warehouse = await inventory.create_warehouse(
        code=body.code, name=body.name, priority=body.priority
    )
    response.headers["Location"] = f"/api/v1/warehouses/{warehouse.code}"
    return WarehouseRead.of(warehouse)


@router.patch("/api/v1/warehouses/{code}", response_model=WarehouseRead)
async def update_warehouse(
    code: WarehouseCodeInPath, body: WarehouseUpdate, _staff: StaffOnly, inventory: Inventory
) -> WarehouseRead:
    warehouse = await inventory.update_warehouse(
        code=code, name=body.name, priority=body.priority, active=body.active
    )
    return WarehouseRead.of(warehouse)


@router.delete("/api/v1/warehouses/{code}", status_code=204)
async def deactivate_warehouse(
    code: WarehouseCodeInPath, _staff: StaffOnly, inventory: Inventory
) -> Response:
    await inventory.deactivate_warehouse(code=code)
    return Response(status_code=204)
