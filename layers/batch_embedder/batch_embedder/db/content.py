"""The content store: every vector paid for, kept the moment it comes back.

Two tables in the ``batch_embedder`` schema (created by migration 3, ``db/schema.py``):

- ``embeddings``: one vector per (content sha256, model, dimensions), with the content's
  token count and the purchase that brought it. It is the cache: CheckCache and
  FetchAndWrite read it; a document's rows in ``chunks`` copy their vectors from it.
- ``purchases``: one row per thing OpenAI bills, with the tokens it billed (the provider's
  ``usage``): ``batch:<batch id>`` for a batch's output, ``sync:<job>:<custom_id>`` for one
  synchronous request. A purchase is stored in the same transaction as its vectors, so a
  vector and the money it cost are never recorded apart, and storing a purchase again
  (a Lambda retry, the reconciler and FetchAndWrite both ingesting one batch) changes
  nothing.

A synchronous request is recorded as ``sent`` (an *intent*) before it is made and as
``stored`` with its vectors after. An intent a crashed attempt left ``sent`` may have been
billed without its vectors reaching the store: the next attempt marks it ``lost``, counts
its tokens as billed, and reports every token it buys again for that content as
``repaid_tokens``. That is the only way a token is paid twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import psycopg

Conn = psycopg.Connection[tuple[Any, ...]]
Api = Literal["batch", "sync"]
#: Hashes per lookup query.
LOOKUP_BATCH = 1000


@dataclass(frozen=True)
class Billed:
    """What OpenAI billed one job, in tokens, as the content store recorded it."""

    batch_tokens: int = 0
    sync_tokens: int = 0
    repaid_tokens: int = 0
    purchases: int = 0

    @property
    def tokens(self) -> int:
        """Every token billed (batch + sync)."""
        return self.batch_tokens + self.sync_tokens


@dataclass(frozen=True)
class Stored:
    """Result of :meth:`ContentStore.put`: ``new`` is False when the purchase was stored
    before (nothing changed)."""

    new: bool
    vectors: int = 0
    repaid_tokens: int = 0


def batch_purchase(batch_id: str) -> str:
    """The purchase id of a batch's output."""
    return f"batch:{batch_id}"


def sync_purchase(job_id: str, custom_id: str) -> str:
    """The purchase id of one synchronous request of a job."""
    return f"sync:{job_id}:{custom_id}"


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ContentStore:
    """The content store of one (model, dimensions); bind once per connection."""

    def __init__(self, conn: Conn, *, model: str, dimensions: int) -> None:
        self.conn = conn
        self.model = model
        self.dimensions = dimensions

    def stored(self, hashes: Iterable[str]) -> set[str]:
        """The content hashes that already have a vector."""
        found: set[str] = set()
        for part in _chunks(sorted(set(hashes)), LOOKUP_BATCH):
            rows = self.conn.execute(
                "SELECT content_sha256 FROM batch_embedder.embeddings "
                "WHERE content_sha256 = ANY(%s) AND model = %s AND dimensions = %s",
                (part, self.model, self.dimensions),
            ).fetchall()
            found.update(str(r[0]) for r in rows)
        return found

    def has_purchase(self, purchase_id: str) -> bool:
        """Whether this purchase's vectors are already stored."""
        row = self.conn.execute(
            "SELECT 1 FROM batch_embedder.purchases WHERE purchase_id = %s AND state = 'stored'",
            (purchase_id,),
        ).fetchone()
        return row is not None

    def intend(self, purchase_id: str, job_id: str, hashes: list[str], tokens: int) -> None:
        """Record a synchronous request about to be made (``sent``), committed at once."""
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO batch_embedder.purchases "
                "(purchase_id, job_id, api, state, tokens, contents, model, dimensions) "
                "VALUES (%s, %s, 'sync', 'sent', %s, %s, %s, %s) "
                "ON CONFLICT (purchase_id) DO NOTHING",
                (purchase_id, job_id, tokens, hashes, self.model, self.dimensions),
            )

    def abandon(self, purchase_id: str) -> None:
        """Forget an intent whose request failed without being billed (an error answer)."""
        with self.conn.transaction():
            self.conn.execute(
                "DELETE FROM batch_embedder.purchases WHERE purchase_id = %s AND state = 'sent'",
                (purchase_id,),
            )

    def mark_lost(self, job_id: str) -> int:
        """Mark the job's intents left ``sent`` by a crashed attempt as ``lost`` (assumed
        billed: their tokens count as billed).

        Returns:
            Tokens of the intents marked lost.
        """
        with self.conn.transaction():
            rows = self.conn.execute(
                "UPDATE batch_embedder.purchases SET state = 'lost' "
                "WHERE job_id = %s AND state = 'sent' RETURNING tokens",
                (job_id,),
            ).fetchall()
        return sum(int(r[0]) for r in rows)

    def put(
        self,
        purchase_id: str,
        *,
        job_id: str,
        api: Api,
        billed_tokens: int | Callable[[], int] | None,
        vectors: Iterable[tuple[str, int, np.ndarray[Any, Any]]],
    ) -> Stored:
        """Store a purchase and its vectors in one transaction, once.

        Args:
            purchase_id: :func:`batch_purchase` or :func:`sync_purchase`.
            billed_tokens: the provider's usage, tokens, or a function giving it once the
                vectors are consumed (the output lines' usage summed while streaming);
                None to use the sum of the vectors' token counts.
            vectors: ``(content sha256, token count, float32 vector of dimensions)``.

        Returns:
            Whether it was new, the vectors stored and the tokens bought again for content
            that was stored already or lost before.

        Raises:
            ValueError: a vector has the wrong number of dimensions.
        """
        with self.conn.transaction():
            row = self.conn.execute(
                "SELECT state FROM batch_embedder.purchases WHERE purchase_id = %s FOR UPDATE",
                (purchase_id,),
            ).fetchone()
            if row is not None and row[0] == "stored":
                return Stored(new=False)
            self.conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS _incoming (sha256 text, token_count int, "
                "embedding vector) ON COMMIT DELETE ROWS"
            )
            counted = 0
            with self.conn.cursor().copy(
                "COPY _incoming (sha256, token_count, embedding) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["text", "int4", "vector"])
                for sha, tokens, vector in vectors:
                    if vector.shape != (self.dimensions,):
                        raise ValueError(
                            f"content {sha[:12]}: vector of {vector.shape[0]} dimensions, "
                            f"expected {self.dimensions}"
                        )
                    copy.write_row((sha, tokens, vector))
                    counted += tokens
            params = {"model": self.model, "dims": self.dimensions, "purchase": purchase_id}
            repaid_row = self.conn.execute(
                "SELECT coalesce(sum(i.token_count), 0) FROM "
                "(SELECT DISTINCT ON (sha256) sha256, token_count FROM _incoming) i "
                "WHERE EXISTS (SELECT 1 FROM batch_embedder.embeddings e "
                "  WHERE e.content_sha256 = i.sha256 AND e.model = %(model)s "
                "  AND e.dimensions = %(dims)s) "
                "OR EXISTS (SELECT 1 FROM batch_embedder.purchases p WHERE p.state = 'lost' "
                "  AND p.model = %(model)s AND p.dimensions = %(dims)s "
                "  AND i.sha256 = ANY(p.contents))",
                params,
            ).fetchone()
            repaid = int(repaid_row[0]) if repaid_row else 0
            stored = self.conn.execute(
                "INSERT INTO batch_embedder.embeddings "
                "(content_sha256, model, dimensions, embedding, token_count, purchase_id) "
                "SELECT DISTINCT ON (sha256) sha256, %(model)s, %(dims)s, embedding, "
                "token_count, %(purchase)s FROM _incoming "
                "ON CONFLICT (content_sha256, model, dimensions) DO NOTHING",
                params,
            ).rowcount
            if callable(billed_tokens):
                billed = billed_tokens()
            else:
                billed = counted if billed_tokens is None else billed_tokens
            self.conn.execute(
                "INSERT INTO batch_embedder.purchases (purchase_id, job_id, api, state, "
                "tokens, vectors, repaid_tokens, model, dimensions, stored_at) "
                "VALUES (%s, %s, %s, 'stored', %s, %s, %s, %s, %s, now()) "
                "ON CONFLICT (purchase_id) DO UPDATE SET state = 'stored', "
                "tokens = EXCLUDED.tokens, vectors = EXCLUDED.vectors, "
                "repaid_tokens = EXCLUDED.repaid_tokens, stored_at = now()",
                (purchase_id, job_id, api, billed, stored, repaid, self.model, self.dimensions),
            )
            self.conn.execute("TRUNCATE _incoming")
        return Stored(new=True, vectors=stored, repaid_tokens=repaid)


def billed(conn: Conn, job_id: str) -> Billed:
    """Tokens billed to ``job_id`` so far: its stored purchases and its lost intents."""
    rows = conn.execute(
        "SELECT api, coalesce(sum(tokens), 0), coalesce(sum(repaid_tokens), 0), count(*) "
        "FROM batch_embedder.purchases WHERE job_id = %s AND state IN ('stored', 'lost') "
        "GROUP BY api",
        (job_id,),
    ).fetchall()
    by_api = {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}
    batch = by_api.get("batch", (0, 0, 0))
    sync = by_api.get("sync", (0, 0, 0))
    return Billed(
        batch_tokens=batch[0],
        sync_tokens=sync[0],
        repaid_tokens=batch[1] + sync[1],
        purchases=batch[2] + sync[2],
    )
