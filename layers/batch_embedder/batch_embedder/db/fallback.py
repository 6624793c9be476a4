"""Objects written with the fallback model while the provider did not answer.

Table ``fallback_documents`` (migration 6, ``db/schema.py``), one row per (bucket, object
key) whose rows in ``chunks`` carry the fallback model (``local-minilm``, 384 dimensions)
instead of the configured one (``FALLBACK_PROVIDER=local``, ``steps/fallback.py``):

- EmbedSync records the group's objects when it embeds them with the fallback
  (:func:`record`);
- the reconciler, once the provider answers, re-submits each one (:func:`due`,
  :func:`mark_resubmitted`) as an upload event of its current S3 version, after removing
  the object's fingerprints so that the upload is not skipped as unchanged
  (:func:`forget_fingerprints`);
- the primary model's write of the object (``db/vectors.py``, ``ChunkWriter.merge``)
  deletes the object's fallback rows and its row here, in the same transaction
  (:func:`remove_replaced`). Readers see the fallback rows or the primary ones, never
  neither.

An object deleted meanwhile is dropped from the table (:func:`forget`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from .schema import SCHEMA

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True)
class FallbackDocument:
    """One object whose stored rows are the fallback model's.

    Attributes:
        bucket: the source bucket.
        object_key: the S3 key (a bundle's documents share it).
        model: the fallback model of its rows (``local-minilm``).
        dimensions: their dimensions (384).
        sequencer: the S3 sequencer of the event its rows come from (``objects``), '' when
            unknown.
        resubmissions: times the reconciler has re-submitted it.
    """

    bucket: str
    object_key: str
    model: str
    dimensions: int
    sequencer: str
    resubmissions: int


def record(
    conn: Conn,
    *,
    bucket: str,
    object_keys: Iterable[str],
    model: str,
    dimensions: int,
    primary_model: str,
    primary_dimensions: int,
    job_id: str,
    hold: bool = False,
) -> int:
    """Record ``object_keys`` as written with the fallback ``model`` (idempotent: a row
    already there is refreshed and may be re-submitted again).

    Args:
        hold: count the objects as just re-submitted (their own group re-embeds them with
            the provider once it answers; :func:`due` returns them only if it has not
            after ``every_seconds``).

    Returns:
        Rows inserted or refreshed.
    """
    keys = sorted(set(object_keys))
    if not keys:
        return 0
    with conn.transaction():
        return conn.execute(
            sql.SQL(
                "INSERT INTO {schema}.fallback_documents (source_bucket, object_key, model, "
                "dimensions, primary_model, primary_dimensions, job_id, resubmitted_at) "
                "SELECT %(bucket)s, k, %(model)s, %(dims)s, %(pmodel)s, %(pdims)s, %(job)s, "
                "CASE WHEN %(hold)s THEN now() END FROM unnest(%(keys)s::text[]) AS k "
                "ON CONFLICT (source_bucket, object_key) DO UPDATE SET model = EXCLUDED.model, "
                "dimensions = EXCLUDED.dimensions, primary_model = EXCLUDED.primary_model, "
                "primary_dimensions = EXCLUDED.primary_dimensions, job_id = EXCLUDED.job_id, "
                "created_at = now(), resubmitted_at = EXCLUDED.resubmitted_at"
            ).format(schema=sql.Identifier(SCHEMA)),
            {
                "bucket": bucket,
                "model": model,
                "dims": dimensions,
                "pmodel": primary_model,
                "pdims": primary_dimensions,
                "job": job_id,
                "keys": keys,
                "hold": hold,
            },
        ).rowcount


def due(conn: Conn, *, every_seconds: int, limit: int = 500) -> list[FallbackDocument]:
    """The objects to re-submit now: never re-submitted, or last re-submitted more than
    ``every_seconds`` ago (the re-embedding got lost), oldest first, at most ``limit``."""
    rows = conn.execute(
        sql.SQL(
            "SELECT f.source_bucket, f.object_key, f.model, f.dimensions, "
            "coalesce(o.sequencer, ''), f.resubmissions FROM {schema}.fallback_documents f "
            "LEFT JOIN {schema}.objects o ON o.source_bucket = f.source_bucket "
            "AND o.object_key = f.object_key "
            "WHERE f.resubmitted_at IS NULL "
            "OR f.resubmitted_at < now() - make_interval(secs => %(every)s) "
            "ORDER BY f.created_at LIMIT %(limit)s"
        ).format(schema=sql.Identifier(SCHEMA)),
        {"every": every_seconds, "limit": limit},
    ).fetchall()
    return [
        FallbackDocument(
            bucket=str(r[0]),
            object_key=str(r[1]),
            model=str(r[2]),
            dimensions=int(r[3]),
            sequencer=str(r[4]),
            resubmissions=int(r[5]),
        )
        for r in rows
    ]


def mark_resubmitted(conn: Conn, bucket: str, object_key: str) -> None:
    """Note that the reconciler has sent the object's upload event again."""
    _for_object(
        conn,
        "UPDATE {schema}.fallback_documents SET resubmitted_at = now(), "
        "resubmissions = resubmissions + 1 WHERE source_bucket = %s AND object_key = %s",
        bucket,
        object_key,
    )


def forget_fingerprints(conn: Conn, bucket: str, object_key: str) -> int:
    """Remove the object's fingerprints (``db/fingerprints.py``), so that its re-submitted
    upload is chunked and embedded again instead of being skipped as unchanged.

    Returns:
        Fingerprints removed.
    """
    return _for_object(
        conn,
        "DELETE FROM {schema}.object_fingerprints WHERE source_bucket = %s AND object_key = %s",
        bucket,
        object_key,
    )


def forget(conn: Conn, bucket: str, object_key: str) -> None:
    """Drop the object from the table (it was deleted from S3: nothing to re-embed)."""
    _for_object(
        conn,
        "DELETE FROM {schema}.fallback_documents WHERE source_bucket = %s AND object_key = %s",
        bucket,
        object_key,
    )


def _for_object(conn: Conn, statement: LiteralString, bucket: str, object_key: str) -> int:
    """Run ``statement`` (``{schema}``, then ``%s`` for the bucket and the key) in its own
    transaction; returns the rows it touched."""
    with conn.transaction():
        return conn.execute(
            sql.SQL(statement).format(schema=sql.Identifier(SCHEMA)), (bucket, object_key)
        ).rowcount


def remove_replaced(conn: Conn, *, bucket: str, model: str, dimensions: int) -> int:
    """Inside a ``ChunkWriter`` merge of (``model``, ``dimensions``): for every object the
    merge wrote (the ``_final`` staging table), delete its rows of another model recorded
    here as the fallback's, and its row here. Runs in the caller's transaction.

    Returns:
        Fallback rows deleted from ``chunks``.
    """
    schema = sql.Identifier(SCHEMA)
    return conn.execute(
        sql.SQL(
            "WITH gone AS (DELETE FROM {schema}.fallback_documents f "
            "WHERE f.source_bucket = %(bucket)s "
            "AND f.object_key IN (SELECT DISTINCT object_key FROM _final) "
            "AND (f.model, f.dimensions) IS DISTINCT FROM (%(model)s, %(dims)s) "
            "RETURNING f.object_key, f.model, f.dimensions) "
            "DELETE FROM {schema}.chunks c USING gone g WHERE c.source_bucket = %(bucket)s "
            "AND c.object_key = g.object_key AND c.model = g.model "
            "AND c.dimensions = g.dimensions"
        ).format(schema=schema),
        {"bucket": bucket, "model": model, "dims": dimensions},
    ).rowcount
