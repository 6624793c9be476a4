"""Writing a document's vectors (bulk binary COPY, one transaction) and searching them.

A document is replaced as a whole, atomically: its chunks and vectors are COPY'd into two
temporary staging tables, checked for completeness, then merged into
``batch_embedder.chunks`` with one ``INSERT ... ON CONFLICT DO UPDATE`` (rows whose content
and vector are unchanged are left alone) and one ``DELETE`` of chunks past the new end.
Readers see the old version or the new one, never a mix. Running it twice leaves the same
rows.
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

from ..models import DocumentRef
from .schema import SCHEMA, ensure_vector_index, uses_halfvec, vector_type

Conn = psycopg.Connection[tuple[Any, ...]]


class DocumentWriter:
    """Stage and merge one document's chunks and vectors inside one transaction.

    Use as a context manager; leaving it by an exception rolls everything back::

        with DocumentWriter(conn, document, job_id=..., model=..., dimensions=...) as w:
            w.copy_chunks(rows)          # (index, text, sha256, tokens, start, end)
            w.copy_vectors(pairs)        # (index, float32 array of `dimensions`)
            if w.vector_count() != expected: raise ...
            written, deleted = w.merge()
    """

    def __init__(
        self, conn: Conn, document: DocumentRef, *, job_id: str, model: str, dimensions: int
    ) -> None:
        self.conn = conn
        self.document = document
        self.job_id = job_id
        self.model = model
        self.dimensions = dimensions
        self._stack = ExitStack()

    def __enter__(self) -> DocumentWriter:
        ensure_vector_index(self.conn, self.model, self.dimensions)
        self._stack.enter_context(self.conn.transaction())
        # Writers of the same document queue up; other documents proceed in parallel.
        self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"{self.document.bucket}/{self.document.key}",),
        )
        self.conn.execute(
            "CREATE TEMP TABLE _chunks (chunk_index int PRIMARY KEY, text text, sha256 text, "
            "token_count int, char_start int, char_end int) ON COMMIT DROP"
        )
        self.conn.execute(
            "CREATE TEMP TABLE _vectors (chunk_index int, embedding vector) ON COMMIT DROP"
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.__exit__(exc_type, exc, tb)

    def copy_chunks(self, rows: Iterable[tuple[int, str, str, int, int, int]]) -> int:
        """COPY ``(chunk_index, text, sha256, token_count, char_start, char_end)`` rows.

        Returns:
            Rows copied.
        """
        n = 0
        with self.conn.cursor().copy(
            "COPY _chunks (chunk_index, text, sha256, token_count, char_start, char_end) "
            "FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int4", "text", "text", "int4", "int4", "int4"])
            for row in rows:
                copy.write_row(row)
                n += 1
        return n

    def copy_vectors(self, pairs: Iterable[tuple[int, np.ndarray[Any, Any]]]) -> int:
        """COPY ``(chunk_index, embedding)`` pairs (float32 arrays of ``dimensions``).

        Returns:
            Vectors copied.

        Raises:
            ValueError: a vector has the wrong number of dimensions.
        """
        n = 0
        with self.conn.cursor().copy(
            "COPY _vectors (chunk_index, embedding) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int4", "vector"])
            for index, vector in pairs:
                if vector.shape != (self.dimensions,):
                    raise ValueError(
                        f"chunk {index}: vector of {vector.shape[0]} dimensions, "
                        f"expected {self.dimensions}"
                    )
                copy.write_row((index, vector))
                n += 1
        return n

    def vector_count(self) -> int:
        """Distinct staged chunks that have a vector."""
        row = self.conn.execute(
            "SELECT count(DISTINCT v.chunk_index) "
            "FROM _vectors v JOIN _chunks c USING (chunk_index)"
        ).fetchone()
        return int(row[0]) if row else 0

    def merge(self) -> tuple[int, int]:
        """Merge the staged document into ``chunks``.

        Returns:
            ``(rows inserted or changed, stale rows deleted)``.
        """
        doc = self.document
        params = {
            "bucket": doc.bucket,
            "key": doc.key,
            "version": doc.version_id or doc.etag,
            "model": self.model,
            "dims": self.dimensions,
            "job": self.job_id,
        }
        upsert = self.conn.execute(
            sql.SQL(
                """
            INSERT INTO {schema}.chunks AS c (
                source_bucket, source_key, source_version, chunk_index, text, content_sha256,
                token_count, char_start, char_end, model, dimensions, embedding, job_id)
            SELECT %(bucket)s, %(key)s, %(version)s, s.chunk_index, s.text, s.sha256,
                   s.token_count, s.char_start, s.char_end, %(model)s, %(dims)s, v.embedding,
                   %(job)s
            FROM _chunks s
            JOIN (SELECT DISTINCT ON (chunk_index) chunk_index, embedding FROM _vectors) v
              USING (chunk_index)
            ON CONFLICT (source_bucket, source_key, model, dimensions, chunk_index) DO UPDATE
            SET source_version = EXCLUDED.source_version, text = EXCLUDED.text,
                content_sha256 = EXCLUDED.content_sha256, token_count = EXCLUDED.token_count,
                char_start = EXCLUDED.char_start, char_end = EXCLUDED.char_end,
                embedding = EXCLUDED.embedding, job_id = EXCLUDED.job_id, updated_at = now()
            WHERE c.content_sha256 IS DISTINCT FROM EXCLUDED.content_sha256
               OR c.source_version IS DISTINCT FROM EXCLUDED.source_version
               OR c.char_start IS DISTINCT FROM EXCLUDED.char_start
               OR c.char_end IS DISTINCT FROM EXCLUDED.char_end
               OR c.embedding IS DISTINCT FROM EXCLUDED.embedding
            """
            ).format(schema=sql.Identifier(SCHEMA)),
            params,
        )
        written = upsert.rowcount
        deleted = self.conn.execute(
            sql.SQL(
                "DELETE FROM {schema}.chunks WHERE source_bucket = %(bucket)s "
                "AND source_key = %(key)s AND model = %(model)s AND dimensions = %(dims)s "
                "AND chunk_index NOT IN (SELECT chunk_index FROM _chunks)"
            ).format(schema=sql.Identifier(SCHEMA)),
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
