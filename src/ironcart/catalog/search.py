"""Product listing and full-text search with keyset pagination, per database dialect.

Full-text search uses each database's own engine:
- PostgreSQL: a stored, weighted `tsvector` column (name A, description B) with a GIN index;
- SQLite: the FTS5 table `catalog_products_fts`, kept in step by triggers;
- MariaDB/MySQL: a FULLTEXT index on (name, description), natural-language mode.
Pagination is keyset ("search after"): each page costs the same, page 1 or page 1,000.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    String,
    and_,
    bindparam,
    column,
    exists,
    func,
    literal_column,
    select,
    text,
    true,
    tuple_,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select

from ironcart.catalog.domain import ListingQuery, Sort
from ironcart.catalog.repository import collection_products, product_attributes, products

_WORD = re.compile(r"\w+", re.UNICODE)

LISTING_COLUMNS = (
    products.c.id,
    products.c.slug,
    products.c.name,
    products.c.images,
    products.c.currency,
    products.c.min_price_minor,
    products.c.max_price_minor,
    products.c.in_stock,
    products.c.created_at,
)


@dataclass(frozen=True, slots=True)
class ListingPage:
    rows: list[dict[str, Any]]
    sort: Sort
    next_key: tuple[Any, str] | None


def _fts5_query(text_query: str) -> str:
    """Quote each word for FTS5 so user input can never be FTS syntax; all words must match."""
    return " ".join(f'"{word}"' for word in _WORD.findall(text_query)[:16])


def _search_score(dialect: str, words: str) -> tuple[ColumnElement[Any], Any, ColumnElement[bool]]:
    """(score expression, a subquery to join or None, the match condition) for `words`."""
    if dialect == "postgresql":
        query = func.websearch_to_tsquery(
            literal_column("'english'::regconfig"), bindparam("q", words)
        )
        # The stored, weighted `search_vector` column and its GIN index (migration 0003).
        document: ColumnElement[Any] = literal_column("catalog_products.search_vector")
        return func.ts_rank(document, query), None, document.op("@@")(query)
    if dialect == "sqlite":
        fts = (
            text(
                "SELECT product_id, -bm25(catalog_products_fts) AS score "
                "FROM catalog_products_fts WHERE catalog_products_fts MATCH :q"
            )
            .bindparams(q=_fts5_query(words))
            .columns(column("product_id", String), column("score", Float))
            .subquery("fts")
        )
        return fts.c.score, fts, true()
    relevance = mysql.match(
        products.c.name, products.c.description, against=bindparam("q", words)
    ).in_natural_language_mode()
    return relevance, None, relevance > 0


def _filtered(query: ListingQuery) -> Select[Any]:
    statement = select(*LISTING_COLUMNS).where(
        products.c.published.is_(True), products.c.min_price_minor.is_not(None)
    )
    if query.category_path:
        statement = statement.where(products.c.category_path.like(f"{query.category_path}%"))
    if query.collection_id:
        statement = statement.where(
            products.c.id.in_(
                select(collection_products.c.product_id).where(
                    collection_products.c.collection_id == query.collection_id
                )
            )
        )
    if query.min_price_minor is not None:
        statement = statement.where(products.c.min_price_minor >= query.min_price_minor)
    if query.max_price_minor is not None:
        statement = statement.where(products.c.min_price_minor <= query.max_price_minor)
    for name, value in query.attributes:
        statement = statement.where(
            exists().where(
                and_(
                    product_attributes.c.product_id == products.c.id,
                    product_attributes.c.name == name,
                    product_attributes.c.value == value,
                )
            )
        )
    if query.in_stock_only:
        statement = statement.where(products.c.in_stock.is_(True))
    return statement


def _ordered(
    statement: Select[Any], sort: Sort, score: ColumnElement[Any] | None, after: Any
) -> Select[Any]:
    if sort is Sort.RELEVANCE and score is not None:
        key: ColumnElement[Any] = score
        descending = True
    elif sort in (Sort.PRICE, Sort.PRICE_DESC):
        key, descending = products.c.min_price_minor, sort is Sort.PRICE_DESC
    else:
        key, descending = products.c.created_at, True
    if after is not None:
        position = tuple_(key, products.c.id)
        statement = statement.where(
            position < tuple_(*after) if descending else position > tuple_(*after)
        )
    if descending:
        return statement.order_by(key.desc(), products.c.id.desc())
    return statement.order_by(key.asc(), products.c.id.asc())


def listing_statement(dialect: str, query: ListingQuery) -> tuple[Select[Any], Sort]:
    """The one SELECT behind a listing page (exposed so tests can EXPLAIN the real query)."""
    statement = _filtered(query)
    sort = query.sort if query.text or query.sort is not Sort.RELEVANCE else Sort.NEWEST
    score: ColumnElement[Any] | None = None
    if query.text:
        score, join, condition = _search_score(dialect, query.text)
        if join is not None:
            statement = statement.join(join, join.c.product_id == products.c.id)
        statement = statement.where(condition).add_columns(score.label("score"))
    return _ordered(statement, sort, score, query.after).limit(query.limit + 1), sort


async def list_products(session: AsyncSession, query: ListingQuery) -> ListingPage:
    """One page of published products matching `query`, and the key to continue after it."""
    if query.text is not None and not _WORD.search(query.text):
        return ListingPage(rows=[], sort=query.sort, next_key=None)
    statement, sort = listing_statement(session.get_bind().dialect.name, query)
    rows = [dict(row) for row in (await session.execute(statement)).mappings()]
    next_key = None
    if len(rows) > query.limit:
        rows = rows[: query.limit]
        last = rows[-1]
        next_key = (_sort_value(sort, last), last["id"])
    return ListingPage(rows=rows, sort=sort, next_key=next_key)


def _sort_value(sort: Sort, row: dict[str, Any]) -> Any:
    if sort is Sort.RELEVANCE:
        return float(row["score"])
    if sort in (Sort.PRICE, Sort.PRICE_DESC):
        return int(row["min_price_minor"])
    return row["created_at"]
