"""CheckCache: leave out every chunk whose vector is already stored or being made.

Dedup holds within one file (repeated text is embedded once), across files and
executions (the ``chunks`` table is the cache), across executions running at the same time
(claims), and across batch boundaries (the plan is made before any batch exists). The key
is (sha256 of the normalised text, model, dimensions), so a model or dimension change never
reuses another model's vector.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from ..aws import s3
from ..db import cache
from ..db.connection import connect_settings
from ..metrics import emit
from ..models import ChunkedJob, EmbedPlan, S3Location
from ..settings import Settings

logger = Logger(child=True)


def embed_manifest_key(job_id: str) -> str:
    """Work-bucket key of the distinct contents a job embeds."""
    return f"jobs/{job_id}/embed.jsonl"


def check_cache(job: ChunkedJob, settings: Settings) -> ChunkedJob:
    """Plan what to embed: distinct contents that are neither stored nor being embedded.

    Writes ``jobs/<job id>/embed.jsonl`` (``{"seq", "sha256", "text", "token_count"}``) and
    chooses the API: ``none`` when nothing is left, ``sync`` for urgent jobs or at most
    ``SYNC_MAX_TOKENS`` tokens, else ``batch``.

    Returns:
        The job with ``embed`` set: only ``embed.tokens`` are reserved and paid for.
    """
    first: dict[str, tuple[str, int]] = {}
    per_chunk: list[tuple[str, int]] = []
    for r in s3.iter_jsonl(job.manifest.bucket, job.manifest.key):
        sha, tokens = str(r["sha256"]), int(r["token_count"])
        per_chunk.append((sha, tokens))
        first.setdefault(sha, (str(r["text"]), tokens))
    with connect_settings(settings) as conn:
        view = cache.plan(
            conn,
            first,
            model=job.model,
            dimensions=job.dimensions,
            job_id=job.job_id,
            stale_after_seconds=settings.claim_stale_seconds,
        )
    to_embed = [sha for sha in first if sha in view.claimed_by_me]
    tokens = sum(first[sha][1] for sha in to_embed)
    location: S3Location | None = None
    if to_embed:
        location = S3Location(bucket=settings.work_bucket, key=embed_manifest_key(job.job_id))
        s3.write_jsonl(
            location.bucket,
            location.key,
            (
                {"seq": i, "sha256": sha, "text": first[sha][0], "token_count": first[sha][1]}
                for i, sha in enumerate(to_embed)
            ),
        )
    hits = sum(1 for sha, _ in per_chunk if sha in view.cached)
    api = "none" if not to_embed else (
        "sync" if job.urgent or tokens <= settings.sync_max_tokens else "batch"
    )  # fmt: skip
    plan = EmbedPlan(
        api=api,
        manifest=location,
        chunks=len(to_embed),
        tokens=tokens,
        cache_hits=hits,
        cached_tokens=job.tokens - tokens,
        awaited=sum(1 for sha, _ in per_chunk if sha in view.awaited),
    )
    emit("cache_hits", hits, MetricUnit.Count)
    emit("tokens_saved", plan.cached_tokens, MetricUnit.Count)
    logger.info("cache checked", extra=plan.model_dump(exclude={"manifest"}))
    return job.model_copy(update={"embed": plan})
