"""Writing a job's vectors (bulk binary COPY, one transaction) and searching them.

Each document of the job is replaced as a whole, atomically: chunks and vectors are COPY'd
into two temporary staging tables, checked for completeness, then merged into
``batch_embedder.chunks`` with one ``INSERT ... ON CONFLICT DO UPDATE`` (rows whose content
and vector are unchanged are left alone) and one ``DELETE`` of each document's chunks that
are no longer there. Readers see the old version or the new one, never a mix. Running it
twice leaves the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from .schema import SCHEMA, ensure_vector_index, uses_halfvec, vector_type

Conn = psycopg.Connection[tuple[Any, ...]]


class ChunkWriter:
    """Stage and merge a job's chunks and vectors (one or many documents) in one transaction.

    Use as a context manager; leaving it by an exception rolls everything back::

        with ChunkWriter(conn, bucket=b, lock_key=k, job_id=j, model=m, dimensions=d) as w:
            w.copy_chunks(rows)      # (seq, source_key, source_version, chunk_index, text,
                                     #  sha256, token_count, char_start, char_end)
            w.copy_vectors(pairs)    # (seq, float32 array of `dimensions`)
            if w.vector_count() != expected: raise ...
            written, deleted = w.merge()

    ``seq`` numbers the job's chunks 0..n-1 across its documents (what the batch request
    lines carry); ``chunk_index`` numbers them within their document.
    """

    def __init__(
        self,
        conn: Conn,
        *,
        bucket: str,
        lock_key: str,
        job_id: str,
        model: str,
        dimensions: int,
    ) -> None:
        self.conn = conn
        self.bucket = bucket
        self.lock_key = lock_key
        self.job_id = job_id
        self.model = model
        self.dimensions = dimensions
        self._stack = ExitStack()

    def __enter__(self) -> ChunkWriter:
        ensure_vector_index(self.conn, self.model, self.dimensions)
        self._stack.enter_context(self.conn.transaction())
        # Writers of the same upload queue up; other uploads proceed in parallel.
        self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"{self.bucket}/{self.lock_key}",),
        )
        self.conn.execute(
            "CREATE TEMP TABLE _chunks (seq int PRIMARY KEY, source_key text, "
            "source_version text, chunk_index int, text text, sha256 text, token_count int, "
            "char_start int, char_end int) ON COMMIT DROP"
        )
        self.conn.execute("CREATE TEMP TABLE _vectors (seq int, embedding vector) ON COMMIT DROP")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.__exit__(exc_type, exc, tb)

    def copy_chunks(
        self, rows: Iterable[tuple[int, str, str | None, int, str, str, int, int, int]]
    ) -> int:
        """COPY ``(seq, source_key, source_version, chunk_index, text, sha256, token_count,
        char_start, char_end)`` rows.

        Returns:
            Rows copied.
        """
        n = 0
        with self.conn.cursor().copy(
            "COPY _chunks (seq, source_key, source_version, chunk_index, text, sha256, "
            "token_count, char_start, char_end) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int4", "text", "text", "int4", "text", "text", "int4", "int4", "int4"])
            for row in rows:
                copy.write_row(row)
                n += 1
        return n

    def copy_vectors(self, pairs: Iterable[tuple[int, np.ndarray[Any, Any]]]) -> int:
        """COPY ``(seq, embedding)`` pairs (float32 arrays of ``dimensions``).

        Returns:
            Vectors copied.

        Raises:
            ValueError: a vector has the wrong number of dimensions.
        """
        n = 0
        with self.conn.cursor().copy(
            "COPY _vectors (seq, embedding) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int4", "vector"])
            for seq, vector in pairs:
                if vector.shape != (self.dimensions,):
                    raise ValueError(
                        f"chunk {seq}: vector of {vector.shape[0]} dimensions, "
                        f"expected {self.dimensions}"
                    )
                copy.write_row((seq, vector))
                n += 1
        return n

    def vector_count(self) -> int:
        """Distinct staged chunks that have a vector."""
        row = self.conn.execute(
            "SELECT count(DISTINCT v.seq) FROM _vectors v JOIN _chunks c USING (seq)"
        ).fetchone()
        return int(row[0]) if row else 0

    def merge(self) -> tuple[int, int]:
        """Merge the staged documents into ``chunks``, replacing each document as a whole.

        A chunk whose text, offsets and vector are unchanged is not rewritten (so it keeps
        the version it was first written from): an identical re-upload changes nothing.

        Returns:
            ``(rows inserted or changed, stale rows deleted)``.
        """
        params = {
            "bucket": self.bucket,
            "model": self.model,
            "dims": self.dimensions,
            "job": self.job_id,
        }
        schema = sql.Identifier(SCHEMA)
        upsert = self.conn.execute(
            sql.SQL(
                """
            INSERT INTO {schema}.chunks AS c (
                source_bucket, source_key, source_version, chunk_index, text, content_sha256,
                token_count, char_start, char_end, model, dimensions, embedding, job_id)
            SELECT %(bucket)s, s.source_key, s.source_version, s.chunk_index, s.text, s.sha256,
                   s.token_count, s.char_start, s.char_end, %(model)s, %(dims)s, v.embedding,
                   %(job)s
            FROM _chunks s
            JOIN (SELECT DISTINCT ON (seq) seq, embedding FROM _vectors) v USING (seq)
            ON CONFLICT (source_bucket, source_key, model, dimensions, chunk_index) DO UPDATE
            SET source_version = EXCLUDED.source_version, text = EXCLUDED.text,
                content_sha256 = EXCLUDED.content_sha256, token_count = EXCLUDED.token_count,
                char_start = EXCLUDED.char_start, char_end = EXCLUDED.char_end,
                embedding = EXCLUDED.embedding, job_id = EXCLUDED.job_id, updated_at = now()
            WHERE c.content_sha256 IS DISTINCT FROM EXCLUDED.content_sha256
               OR c.char_start IS DISTINCT FROM EXCLUDED.char_start
               OR c.char_end IS DISTINCT FROM EXCLUDED.char_end
               OR c.embedding IS DISTINCT FROM EXCLUDED.embedding
            """
            ).format(schema=schema),
            params,
        )
        written = upsert.rowcount
        deleted = self.conn.execute(
            sql.SQL(
                "DELETE FROM {schema}.chunks c "
                "WHERE c.source_bucket = %(bucket)s AND c.model = %(model)s "
                "AND c.dimensions = %(dims)s "
                "AND c.source_key IN (SELECT DISTINCT source_key FROM _chunks) "
                "AND NOT EXISTS (SELECT 1 FROM _chunks s "
                "WHERE s.source_key = c.source_key AND s.chunk_index = c.chunk_index)"
            ).format(schema=schema),
            params,
        ).rowcount
        return written, deleted


@dataclass(frozen=True)
class SearchHit:
    """One nearest chunk: ``score`` is cosine similarity (1 = same direction)."""

    bucket: str
    key: str
    chunk_index: int
    score: float
    text: str


def search(
    conn: Conn, query: np.ndarray[Any, Any], *, model: str, dimensions: int, k: int = 5
) -> list[SearchHit]:
    """The ``k`` chunks of (model, dimensions) nearest to ``query`` by cosine distance.

    The ORDER BY expression matches the HNSW expression index, so the index is used.
    """
    vtype = vector_type(dimensions, uses_halfvec(conn, dimensions))
    query_sql = sql.SQL(
        "SELECT source_bucket, source_key, chunk_index, "
        "1 - (embedding::{vtype} <=> %(q)s::{vtype}) AS score, text "
        "FROM {schema}.chunks WHERE model = %(model)s AND dimensions = %(dims)s "
        "ORDER BY embedding::{vtype} <=> %(q)s::{vtype} LIMIT %(k)s"
    ).format(vtype=vtype, schema=sql.Identifier(SCHEMA))
    rows = conn.execute(
        query_sql,
        {"q": np.asarray(query, dtype=np.float32), "model": model, "dims": dimensions, "k": k},
    ).fetchall()
    return [
        SearchHit(bucket=r[0], key=r[1], chunk_index=r[2], score=float(r[3]), text=r[4])
        for r in rows
    ]
