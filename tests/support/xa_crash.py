"""One XA transaction in a process of its own that SIGKILLs itself at a crash point.

    python -m tests.support.xa_crash ORDERS_URL INVENTORY_URL PREFIX MARKER CRASH_POINT

Each branch inserts (MARKER, side) into `xa_probe` of its database; the coordinator logs
in the orders database. The gid goes to stdout first, so the test knows what to look for
after the kill; an exit status other than -SIGKILL means the crash point was not reached.
"""

from __future__ import annotations

import asyncio
import sys

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ironcart.platform.database import create_engine
from ironcart.platform.txn.xa import BranchWork, XaBranch, XaCoordinator, xa_resource


def insert_probe(marker: str, side: str) -> BranchWork:
    async def work(connection: AsyncConnection) -> None:
        await connection.execute(
            text("INSERT INTO xa_probe (id, side) VALUES (:id, :side)"),
            {"id": marker, "side": side},
        )

    return work


async def main(orders_url: str, inventory_url: str, prefix: str, marker: str, point: str) -> None:
    orders = create_engine(orders_url, pool_size=2)
    inventory = create_engine(inventory_url, pool_size=2)
    resources = [xa_resource("orders", orders), xa_resource("inventory", inventory)]
    coordinator = XaCoordinator(
        orders, resources, gid_prefix=prefix, crash_points=frozenset({point})
    )
    gid = coordinator.new_gid()
    sys.stdout.write(gid + "\n")
    sys.stdout.flush()
    await coordinator.execute(
        [
            XaBranch("orders", resources[0], insert_probe(marker, "orders")),
            XaBranch("inventory", resources[1], insert_probe(marker, "inventory")),
        ],
        kind="crash-test",
        payload={"marker": marker},
        gid=gid,
    )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
