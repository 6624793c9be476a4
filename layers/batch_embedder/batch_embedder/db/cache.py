"""The embedding cache: chunks already in pgvector are never paid for twice.

A chunk is known by (sha256 of its normalised text, model, dimensions). Lookups read the
``chunks_content`` index in batches of :data:`LOOKUP_BATCH` hashes (one ``= ANY(%s)``
query each). Content not found is *claimed* in ``embedding_claims`` by the job that will
embed it; a job that finds a claim of another job in flight does not embed that content
but waits for its vector to land (FetchAndWrite retries until it does). Claims are
removed when the claiming job writes its vectors or fails, and taken over when older than
``stale_after_seconds`` (a crashed execution).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

#: Hashes per lookup query (measured in docs/benchmarks.md).
LOOKUP_BATCH = 1000

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass
class CacheView:
    """What the cache and the claims say about a set of content hashes."""

    cached: set[str] = field(default_factory=set)
    claimed_by_me: set[str] = field(default_factory=set)
    awaited: set[str] = field(default_factory=set)


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def cached_hashes(conn: Conn, hashes: Iterable[str], *, model: str, dimensions: int) -> set[str]:
    """The hashes whose vector is already stored for (model, dimensions)."""
    found: set[str] = set()
    for batch in _batches(sorted(set(hashes)), LOOKUP_BATCH):
        rows = conn.execute(
            "SELECT DISTINCT content_sha256 FROM batch_embedder.chunks "
            "WHERE content_sha256 = ANY(%s) AND model = %s AND dimensions = %s",
            (batch, model, dimensions),
        ).fetchall()
        found.update(str(r[0]) for r in rows)
    return found


def plan(
    conn: Conn,
    hashes: Iterable[str],
    *,
    model: str,
    dimensions: int,
    job_id: str,
    stale_after_seconds: int,
) -> CacheView:
    """Split ``hashes`` into cached, claimed now by ``job_id``, and awaited from other jobs.

    Idempotent for a job: calling it again (a Lambda retry) returns the same claims.
    """
    unique = sorted(set(hashes))
    view = CacheView(cached=cached_hashes(conn, unique, model=model, dimensions=dimensions))
    missing = [h for h in unique if h not in view.cached]
    with conn.transaction():
        for batch in _batches(missing, LOOKUP_BATCH):
            conn.execute(
                "INSERT INTO batch_embedder.embedding_claims "
                "(content_sha256, model, dimensions, job_id) "
                "SELECT h, %s, %s, %s FROM unnest(%s::text[]) AS h "
                "ON CONFLICT (content_sha256, model, dimensions) DO UPDATE "
                "SET job_id = EXCLUDED.job_id, claimed_at = now() "
                "WHERE embedding_claims.claimed_at < now() - make_interval(secs => %s)",
                (model, dimensions, job_id, batch, stale_after_seconds),
            )
            rows = conn.execute(
                "SELECT content_sha256, job_id FROM batch_embedder.embedding_claims "
                "WHERE content_sha256 = ANY(%s) AND model = %s AND dimensions = %s",
                (batch, model, dimensions),
            ).fetchall()
            for sha, holder in rows:
                (view.claimed_by_me if holder == job_id else view.awaited).add(str(sha))
    return view


def release_claims(conn: Conn, job_id: str) -> int:
    """Remove every claim of ``job_id`` (its vectors are written, or it failed).

    Returns:
        Claims removed.
    """
    return conn.execute(
        "DELETE FROM batch_embedder.embedding_claims WHERE job_id = %s", (job_id,)
    ).rowcount
