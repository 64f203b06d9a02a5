"""Every table of every context on the shared `metadata` (Alembic's env and the migration
tests compare the migrations with it): importing a context's repository registers its tables."""

from __future__ import annotations

import ironcart.cart.repository
import ironcart.catalog.repository
import ironcart.identity.repository
import ironcart.inventory.repository
import ironcart.ordering.repository
import ironcart.payments.repository
import ironcart.platform.txn.tables
import ironcart.platform.txn.xa.log
import ironcart.shipping.repository  # noqa: F401 - each import registers its tables
from ironcart.platform.database import metadata

__all__ = ["metadata"]
