"""Searching the stored vectors: the ``k`` nearest chunks of one (model, dimensions).

While the index holds rows the fallback model wrote during an outage (``db/fallback.py``),
:func:`search_models` searches each model's rows with the query embedded by that model.

Filtered searches (a key ``prefix``) use pgvector 0.8's iterative index scans where the
server has them: with a plain HNSW scan the filter is applied to the ``hnsw.ef_search``
(default 40) candidates the index returns, so a selective prefix can leave fewer than ``k``
rows, or none; an iterative scan keeps scanning the graph until ``k`` rows pass the filter
(pgvector README, "Iterative index scans",
https://github.com/pgvector/pgvector#iterative-index-scans). On pgvector 0.7 (RDS and
Aurora releases that predate 0.8) the query is the same without the setting.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """One nearest chunk: ``score`` is cosine similarity (1 = same direction) under
    ``model``; scores of different models are not comparable."""

    bucket: str
    key: str
    chunk_index: int
    score: float
    text: str
    model: str = ""


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
        SearchHit(
            bucket=r[0], key=r[1], chunk_index=r[2], score=float(r[3]), text=r[4], model=model
        )
        for r in rows
    ]


def fallback_models(conn: Conn) -> list[tuple[str, int]]:
    """The (model, dimensions) of the rows the fallback wrote during an outage and the
    provider has not replaced yet (``db/fallback.py``); [] when there are none."""
    rows = conn.execute(
        sql.SQL(
            "SELECT DISTINCT model, dimensions FROM {schema}.fallback_documents ORDER BY 1, 2"
        ).format(schema=sql.Identifier(SCHEMA))
    ).fetchall()
    return [(str(r[0]), int(r[1])) for r in rows]


def search_models(
    conn: Conn,
    embed_query: Callable[[str, int], np.ndarray[Any, Any]],
    *,
    model: str,
    dimensions: int,
    k: int = 5,
    prefix: str = "",
    unavailable: tuple[type[Exception], ...] = (),
) -> list[SearchHit]:
    """Search the rows of (``model``, ``dimensions``) and those of every fallback model
    still in the index, each with the query embedded by its own model.

    Args:
        embed_query: ``(model, dimensions) -> query vector``; called once per model
            searched (the local model for ``local-minilm``, the provider for the rest).
        unavailable: errors of ``embed_query`` that skip that model's rows (the provider
            does not answer) as long as another model is searched.

    Raises:
        Exception: what ``embed_query`` raised, when no model could be searched.

    Returns:
        The ``k`` nearest hits of the configured model, then the ``k`` nearest of each
        fallback model (documents written with the fallback during an outage, see the
        README's degraded mode), each hit naming its model. Scores are compared within a
        model only: a smaller model's cosine is on another scale.
    """
    models = [(model, dimensions)]
    models += [m for m in fallback_models(conn) if m != (model, dimensions)]
    hits: list[SearchHit] = []
    skipped: Exception | None = None
    searched = 0
    for name, dims in models:
        try:
            vector = embed_query(name, dims)
        except unavailable as exc:
            skipped = exc
            continue
        hits += search(conn, vector, model=name, dimensions=dims, k=k, prefix=prefix)
        searched += 1
    if skipped is not None and not searched:
        raise skipped
    return hits
