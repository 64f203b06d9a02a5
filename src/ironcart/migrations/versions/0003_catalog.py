"""catalog

Revision ID: 0003_catalog
Revises: 0002_inventory
Create Date: 2026-11-25 13:56:50.247079
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0003_catalog"
down_revision: str | None = "0002_inventory"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of platform.database.Timestamp: migrations never import application code.
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "catalog_categories",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("parent_id", sa.String(length=36), nullable=True),
        sa.Column("slug", sa.String(length=120), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["catalog_categories.id"],
            name=op.f("fk_catalog_categories_parent_id_catalog_categories"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_categories")),
        sa.UniqueConstraint("slug", name=op.f("uq_catalog_categories_slug")),
    )
    with op.batch_alter_table("catalog_categories", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_catalog_categories_path"), ["path"], unique=False)

    op.create_table(
        "catalog_collections",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("slug", sa.String(length=120), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_collections")),
        sa.UniqueConstraint("slug", name=op.f("uq_catalog_collections_slug")),
    )
    op.create_table(
        "catalog_products",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("slug", sa.String(length=120), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.Column("category_id", sa.String(length=36), nullable=True),
        sa.Column("category_path", sa.String(length=512), nullable=True),
        sa.Column("images", sa.Text(), nullable=False),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("min_price_minor", sa.BigInteger(), nullable=True),
        sa.Column("max_price_minor", sa.BigInteger(), nullable=True),
        sa.Column("in_stock", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["category_id"],
            ["catalog_categories.id"],
            name=op.f("fk_catalog_products_category_id_catalog_categories"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_products")),
        sa.UniqueConstraint("slug", name=op.f("uq_catalog_products_slug")),
    )
    with op.batch_alter_table("catalog_products", schema=None) as batch_op:
        batch_op.create_index(
            "ix_catalog_products_category_path", ["category_path", "published"], unique=False
        )
        batch_op.create_index(
            "ix_catalog_products_listing_newest", ["published", "created_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_catalog_products_listing_price",
            ["published", "min_price_minor", "id"],
            unique=False,
        )

    op.create_table(
        "catalog_collection_products",
        sa.Column("collection_id", sa.String(length=36), nullable=False),
        sa.Column("product_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["catalog_collections.id"],
            name=op.f("fk_catalog_collection_products_collection_id_catalog_collections"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["catalog_products.id"],
            name=op.f("fk_catalog_collection_products_product_id_catalog_products"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "collection_id", "product_id", name=op.f("pk_catalog_collection_products")
        ),
    )
    with op.batch_alter_table("catalog_collection_products", schema=None) as batch_op:
        batch_op.create_index(
            "ix_catalog_collection_products_product", ["product_id"], unique=False
        )

    op.create_table(
        "catalog_product_attributes",
        sa.Column("product_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["catalog_products.id"],
            name=op.f("fk_catalog_product_attributes_product_id_catalog_products"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "product_id", "name", "value", name=op.f("pk_catalog_product_attributes")
        ),
    )
    with op.batch_alter_table("catalog_product_attributes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_catalog_product_attributes_lookup", ["name", "value", "product_id"], unique=False
        )

    op.create_table(
        "catalog_variants",
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("product_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("price_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("weight_grams", sa.Integer(), nullable=False),
        sa.Column("barcode", sa.String(length=64), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("available", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["catalog_products.id"],
            name=op.f("fk_catalog_variants_product_id_catalog_products"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sku", name=op.f("pk_catalog_variants")),
    )
    with op.batch_alter_table("catalog_variants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_catalog_variants_product_id"), ["product_id"], unique=False
        )
    _create_full_text_search()


# Full-text search, one engine per database; the queries are in catalog/search.py.
# A stored, weighted document: the name counts more than the description, and ranking reads
# the stored vector instead of re-parsing every matching row.
POSTGRES_DOCUMENT = (
    "setweight(to_tsvector('english'::regconfig, name), 'A') || "
    "setweight(to_tsvector('english'::regconfig, description), 'B')"
)
SQLITE_TRIGGERS = (
    """CREATE TRIGGER catalog_products_fts_insert AFTER INSERT ON catalog_products BEGIN
        INSERT INTO catalog_products_fts (product_id, name, description)
        VALUES (new.id, new.name, new.description);
    END""",
    """CREATE TRIGGER catalog_products_fts_update AFTER UPDATE OF name, description
        ON catalog_products BEGIN
        DELETE FROM catalog_products_fts WHERE product_id = old.id;
        INSERT INTO catalog_products_fts (product_id, name, description)
        VALUES (new.id, new.name, new.description);
    END""",
    """CREATE TRIGGER catalog_products_fts_delete AFTER DELETE ON catalog_products BEGIN
        DELETE FROM catalog_products_fts WHERE product_id = old.id;
    END""",
)


def _create_full_text_search() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(
            "ALTER TABLE catalog_products ADD COLUMN search_vector tsvector "
            f"GENERATED ALWAYS AS ({POSTGRES_DOCUMENT}) STORED"
        )
        op.execute(
            "CREATE INDEX ix_catalog_products_fts ON catalog_products USING gin (search_vector)"
        )
    elif dialect == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE catalog_products_fts USING fts5("
            "product_id UNINDEXED, name, description, tokenize='porter unicode61')"
        )
        for trigger in SQLITE_TRIGGERS:
            op.execute(trigger)
    else:
        op.execute(
            "CREATE FULLTEXT INDEX ix_catalog_products_fts ON catalog_products (name, description)"
        )


def _drop_full_text_search() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS catalog_products_fts_{name}")
        op.execute("DROP TABLE IF EXISTS catalog_products_fts")
    else:
        op.drop_index("ix_catalog_products_fts", table_name="catalog_products")
    if dialect == "postgresql":
        op.drop_column("catalog_products", "search_vector")


def downgrade() -> None:
    _drop_full_text_search()
    for table in (
        "catalog_collection_products",
        "catalog_product_attributes",
        "catalog_variants",
        "catalog_products",
        "catalog_collections",
        "catalog_categories",
    ):
        op.drop_table(table)
