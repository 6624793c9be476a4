"""Fingerprints of embedded objects: an upload that changes nothing ends before chunking.

ChunkAndEstimate records, for every object it accepts, a row of ``object_fingerprints``:
the object (bucket, key), the event's ``sequencer``, its version id, ETag and the SHA-256 of
its bytes, under a fingerprint of the settings that decide its chunks and vectors
(``settings_fingerprint``). The row says nothing by itself: it counts only while the
object's row in ``objects`` (written by ``db/vectors.py`` in the same transaction as the
chunks) holds the same sequencer, that is, while that event's chunks are what is stored.
A failed or over-budget group never writes ``objects``, so its rows never count; a later
edit or delete moves ``objects`` on, so the old rows stop counting.

The next group looks its keys up once (``confirmed``). An upload whose ETag (or, once read,
whose bytes) matches its confirmed row is *unchanged*: ``mark_unchanged`` moves the
object's sequencer to the new event (so an older event still in flight cannot overwrite
it) and records the new event's row; the document is neither decoded nor chunked, and
costs no token.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..settings import Settings
from .schema import SCHEMA

#: Bump when decoding or chunking changes what the same bytes give: every stored
#: fingerprint then stops matching and the next upload of each object is processed again.
PIPELINE_VERSION = 1

Conn = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """One object event as ChunkAndEstimate accepted it.

    Attributes:
        object_key: the S3 key.
        sequencer: the event's S3 sequencer, zero-padded (``records.sequencer_key``).
        version_id: the S3 version id, or the ETag in an unversioned bucket, or None.
        etag: the object's ETag without quotes (MD5 of the bytes for a single-part upload,
            https://docs.aws.amazon.com/AmazonS3/latest/API/API_Object.html), or None.
        content_sha256: hex SHA-256 of the object's bytes (64 characters).
    """

    object_key: str
    sequencer: str
    version_id: str | None
    etag: str | None
    content_sha256: str


def settings_fingerprint(settings: Settings) -> str:
    """Hex SHA-256 (32 characters) of what decides an object's chunks and vectors: the
    model, the dimensions, the chunk and overlap sizes (tokens), the JSON fields and CSV
    columns read, and ``PIPELINE_VERSION``."""
    decisive = {
        "model": settings.embedding_model,
        "dimensions": settings.dimensions,
        "chunk_tokens": settings.chunk_tokens,
        "overlap_tokens": settings.chunk_overlap_tokens,
        "json_fields": list(settings.json_fields()),
        "csv_columns": list(settings.csv_columns()),
        "pipeline": PIPELINE_VERSION,
    }
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:32]


def clean_etag(etag: str | None) -> str | None:
    """An ETag without its surrounding quotes (S3 events send it bare, GET quoted)."""
    return etag.strip('"') or None if etag else None


def _table() -> sql.Composed:
    return sql.SQL("{}.object_fingerprints").format(sql.Identifier(SCHEMA))


def confirmed(
    conn: Conn, bucket: str, keys: Iterable[str], settings: str
) -> dict[str, Fingerprint]:
    """The stored event of each of ``keys`` whose chunks are in place under ``settings``
    (a ``settings_fingerprint``): one query for the whole group.

    Returns:
        object key -> the fingerprint of the event ``objects`` holds; keys never embedded
        under these settings, deleted, or whose last write failed are absent.
    """
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    rows = conn.execute(
        sql.SQL(
            "SELECT f.object_key, f.sequencer, f.version_id, f.etag, f.content_sha256 "
            "FROM {fp} f JOIN {schema}.objects o ON o.source_bucket = f.source_bucket "
            "AND o.object_key = f.object_key AND o.sequencer = f.sequencer AND NOT o.deleted "
            "WHERE f.source_bucket = %s AND f.settings = %s AND f.object_key = ANY(%s)"
        ).format(fp=_table(), schema=sql.Identifier(SCHEMA)),
        (bucket, settings, wanted),
    ).fetchall()
    return {str(r[0]): Fingerprint(str(r[0]), str(r[1]), r[2], r[3], str(r[4])) for r in rows}


def mark_unchanged(
    conn: Conn, bucket: str, settings: str, pairs: Iterable[tuple[Fingerprint, Fingerprint]]
) -> set[str]:
    """Apply uploads that change nothing: each ``(stored, new)`` pair moves the object's
    sequencer from ``stored.sequencer`` to ``new.sequencer`` (when newer) and records
    ``new``; one transaction.

    Returns:
        The object keys applied. A key whose ``objects`` row no longer holds
        ``stored.sequencer`` (another group wrote it meanwhile) is left out: its upload
        must be processed.
    """
    pairs = [(old, new) for old, new in pairs if new.sequencer]
    if not pairs:
        return set()
    schema = sql.Identifier(SCHEMA)
    with conn.transaction():
        rows = conn.execute(
            sql.SQL(
                "UPDATE {schema}.objects o SET sequencer = GREATEST(o.sequencer, v.seq), "
                "version_id = CASE WHEN v.seq > o.sequencer THEN v.version ELSE o.version_id "
                "END, updated_at = now() "
                "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) "
                "AS v(object_key, old_seq, seq, version) "
                "WHERE o.source_bucket = %s AND o.object_key = v.object_key "
                "AND o.sequencer = v.old_seq AND NOT o.deleted RETURNING o.object_key"
            ).format(schema=schema),
            (
                [new.object_key for _, new in pairs],
                [old.sequencer for old, _ in pairs],
                [new.sequencer for _, new in pairs],
                [new.version_id for _, new in pairs],
                bucket,
            ),
        ).fetchall()
        applied = {str(r[0]) for r in rows}
        record(conn, bucket, settings, [new for _, new in pairs if new.object_key in applied])
    return applied


def record(conn: Conn, bucket: str, settings: str, prints: list[Fingerprint]) -> None:
    """Store ``prints`` (events accepted under ``settings``) and drop the rows of their
    objects that can never count again (older than the event ``objects`` holds).
    Idempotent: a retried step stores nothing twice."""
    if not prints:
        return
    keys = [p.object_key for p in prints]
    conn.execute(
        sql.SQL(
            "INSERT INTO {fp} (source_bucket, object_key, settings, sequencer, version_id, "
            "etag, content_sha256) SELECT %s, * FROM unnest(%s::text[], %s::text[], "
            "%s::text[], %s::text[], %s::text[], %s::text[]) ON CONFLICT DO NOTHING"
        ).format(fp=_table()),
        (
            bucket,
            keys,
            [settings] * len(prints),
            [p.sequencer for p in prints],
            [p.version_id for p in prints],
            [p.etag for p in prints],
            [p.content_sha256 for p in prints],
        ),
    )
    conn.execute(
        sql.SQL(
            "DELETE FROM {fp} f USING {schema}.objects o WHERE f.source_bucket = %s "
            "AND f.object_key = ANY(%s) AND o.source_bucket = f.source_bucket "
            "AND o.object_key = f.object_key AND f.sequencer < o.sequencer"
        ).format(fp=_table(), schema=sql.Identifier(SCHEMA)),
        (bucket, keys),
    )
