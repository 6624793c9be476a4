"""Searching the stored vectors: the ``k`` nearest chunks of one (model, dimensions).

Filtered searches (a key ``prefix``) use pgvector 0.8's iterative index scans where the
server has them: with a plain HNSW scan the filter is applied to the ``hnsw.ef_search``
(default 40) candidates the index returns, so a selective prefix can leave fewer than ``k``
rows, or none; an iterative scan keeps scanning the graph until ``k`` rows pass the filter
(pgvector README, "Iterative index scans",
https://github.com/pgvector/pgvector#iterative-index-scans). On pgvector 0.7 (RDS and
Aurora releases that predate 0.8) the query is the same without the setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from .schema import SCHEMA, pgvector_version, uses_halfvec, vector_type

Conn = psycopg.Connection[tuple[Any, ...]]

#: ``hnsw.iterative_scan`` mode for filtered searches: results in exact distance order
#: (``relaxed_order`` may return them slightly out of order; pgvector README).
ITERATIVE_SCAN = "strict_order"


@dataclass(frozen=True)
class SearchHit:
    """One nearest chunk: ``score`` is cosine similarity (1 = same direction)."""

    bucket: str
    key: str
    chunk_index: int
    score: float
    text: str


def search(
    conn: Conn,
    query: np.ndarray[Any, Any],
    *,
    model: str,
    dimensions: int,
    k: int = 5,
    prefix: str = "",
) -> list[SearchHit]:
    """The ``k`` chunks of (model, dimensions) nearest to ``query`` by cosine distance,
    only among objects whose key starts with ``prefix`` (all when empty).

    Args:
        query: a float vector of ``dimensions`` (float32 is sent).

    The ORDER BY expression matches the HNSW expression index (``halfvec(D)`` above 2,000
    dimensions, ``db/index.py``), so the index is used once valid; until then (or on a
    server without it) the query is an exact scan with the same results. With a prefix
    and pgvector >= 0.8 the scan is iterative (module docstring), in a transaction so that
    ``SET LOCAL`` ends with it.
    """
    halfvec = uses_halfvec(conn, dimensions)
    vtype = vector_type(dimensions, halfvec)
    query_sql = sql.SQL(
        "SELECT source_bucket, source_key, chunk_index, "
        "1 - (embedding::{vtype} <=> %(q)s::{vtype}) AS score, text "
        "FROM {schema}.chunks WHERE model = %(model)s AND dimensions = %(dims)s "
        "AND starts_with(source_key, %(prefix)s) "
        "ORDER BY embedding::{vtype} <=> %(q)s::{vtype} LIMIT %(k)s"
    ).format(vtype=vtype, schema=sql.Identifier(SCHEMA))
    params = {
        "q": np.asarray(query, dtype=np.float32),
        "model": model,
        "dims": dimensions,
        "k": k,
        "prefix": prefix,
    }
    with conn.transaction():
        if prefix and pgvector_version(conn) >= (0, 8):
            conn.execute(
                sql.SQL("SET LOCAL hnsw.iterative_scan = {}").format(sql.Literal(ITERATIVE_SCAN))
            )
        rows = conn.execute(query_sql, params).fetchall()
    return [
        SearchHit(bucket=r[0], key=r[1], chunk_index=r[2], score=float(r[3]), text=r[4])
        for r in rows
    ]
