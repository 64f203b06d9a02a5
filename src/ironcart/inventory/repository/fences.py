"""Inventory's TCC participant fences (`platform.txn.fence` over `inventory_tcc_fences`).

Each call runs in the unit of work's transaction, so a fence move commits or rolls back
together with the stock it guards.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from ironcart.inventory.repository.tables import tcc_fences
from ironcart.platform.txn.fence import begin_cancel, begin_confirm, begin_try


class SqlFenceRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def begin_try(self, xid: str, *, branch: str) -> bool:
        """True: first try. False: tried before. `Suspended`: cancelled before its try."""
        return await begin_try(self._session, tcc_fences, xid=xid, branch=branch)

    async def begin_confirm(self, xid: str, *, branch: str) -> bool:
        """True: first confirm. False: confirmed before. `FenceConflict`: cancelled or untried."""
        return await begin_confirm(self._session, tcc_fences, xid=xid, branch=branch)

    async def begin_cancel(self, xid: str, *, branch: str) -> bool:
        """True: undo the try. False: nothing to undo (recorded). `FenceConflict`: confirmed."""
        return await begin_cancel(self._session, tcc_fences, xid=xid, branch=branch)
