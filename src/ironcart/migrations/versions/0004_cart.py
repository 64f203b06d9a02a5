"""cart

Revision ID: 0004_cart
Revises: 0003_catalog
Create Date: 2026-11-25 14:11:51.628454
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0004_cart"
down_revision: str | None = "0003_catalog"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of platform.database.Timestamp: migrations never import application code.
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "cart_carts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("token_digest", sa.String(length=64), nullable=True),
        sa.Column("owner_id", sa.String(length=36), nullable=True),
        sa.Column("open_owner_id", sa.String(length=36), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("merged_into", sa.String(length=36), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cart_carts")),
        sa.UniqueConstraint("open_owner_id", name=op.f("uq_cart_carts_open_owner_id")),
        sa.UniqueConstraint("token_digest", name=op.f("uq_cart_carts_token_digest")),
    )
    with op.batch_alter_table("cart_carts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_cart_carts_owner_id_updated_at", ["owner_id", "updated_at"], unique=False
        )

    op.create_table(
        "cart_lines",
        sa.Column("cart_id", sa.String(length=36), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("price_seen_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("available_seen", sa.Integer(), nullable=False),
        sa.Column("added_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_cart_lines_quantity_positive")),
        sa.ForeignKeyConstraint(
            ["cart_id"],
            ["cart_carts.id"],
            name=op.f("fk_cart_lines_cart_id_cart_carts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("cart_id", "sku", name=op.f("pk_cart_lines")),
    )


def downgrade() -> None:
    # Dropping a table drops its indexes; MySQL refuses to drop an index a foreign key uses.
    for table in ("cart_lines", "cart_carts"):
        op.drop_table(table)
