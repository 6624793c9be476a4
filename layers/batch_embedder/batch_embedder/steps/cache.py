"""CheckCache: leave out every chunk whose vector is already stored or being made.

Dedup holds within one group (repeated text is embedded once, across all its documents),
across groups and executions (the ``chunks`` table is the cache), across executions
running at the same time (claims), and across batch boundaries (the plan is made before
any batch exists). The key is (sha256 of the normalised text, model, dimensions), so a
model or dimension change never reuses another model's vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from ..aws import s3
from ..db import cache
from ..db.connection import connect_settings
from ..db.vectors import newer_objects
from ..metrics import emit
from ..models import ChunkedJob, EmbedPlan, S3Location
from ..openai.client import sync_only
from ..records import ChunkRow, EmbedRow
from ..settings import Settings
from .chunk import job_key

logger = Logger(child=True)


@dataclass
class _Content:
    text: str
    tokens: int
    urgent: bool = False
    prefixes: set[str] = field(default_factory=set)


Api = Literal["batch", "sync", "sync+batch", "none"]


def api_for(sync_rows: int, batch_rows: int) -> Api:
    """The plan's API: urgent contents go synchronous, the rest into the batch."""
    if sync_rows and batch_rows:
        return "sync+batch"
    if sync_rows:
        return "sync"
    return "batch" if batch_rows else "none"


def check_cache(job: ChunkedJob, settings: Settings) -> ChunkedJob:
    """Plan what to embed: distinct contents that are neither stored nor being embedded.

    Writes ``jobs/<job>/embed.jsonl`` (:class:`EmbedRow`) and picks the API per content:
    the synchronous API for contents an urgent document needs, the Batch API for the rest
    (``sync+batch`` when both). ``none`` when nothing is left. A provider without a Batch
    API for embeddings (``client.sync_only``: ``compatible``, Azure by default) makes every
    content urgent, so all of them go synchronous, in this round and the next ones.

    Returns:
        The group with ``embed`` set: only ``embed.tokens`` are reserved and paid for.
    """
    rows_in = [
        ChunkRow.model_validate(raw) for raw in s3.iter_jsonl(job.manifest.bucket, job.manifest.key)
    ]
    with connect_settings(settings) as conn:
        newer = newer_objects(
            conn, job.bucket, {r.object_key or r.source_key: r.sequencer for r in rows_in}
        )
    contents: dict[str, _Content] = {}
    all_sync = sync_only(settings)
    per_chunk: list[str] = []
    for row in rows_in:
        if (row.object_key or row.source_key) in newer:
            continue  # a newer event of this key was applied: nothing to buy for it
        per_chunk.append(row.sha256)
        content = contents.setdefault(row.sha256, _Content(row.text, row.token_count))
        content.urgent = content.urgent or row.urgent or all_sync
        content.prefixes.add(row.prefix)
    with connect_settings(settings) as conn:
        view = cache.plan(
            conn,
            contents,
            model=job.model,
            dimensions=job.dimensions,
            job_id=job.job_id,
            stale_after_seconds=settings.claim_stale_seconds,
        )
    rows = [
        EmbedRow(seq=i, sha256=sha, text=contents[sha].text, token_count=contents[sha].tokens,
                 urgent=contents[sha].urgent, prefixes=sorted(contents[sha].prefixes))
        for i, sha in enumerate(sha for sha in contents if sha in view.claimed_by_me)
    ]  # fmt: skip
    location: S3Location | None = None
    if rows:
        location = S3Location(bucket=settings.work_bucket, key=job_key(job.job_id, "embed.jsonl"))
        s3.write_jsonl(location.bucket, location.key, (r.model_dump() for r in rows))
    sync_rows = [r for r in rows if r.urgent]
    batch_rows = [r for r in rows if not r.urgent]
    prefix_tokens: dict[str, int] = {}
    for r in rows:
        for p in r.prefixes:
            if p:
                prefix_tokens[p] = prefix_tokens.get(p, 0) + r.token_count
    api = api_for(len(sync_rows), len(batch_rows))
    tokens = sum(r.token_count for r in rows)
    hits = sum(1 for sha in per_chunk if sha in view.cached)
    plan = EmbedPlan(
        api=api,
        manifest=location,
        chunks=len(rows),
        tokens=tokens,
        sync_chunks=len(sync_rows),
        sync_tokens=sum(r.token_count for r in sync_rows),
        batch_chunks=len(batch_rows),
        batch_tokens=sum(r.token_count for r in batch_rows),
        cache_hits=hits,
        cached_tokens=job.tokens - tokens,
        awaited=sum(1 for sha in per_chunk if sha in view.awaited),
        prefix_tokens=prefix_tokens,
    )
    emit("cache_hits", hits, MetricUnit.Count)
    emit("tokens_saved", plan.cached_tokens, MetricUnit.Count)
    logger.info("cache checked", extra=plan.model_dump(exclude={"manifest"}))
    if newer:
        logger.info("superseded before embedding", extra={"objects": sorted(newer)})
    return job.model_copy(update={"embed": plan, "superseded": sorted(newer)})
