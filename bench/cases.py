"""The benchmark cases of `make bench`: one entry each, in the order they run.

A case is either a GET of `path` or a wrk Lua script in bench/lua/ (for POSTs, random ids,
several requests...). `server` names who serves it:

- ``nginx``    a 1 KB static JSON file (the HTTP ceiling of this machine),
- ``raw``      bench/raw_asgi.py: one asyncpg primary-key SELECT a request (the database-read
               ceiling), on uvicorn or granian, whichever is faster,
- ``ironcart`` `ironcart serve` in production mode on PostgreSQL and Redis,
- ``ironcart-checkout`` the same with the sandbox PSP (`ironcart sandbox-psp`, its own process)
               configured as the payment provider, for the checkout cases,
- ``pgbench``  no server: pgbench runs a script against PostgreSQL (the order-write ceiling).

`driver` names what makes the load: ``wrk`` (the default; `path` or `script`), ``checkout``
(bench/checkout_load.py: `clients` customer accounts, each looping cart -> order; the setup
writes the SKUs it picks from to ``BENCH_SKUS``) or ``pgbench`` (`clients` connections; the
setup writes the script's path to ``BENCH_PGBENCH_SCRIPT``). Checkout and pgbench runs last
BENCH_CHECKOUT_DURATION seconds (default twice BENCH_DURATION).

`auth=True` sends ``Authorization: Bearer <token>`` of the bench user (registered and logged
in through the API before the case; a fresh token for every case). Lua scripts can also read
BENCH_TOKEN, BENCH_ITEMS and any key of `env` with os.getenv().

`setup`, if given, is called once before the case (after the server is up) with a
`bench.run.CaseContext`: ``ctx.base_url``, ``ctx.token()``, ``ctx.http(method, path, ...)``,
``ctx.database_url``, ``ctx.env`` (extra environment for wrk's Lua). Use it to seed data,
e.g. products for the catalog cases, or to warm (or empty) a cache.

Adding a case is one `Case(...)` entry below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Case:
    key: str  # short id: the table's first column, BENCH_CASES=..., BENCH_PROFILE_CASE=...
    name: str
    description: str
    server: str  # "nginx" | "raw" | "ironcart"
    path: str = "/"  # GET path; with `script`, the URL wrk is given (the script may override)
    script: str | None = None  # a file in bench/lua/
    auth: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Any], None] | None = None
    # Check the answer before loading: a GET of `path` (with the headers) must be 2xx.
    # Set to False for scripts whose `path` alone is not a valid request.
    preflight: bool = True
    driver: str = "wrk"  # "wrk" | "checkout" | "pgbench"
    clients: int = 0  # checkout: buyers (customer accounts); pgbench: connections


CASES: list[Case] = [
    Case(
        key="a",
        name="static nginx",
        description="nginx serving a 1 KB static JSON file: the HTTP ceiling of this machine",
        server="nginx",
        path="/static.json",
    ),
    Case(
        key="a2",
        name="raw ASGI pk select",
        description=(
            "bare ASGI app (no framework), one asyncpg primary-key SELECT of a random row "
            "of 100,000 a request, row as JSON: the database-read ceiling"
        ),
        server="raw",
        path="/items/1",
        script="random_item.lua",
    ),
    Case(
        key="h",
        name="IronCart /healthz",
        description="GET /healthz: no I/O, the framework and middleware overhead floor",
        server="ironcart",
        path="/healthz",
    ),
    Case(
        key="j",
        name="IronCart JWKS",
        description="GET /.well-known/jwks.json: the public signing keys",
        server="ironcart",
        path="/.well-known/jwks.json",
    ),
    Case(
        key="m",
        name="IronCart /me",
        description=(
            "GET /api/v1/me with a valid bearer token: EdDSA token verification "
            "and one user read from PostgreSQL"
        ),
        server="ironcart",
        path="/api/v1/me",
        auth=True,
    ),
]

# -- catalog and cart cases: setups write the URLs/carts wrk's Lua picks from ---------------------


def _rows(ctx: Any, query: str, *args: Any) -> list[Any]:
    import asyncio

    import asyncpg

    async def fetch() -> list[Any]:
        connection = await asyncpg.connect(ctx.database_url)
        try:
            return list(await connection.fetch(query, *args))
        finally:
            await connection.close()

    return asyncio.run(fetch())


def _write_lines(ctx: Any, name: str, lines: list[str]) -> str:
    import tempfile

    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - wrk reads it after we return
        "w",
        prefix=f"bench-{name}-",
        suffix=".txt",
        delete=False,
        dir=ctx.env.get("BENCH_WORKDIR"),  # the run's work dir, removed at the end
    )
    with handle:
        handle.write("\n".join(lines) + "\n")
    return handle.name


def _product_pages(count: int) -> Callable[[Any], None]:
    def setup(ctx: Any) -> None:
        rows = _rows(
            ctx, "SELECT id FROM catalog_products WHERE published ORDER BY md5(id) LIMIT $1", count
        )
        ctx.env["BENCH_PATHS"] = _write_lines(
            ctx, "products", [f"/api/v1/products/{row['id']}" for row in rows]
        )

    return setup


def _searches(ctx: Any) -> None:
    from ironcart.catalog.seed import ADJECTIVES, CATALOG_TREE, MATERIALS

    kinds = [kind for kinds in CATALOG_TREE.values() for kind in kinds]
    words = [f"{a} {k}" for a in ADJECTIVES for k in kinds[:12]]
    words += [f"{m} {k}" for m in MATERIALS for k in kinds[12:24]]
    ctx.env["BENCH_PATHS"] = _write_lines(
        ctx, "searches", ["/api/v1/products?q=" + w.lower().replace(" ", "+") for w in words]
    )


def _carts(ctx: Any) -> None:
    import json

    skus = _rows(
        ctx,
        "SELECT s.sku FROM inventory_stock_levels s "
        "JOIN catalog_variants v ON v.sku = s.sku "
        "JOIN catalog_products p ON p.id = v.product_id AND p.published "
        "WHERE s.on_hand - s.reserved > 50 ORDER BY md5(s.sku) LIMIT 5000",
    )
    carts = []
    for _ in range(1000):
        status, body = ctx.http("POST", "/api/v1/carts")
        if status != 201:
            raise RuntimeError(f"creating a bench cart: HTTP {status}: {body[:200]!r}")
        answer = json.loads(body)
        carts.append(f"{answer['id']} {answer['token']}")
    ctx.env["BENCH_CARTS"] = _write_lines(ctx, "carts", carts)
    ctx.env["BENCH_SKUS"] = _write_lines(ctx, "skus", [row["sku"] for row in skus])


CASES += [
    Case(
        key="b",
        name="product detail, cache warm",
        description=(
            "GET /api/v1/products/{id}: 1,000 products picked at random from 100,000, "
            "answered from the in-process cache by the pure-ASGI fast path"
        ),
        server="ironcart",
        path="/api/v1/products",
        script="paths.lua",
        setup=_product_pages(1000),
    ),
    Case(
        key="d",
        name="listing page 1, filtered",
        description="GET /api/v1/products?category=footwear&sort=price (cached listing)",
        server="ironcart",
        path="/api/v1/products?category=footwear&sort=price",
    ),
    Case(
        key="e",
        name="full-text search",
        description=(
            "GET /api/v1/products?q=<two words>: 384 distinct searches over 100,000 products, "
            "the listing cache on as in production"
        ),
        server="ironcart",
        path="/api/v1/products?q=walnut+kettle",
        script="paths.lua",
        setup=_searches,
    ),
    Case(
        key="f",
        name="add to cart",
        description=(
            "POST /api/v1/carts/{id}/items: one unit of a random in-stock SKU into one of "
            "1,000 anonymous carts (catalog price and stock checks, optimistic cart version)"
        ),
        server="ironcart",
        path="/api/v1/products",
        script="add_to_cart.lua",
        setup=_carts,
    ),
    Case(
        key="c",
        name="product detail, cache off",
        description=(
            "GET /api/v1/products/{id}: 20,000 products at random, catalog cache disabled: "
            "one PostgreSQL query (product, variants, availability) a request"
        ),
        server="ironcart-nocache",
        path="/api/v1/products",
        script="paths.lua",
        setup=_product_pages(20000),
    ),
    Case(
        key="e2",
        name="full-text search, cache off",
        description="the searches of case e, every one run on PostgreSQL (GIN index, ts_rank)",
        server="ironcart-nocache",
        path="/api/v1/products?q=walnut+kettle",
        script="paths.lua",
        setup=_searches,
    ),
]

# -- checkout: the whole purchase against the sandbox PSP, and its PostgreSQL ceiling -------------

CHECKOUT_BUYERS = 32
CHECKOUT_SKUS = 1000
CHECKOUT_STOCK = 100_000  # units available per SKU after the top-up: far more than a run sells
HOT_STOCK = 10_000_000


def _top_up(ctx: Any, skus: list[str], available: int) -> None:
    """Bring each SKU's main-warehouse level to `available` units free to reserve.

    A receipt in the ledger for each change, as goods-in would write it, so that
    `ironcart inventory reconcile` still finds every level equal to its movements.
    """
    _rows(
        ctx,
        """
        WITH old AS (
            SELECT s.sku, s.warehouse_id, s.on_hand, s.reserved
            FROM inventory_stock_levels s
            JOIN inventory_warehouses w ON w.id = s.warehouse_id AND w.code = 'main'
            WHERE s.sku = ANY($1::text[]) AND s.on_hand - s.reserved < $2
            FOR UPDATE OF s
        ), up AS (
            UPDATE inventory_stock_levels s
            SET on_hand = old.reserved + $2, version = s.version + 1, updated_at = now()
            FROM old
            WHERE s.sku = old.sku AND s.warehouse_id = old.warehouse_id
            RETURNING s.sku, s.warehouse_id, s.on_hand - old.on_hand AS delta
        )
        INSERT INTO inventory_movements
            (sku, warehouse_id, kind, on_hand_delta, reserved_delta, reason, reference, created_at)
        SELECT sku, warehouse_id, 'receipt', delta, 0, 'make bench: checkout stock',
               'bench-top-up', now()
        FROM up
        RETURNING sku
        """,
        skus,
        available,
    )


def _checkout_skus(count: int, available: int) -> Callable[[Any], None]:
    """SKUs of published products with a main-warehouse level, topped up to `available`."""

    def setup(ctx: Any) -> None:
        rows = _rows(
            ctx,
            "SELECT s.sku FROM inventory_stock_levels s "
            "JOIN inventory_warehouses w ON w.id = s.warehouse_id AND w.code = 'main' "
            "JOIN catalog_variants v ON v.sku = s.sku "
            "JOIN catalog_products p ON p.id = v.product_id AND p.published "
            "ORDER BY md5(s.sku) LIMIT $1",
            count,
        )
        skus = [row["sku"] for row in rows]
        if len(skus) < count:
            raise RuntimeError(f"the seeded catalog has {len(skus)} SKUs in stock, not {count}")
        _top_up(ctx, skus, available)
        ctx.env["BENCH_SKUS"] = _write_lines(ctx, "checkout-skus", skus)

    return setup


# One order transaction as IronCart's checkout writes it at least: the conditional stock update,
# the order and its line, in one transaction, prepared statements, on tables of its own.
PGBENCH_TABLES = """
CREATE SCHEMA IF NOT EXISTS bench;
DROP TABLE IF EXISTS bench.pgb_order_lines, bench.pgb_orders, bench.pgb_stock;
CREATE TABLE bench.pgb_stock (
    sku varchar(64) PRIMARY KEY,
    on_hand integer NOT NULL,
    reserved integer NOT NULL DEFAULT 0,
    version integer NOT NULL DEFAULT 1,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (on_hand >= reserved)
);
CREATE TABLE bench.pgb_orders (
    id uuid PRIMARY KEY,
    customer_id integer NOT NULL,
    status varchar(32) NOT NULL,
    total_minor bigint NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE bench.pgb_order_lines (
    order_id uuid NOT NULL REFERENCES bench.pgb_orders (id),
    line_no integer NOT NULL,
    sku varchar(64) NOT NULL,
    quantity integer NOT NULL,
    unit_price_minor bigint NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
INSERT INTO bench.pgb_stock (sku, on_hand)
SELECT 'PGB-' || g, 10000000 FROM generate_series(1, 1000) AS g;
ANALYZE bench.pgb_stock;
"""

PGBENCH_SCRIPT = """\\set n {pick}
\\set customer random(1, 32)
BEGIN;
UPDATE bench.pgb_stock SET on_hand = on_hand - 1, version = version + 1, updated_at = now()
  WHERE sku = 'PGB-' || :n::integer AND on_hand - reserved >= 1;
INSERT INTO bench.pgb_orders (id, customer_id, status, total_minor, created_at)
  VALUES (gen_random_uuid(), :customer, 'paid', 2499, now()) RETURNING id AS order_id \\gset
INSERT INTO bench.pgb_order_lines (order_id, line_no, sku, quantity, unit_price_minor)
  VALUES (:order_id, 1, 'PGB-' || :n::integer, 1, 1999);
END;
"""


def _pgbench_order(pick: str) -> Callable[[Any], None]:
    def setup(ctx: Any) -> None:
        import asyncio

        import asyncpg

        async def create() -> None:
            connection = await asyncpg.connect(ctx.database_url)
            try:
                await connection.execute(PGBENCH_TABLES)
            finally:
                await connection.close()

        asyncio.run(create())
        ctx.env["BENCH_PGBENCH_SCRIPT"] = _write_lines(
            ctx, "pgbench-order", [PGBENCH_SCRIPT.format(pick=pick)]
        )

    return setup


CASES += [
    Case(
        key="pgbench",
        name="pgbench order txn",
        description=(
            "pgbench, 32 clients, prepared statements: one order transaction a time "
            "(conditional stock UPDATE `on_hand - reserved >= 1` of a random SKU of 1,000, "
            "order INSERT, line INSERT) on tables of its own: the order-write ceiling of this "
            "PostgreSQL"
        ),
        server="pgbench",
        driver="pgbench",
        clients=CHECKOUT_BUYERS,
        setup=_pgbench_order("random(1, 1000)"),
        preflight=False,
    ),
    Case(
        key="pgbench-hot",
        name="pgbench order txn, one SKU",
        description=(
            "the same transaction with every client on one SKU: the row lock of the hot stock "
            "row serialises the transactions"
        ),
        server="pgbench",
        driver="pgbench",
        clients=CHECKOUT_BUYERS,
        setup=_pgbench_order("1"),
        preflight=False,
    ),
    Case(
        key="checkout",
        name="checkout",
        description=(
            "32 buyers (customer accounts), each looping: POST /api/v1/carts (its open cart), "
            "POST /api/v1/carts/{id}/items (one unit of a random SKU of 1,000, each with "
            f"{CHECKOUT_STOCK:,} units), POST /api/v1/orders from the cart with a fresh "
            "Idempotency-Key: TCC over inventory (reserve, commit), payments (authorize, "
            "capture at the sandbox PSP over HTTP) and the order"
        ),
        server="ironcart-checkout",
        driver="checkout",
        clients=CHECKOUT_BUYERS,
        setup=_checkout_skus(CHECKOUT_SKUS, CHECKOUT_STOCK),
        preflight=False,
    ),
    Case(
        key="checkout-hot",
        name="checkout, one hot SKU",
        description=(
            f"the checkout flow with all 32 buyers on one SKU ({HOT_STOCK:,} units): every "
            "reservation and sale updates the same stock row"
        ),
        server="ironcart-checkout",
        driver="checkout",
        clients=CHECKOUT_BUYERS,
        setup=_checkout_skus(1, HOT_STOCK),
        preflight=False,
    ),
]

# The ratio columns of the report: every case's req/s divided by these cases' req/s.
REFERENCES: tuple[str, ...] = ("a", "a2")

# When a server has several variants (uvicorn or granian; 2 or 3 workers), every variant runs
# this case, the fastest (median req/s) is kept and serves the server's other cases.
VARIANT_CASE: dict[str, str] = {"raw": "a2", "ironcart": "m", "ironcart-checkout": "checkout"}

# The ceiling the checkout cases (and pgbench-hot) are divided by in the report's checkout table.
CHECKOUT_REFERENCE = "pgbench"
