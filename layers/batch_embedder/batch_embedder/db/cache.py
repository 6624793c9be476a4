"""The embedding cache: content already paid for is never paid for twice.

A chunk is known by (sha256 of its normalised text, model, dimensions). Lookups read the
content store (``embeddings``, see ``db/content.py``) in batches of :data:`LOOKUP_BATCH`
hashes (one ``= ANY(%s)`` query each). Content not found is *claimed* in
``embedding_claims`` by the job that will embed it; a job that finds a claim of another job
in flight does not embed that content but waits for its vector to land (FetchAndWrite
retries until it does). A claim carries a lease (``lease_until``): it is removed when the
claiming job ends (written, failed, or settled by the sweep or the reconciler) and taken
over by another job once its lease has run out.
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
            "SELECT content_sha256 FROM batch_embedder.embeddings "
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

    A claim's lease runs ``stale_after_seconds``; a claim whose lease ran out is taken
    over. Idempotent for a job: calling it again (a Lambda retry) returns the same claims.
    """
    unique = sorted(set(hashes))
    view = CacheView(cached=cached_hashes(conn, unique, model=model, dimensions=dimensions))
    missing = [h for h in unique if h not in view.cached]
    with conn.transaction():
        claim(
            conn,
            missing,
            model=model,
            dimensions=dimensions,
            job_id=job_id,
            lease_seconds=stale_after_seconds,
        )
        for batch in _batches(missing, LOOKUP_BATCH):
            rows = conn.execute(
                "SELECT content_sha256, job_id FROM batch_embedder.embedding_claims "
                "WHERE content_sha256 = ANY(%s) AND model = %s AND dimensions = %s",
                (batch, model, dimensions),
            ).fetchall()
            for sha, holder in rows:
                (view.claimed_by_me if holder == job_id else view.awaited).add(str(sha))
    return view


def claim(
    conn: Conn,
    hashes: Iterable[str],
    *,
    model: str,
    dimensions: int,
    job_id: str,
    lease_seconds: int,
) -> set[str]:
    """Claim every hash nobody holds, or whose holder's lease has run out (its execution
    failed and released it, or crashed); a claim of ``job_id`` itself is renewed.

    Returns:
        The hashes ``job_id`` holds now (of those asked).
    """
    claimed: set[str] = set()
    for batch in _batches(sorted(set(hashes)), LOOKUP_BATCH):
        rows = conn.execute(
            "INSERT INTO batch_embedder.embedding_claims "
            "(content_sha256, model, dimensions, job_id, lease_until) "
            "SELECT h, %(model)s, %(dims)s, %(job)s, now() + make_interval(secs => %(s)s) "
            "FROM unnest(%(hashes)s::text[]) AS h "
            "ON CONFLICT (content_sha256, model, dimensions) DO UPDATE "
            "SET job_id = EXCLUDED.job_id, claimed_at = now(), "
            "lease_until = EXCLUDED.lease_until "
            "WHERE embedding_claims.lease_until < now() OR embedding_claims.job_id = %(job)s "
            "RETURNING content_sha256",
            {
                "model": model,
                "dims": dimensions,
                "job": job_id,
                "hashes": batch,
                "s": lease_seconds,
            },
        ).fetchall()
        claimed.update(str(r[0]) for r in rows)
    return claimed


def release_claims(conn: Conn, job_id: str) -> int:
    """Remove every claim of ``job_id`` (its vectors are written, or it failed).

    Returns:
        Claims removed.
    """
    return conn.execute(
        "DELETE FROM batch_embedder.embedding_claims WHERE job_id = %s", (job_id,)
    ).rowcount
