"""Writing a job's vectors (bulk binary COPY, one transaction) and searching them.

Each document of the job is replaced as a whole, atomically: chunks and vectors are COPY'd
into two temporary staging tables, checked for completeness, then merged into
``batch_embedder.chunks`` with one ``INSERT ... ON CONFLICT DO UPDATE`` (rows whose content
and vector are unchanged are left alone) and one ``DELETE`` of each document's chunks that
are no longer there. Readers see the old version or the new one, never a mix. Running it
twice leaves the same rows.

A merge that inserts many rows relative to the model's HNSW index is written without the
index, which is rebuilt after the commit (``db/index.py`` says when and how); every other
merge inserts into the index. A group is staged with one COPY of its chunks and one of its
vectors, whatever its number of documents. ``search`` lives in ``db/search.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from types import TracebackType
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from ..records import ChunkRow
from .fallback import remove_replaced
from .index import drop_for_load, ensure_index, should_bypass
from .schema import SCHEMA
from .search import SearchHit, search

__all__ = [
    "ChunkWriter",
    "SearchHit",
    "delete_document",
    "lock_object",
    "newer_objects",
    "search",
]

Conn = psycopg.Connection[tuple[Any, ...]]


class ChunkWriter:
    """Stage and merge a job's chunks and vectors (one or many documents) in one transaction.

    Use as a context manager; leaving it by an exception rolls everything back::

        with ChunkWriter(conn, bucket=b, lock_keys=ks, job_id=j, model=m, dimensions=d) as w:
            w.copy_chunks(rows)      # records.ChunkRow
            w.fill_from_cache()      # vectors from the content store
            incomplete = w.drop_incomplete()
            written, moved, deleted = w.merge()

    Vectors are keyed by content sha256 and come from the content store
    (``db/content.py``), where every vector is kept the moment it is paid for;
    ``copy_vectors`` stages vectors directly (benchmarks).

    When the block ends without an exception, after the commit, the model's HNSW index is
    made sure of (``db/index.ensure_index``): built when missing, or when ``merge`` loaded
    without it. ``rebuilt`` tells whether the merge went around the index.
    """

    def __init__(
        self,
        conn: Conn,
        *,
        bucket: str,
        lock_keys: list[str],
        job_id: str,
        model: str,
        dimensions: int,
    ) -> None:
        self.conn = conn
        self.bucket = bucket
        self.lock_keys = sorted(set(lock_keys))
        self.job_id = job_id
        self.model = model
        self.dimensions = dimensions
        self._stack = ExitStack()
        self.rebuilt = False

    @property
    def _params(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "model": self.model,
            "dims": self.dimensions,
            "job": self.job_id,
        }

    def __enter__(self) -> ChunkWriter:
        self._stack.enter_context(self.conn.transaction())
        # Writers of the same document queue up (locks taken in key order: no deadlock);
        # other documents proceed in parallel.
        self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) "
            "FROM unnest(%s::text[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
            ([f"{self.bucket}/{k}" for k in self.lock_keys],),
        )
        self.conn.execute(
            "CREATE TEMP TABLE _chunks (seq int PRIMARY KEY, source_key text, "
            "source_version text, chunk_index int, text text, sha256 text, token_count int, "
            "char_start int, char_end int, object_key text, sequencer text) ON COMMIT DROP"
        )
        self.conn.execute(
            "CREATE TEMP TABLE _vectors (sha256 text, embedding vector) ON COMMIT DROP"
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.__exit__(exc_type, exc, tb)
        if exc_type is None:
            ensure_index(self.conn, self.model, self.dimensions)

    def copy_chunks(self, rows: Iterable[ChunkRow]) -> int:
        """COPY the group's chunk rows into the staging table.

        Returns:
            Rows copied.
        """
        n = 0
        with self.conn.cursor().copy(
            "COPY _chunks (seq, source_key, source_version, chunk_index, text, sha256, "
            "token_count, char_start, char_end, object_key, sequencer) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(
                ["int4", "text", "text", "int4", "text", "text", "int4", "int4", "int4", "text",
                 "text"]
            )  # fmt: skip
            for r in rows:
                copy.write_row(
                    (r.seq, r.source_key, r.source_version, r.chunk_index, r.text, r.sha256,
                     r.token_count, r.char_start, r.char_end, r.object_key or r.source_key,
                     r.sequencer)
                )  # fmt: skip
                n += 1
        return n

    def copy_vectors(self, pairs: Iterable[tuple[str, np.ndarray[Any, Any]]]) -> int:
        """COPY ``(content sha256, embedding)`` pairs (float32 arrays of ``dimensions``).

        Returns:
            Vectors copied.

        Raises:
            ValueError: a vector has the wrong number of dimensions.
        """
        n = 0
        with self.conn.cursor().copy(
            "COPY _vectors (sha256, embedding) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "vector"])
            for sha, vector in pairs:
                if vector.shape != (self.dimensions,):
                    raise ValueError(
                        f"chunk {sha[:12]}: vector of {vector.shape[0]} dimensions, "
                        f"expected {self.dimensions}"
                    )
                copy.write_row((sha, vector))
                n += 1
        return n

    def fill_from_cache(self) -> int:
        """Stage the vectors of the content store (``db/content.py``) for the staged chunks.

        Returns:
            Distinct contents found in the store.
        """
        return self.conn.execute(
            sql.SQL(
                "INSERT INTO _vectors (sha256, embedding) "
                "SELECT e.content_sha256, e.embedding "
                "FROM {schema}.embeddings e WHERE e.model = %(model)s "
                "AND e.dimensions = %(dims)s "
                "AND e.content_sha256 IN (SELECT sha256 FROM _chunks "
                "EXCEPT SELECT sha256 FROM _vectors)"
            ).format(schema=sql.Identifier(SCHEMA)),
            self._params,
        ).rowcount

    def drop_superseded(self) -> list[str]:
        """Unstage every object whose stored S3 event is newer (a higher ``sequencer``):
        an older version never overwrites a newer one, nor brings back a deleted object.

        Returns:
            The object keys left out, sorted.
        """
        rows = self.conn.execute(
            sql.SQL(
                "DELETE FROM _chunks c USING {schema}.objects o "
                "WHERE o.source_bucket = %(bucket)s AND o.object_key = c.object_key "
                "AND c.sequencer <> '' AND o.sequencer > c.sequencer RETURNING c.object_key"
            ).format(schema=sql.Identifier(SCHEMA)),
            self._params,
        ).fetchall()
        return sorted({str(r[0]) for r in rows})

    def drop_incomplete(self) -> list[str]:
        """Unstage every object with a chunk that has no vector: an object (a document, or
        a bundle with all its documents) is written whole or not at all; its stored rows
        stay as they are.

        Returns:
            The keys of the documents left out, sorted.
        """
        rows = self.conn.execute(
            "DELETE FROM _chunks WHERE object_key IN (SELECT DISTINCT object_key FROM _chunks "
            "WHERE sha256 NOT IN (SELECT sha256 FROM _vectors)) RETURNING source_key"
        ).fetchall()
        return sorted({str(r[0]) for r in rows})

    def missing(self) -> list[str]:
        """Content hashes of staged chunks that have no vector yet."""
        rows = self.conn.execute(
            "SELECT DISTINCT sha256 FROM _chunks EXCEPT SELECT sha256 FROM _vectors"
        ).fetchall()
        return sorted(str(r[0]) for r in rows)

    def chunks_without_vector(self) -> int:
        """Staged chunks that have no vector yet."""
        row = self.conn.execute(
            "SELECT count(*) FROM _chunks WHERE sha256 NOT IN (SELECT sha256 FROM _vectors)"
        ).fetchone()
        return int(row[0]) if row else 0

    def merge(self) -> tuple[int, int, int]:
        """Merge the staged documents into ``chunks``, each document replaced as a whole.

        Chunks are matched to the document's stored rows by content (sha256, and its
        occurrence number for repeated text), not by position: a chunk that is still there
        keeps its row id and vector even when an edit above it moved its index; rows whose
        content is gone are deleted; new content is inserted. An identical re-upload
        changes nothing. An object the local fallback wrote during an outage
        (``db/fallback.py``) loses its fallback-model rows here, in the same transaction.

        Returns:
            ``(rows inserted, rows moved to a new index, stale rows deleted)`` (deleted
            includes the fallback rows replaced).
        """
        schema = sql.Identifier(SCHEMA)
        params = self._params
        self.conn.execute(
            "CREATE TEMP TABLE _final ON COMMIT DROP AS "
            "SELECT s.*, v.embedding, row_number() OVER "
            "(PARTITION BY s.source_key, s.sha256 ORDER BY s.chunk_index) AS occ "
            "FROM _chunks s "
            "JOIN (SELECT DISTINCT ON (sha256) sha256, embedding FROM _vectors) v USING (sha256)"
        )
        self.conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE _existing ON COMMIT DROP AS "
                "SELECT c.id, c.source_key, c.content_sha256 AS sha256, row_number() OVER "
                "(PARTITION BY c.source_key, c.content_sha256 ORDER BY c.chunk_index) AS occ "
                "FROM {schema}.chunks c WHERE c.source_bucket = %(bucket)s "
                "AND c.model = %(model)s AND c.dimensions = %(dims)s "
                "AND c.object_key IN (SELECT DISTINCT object_key FROM _chunks)"
            ).format(schema=schema),
            params,
        )
        match = sql.SQL("f.source_key = e.source_key AND f.sha256 = e.sha256 AND f.occ = e.occ")
        row = self.conn.execute(
            sql.SQL(
                "SELECT count(*) FROM _final f WHERE NOT EXISTS (SELECT 1 FROM _existing e "
                "WHERE {match})"
            ).format(match=match)
        ).fetchone()
        adding = int(row[0]) if row else 0
        if should_bypass(self.conn, self.model, self.dimensions, adding):
            self.rebuilt = drop_for_load(self.conn, self.model, self.dimensions)
        deleted = self.conn.execute(
            sql.SQL(
                "DELETE FROM {schema}.chunks c USING _existing e WHERE c.id = e.id "
                "AND NOT EXISTS (SELECT 1 FROM _final f WHERE {match})"
            ).format(schema=schema, match=match)
        ).rowcount
        moved = self.conn.execute(
            sql.SQL(
                "UPDATE {schema}.chunks c SET chunk_index = f.chunk_index, "
                "char_start = f.char_start, char_end = f.char_end, "
                "source_version = f.source_version, job_id = %(job)s, updated_at = now() "
                "FROM _existing e JOIN _final f ON {match} WHERE c.id = e.id "
                "AND (c.chunk_index, c.char_start, c.char_end) "
                "IS DISTINCT FROM (f.chunk_index, f.char_start, f.char_end)"
            ).format(schema=schema, match=match),
            params,
        ).rowcount
        written = self.conn.execute(
            sql.SQL(
                "INSERT INTO {schema}.chunks (source_bucket, source_key, source_version, "
                "chunk_index, text, content_sha256, token_count, char_start, char_end, model, "
                "dimensions, embedding, job_id, object_key) "
                "SELECT %(bucket)s, f.source_key, f.source_version, f.chunk_index, f.text, "
                "f.sha256, f.token_count, f.char_start, f.char_end, %(model)s, %(dims)s, "
                "f.embedding, %(job)s, f.object_key FROM _final f "
                "WHERE NOT EXISTS (SELECT 1 FROM _existing e WHERE {match})"
            ).format(schema=schema, match=match),
            params,
        ).rowcount
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {schema}.objects (source_bucket, object_key, sequencer, version_id) "
                "SELECT DISTINCT ON (object_key) %(bucket)s, object_key, sequencer, "
                "source_version FROM _chunks WHERE sequencer <> '' "
                "ON CONFLICT (source_bucket, object_key) DO UPDATE SET "
                "sequencer = EXCLUDED.sequencer, version_id = EXCLUDED.version_id, "
                "deleted = false, updated_at = now() "
                "WHERE objects.sequencer <= EXCLUDED.sequencer"
            ).format(schema=sql.Identifier(SCHEMA)),
            params,
        )
        # Objects the fallback model wrote during an outage: this model's rows replace them.
        deleted += remove_replaced(
            self.conn, bucket=self.bucket, model=self.model, dimensions=self.dimensions
        )
        return written, moved, deleted


def newer_objects(conn: Conn, bucket: str, sequencers: dict[str, str]) -> set[str]:
    """The objects of ``sequencers`` (object key -> its event's sequencer) whose stored
    event is newer: writing them would be superseded, so nothing is bought for them."""
    keys = sorted(k for k, seq in sequencers.items() if seq)
    if not keys:
        return set()
    rows = conn.execute(
        sql.SQL(
            "SELECT object_key, sequencer FROM {schema}.objects "
            "WHERE source_bucket = %s AND object_key = ANY(%s)"
        ).format(schema=sql.Identifier(SCHEMA)),
        (bucket, keys),
    ).fetchall()
    return {str(k) for k, seq in rows if str(seq) > sequencers[str(k)]}


def lock_object(conn: Conn, bucket: str, key: str) -> None:
    """Take the transaction-scoped lock writers and deletes of one object queue on."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{bucket}/{key}",))


def delete_document(conn: Conn, *, bucket: str, key: str, sequencer: str = "") -> int | None:
    """Delete every row of the object ``key`` (all models; for a bundle, all its documents;
    ``a.txt`` never matches ``a.txt#notes.txt``), unless a newer event of the key was
    applied first.

    Args:
        sequencer: the delete event's sequencer (``records.sequencer_key``); '' = no order.

    Returns:
        Rows deleted, or None when the delete is superseded (nothing changed).
    """
    schema = sql.Identifier(SCHEMA)
    params = {"bucket": bucket, "key": key, "seq": sequencer}
    with conn.transaction():
        lock_object(conn, bucket, key)
        row = conn.execute(
            sql.SQL(
                "SELECT sequencer FROM {schema}.objects "
                "WHERE source_bucket = %(bucket)s AND object_key = %(key)s"
            ).format(schema=schema),
            params,
        ).fetchone()
        if sequencer and row is not None and str(row[0]) > sequencer:
            return None
        deleted = conn.execute(
            sql.SQL(
                "DELETE FROM {schema}.chunks WHERE source_bucket = %(bucket)s "
                "AND object_key = %(key)s"
            ).format(schema=schema),
            params,
        ).rowcount
        if sequencer:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {schema}.objects (source_bucket, object_key, sequencer, "
                    "deleted) VALUES (%(bucket)s, %(key)s, %(seq)s, true) "
                    "ON CONFLICT (source_bucket, object_key) DO UPDATE SET "
                    "sequencer = EXCLUDED.sequencer, deleted = true, updated_at = now()"
                ).format(schema=schema),
                params,
            )
        return deleted
