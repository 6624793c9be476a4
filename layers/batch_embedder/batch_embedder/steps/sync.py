"""EmbedSync: embed through the synchronous Embeddings API (urgent documents, or what a
round of batches did not return), paced by the shared token bucket.

Every request is a checkpoint: its vectors and the tokens it billed go into the content
store (``db/content.py``) the moment it answers, so a retried step (a crash, a
``RateLimitWaitTooLong`` hand-off, a job larger than the bucket paced over several
attempts) buys only what is not stored yet.
"""

from __future__ import annotations

import uuid

import openai
from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from ..aws import s3
from ..aws.limiters import token_bucket
from ..db.connection import connect_settings
from ..db.content import ContentStore, sync_purchase
from ..errors import ConfigurationError, ProviderOutageTooLongError, ProviderUnavailableError
from ..metrics import emit
from ..models import SyncOutput, WriteInput
from ..openai.batch_files import BatchLimits, custom_id, pack_requests, tokens_per_request
from ..openai.client import get_client, provider_calls, request_dimensions_for, request_model
from ..openai.sync_embed import embed_sync
from ..records import EmbedRow
from ..settings import Settings
from . import fallback

logger = Logger(child=True)


def _rows(job: WriteInput) -> list[EmbedRow]:
    """The contents this phase embeds: the pending ones (after a round), else the urgent
    ones of the plan; never those only documents over budget need."""
    excluded = set(job.excluded_prefixes)
    if job.pending is not None:
        source, urgent_only = job.pending.manifest, False
    else:
        assert job.embed is not None and job.embed.manifest is not None, "CheckCache runs first"
        source, urgent_only = job.embed.manifest, True
    return [
        r
        for r in (EmbedRow.model_validate(x) for x in s3.iter_jsonl(source.bucket, source.key))
        if r.needed(excluded) and (r.urgent or not urgent_only)
    ]


def embed_sync_step(job: WriteInput, settings: Settings) -> WriteInput:
    """Embed contents through the synchronous API, one checkpoint per request; or with the
    local model: the ``local`` provider, or the ``local`` fallback during an outage
    (``steps/fallback.py``).

    Raises:
        see :func:`_embed_with_provider`. With ``FALLBACK_PROVIDER=local`` the urgent
        documents of a group that has bought nothing yet are embedded by the local model
        instead of raising ``ProviderUnavailableError`` / ``ProviderOutageTooLongError``
        (``steps/fallback.embed_with_fallback``).
        LocalModelUnavailableError: the local model is needed and the ``local-model``
            extra is not installed.
    """
    rows = _rows(job)
    if settings.embedding_provider == "local":
        with connect_settings(settings) as conn:
            output = fallback.store_locally(
                conn,
                owner=job.job_id,
                contents=((r.sha256, r.text) for r in rows),
                per_request=fallback.LOCAL_INPUTS_PER_REQUEST,
            )
        phase = "fallback" if job.pending is not None else "urgent"
        logger.info("embedded with the local model", extra={**output.model_dump(), "phase": phase})
        output = output.model_copy(update={"phase": phase})
        return job.model_copy(update={"sync_outputs": [*job.sync_outputs, output]})
    if not fallback.applies(job, settings):
        return _embed_with_provider(job, settings, rows)
    if fallback.degraded(settings) and not fallback.bought_from_provider(settings, job.job_id):
        return fallback.embed_with_fallback(job, settings)
    try:
        return _embed_with_provider(job, settings, rows)
    except (ProviderUnavailableError, ProviderOutageTooLongError):
        if fallback.bought_from_provider(settings, job.job_id):
            raise  # part of it is the provider's: wait for the rest
        return fallback.embed_with_fallback(job, settings)


def _embed_with_provider(job: WriteInput, settings: Settings, rows: list[EmbedRow]) -> WriteInput:
    """Embed ``rows`` through the provider's synchronous API, one checkpoint per request.

    Requests carry at most ``BATCH_INPUTS_PER_REQUEST`` inputs and never more tokens than
    the token bucket holds (``EMBEDDINGS_TOKENS_PER_MINUTE``), so each can be granted.

    Raises:
        RateLimitWaitTooLong: the token bucket needs a longer wait than
            ``RATE_LIMIT_MAX_WAIT_SECONDS``; the state machine retries later and the retry
            buys only what is not stored yet.
        ConfigurationError: one chunk holds more tokens than the bucket's tokens per
            minute: it could never be sent (raised before anything is bought).
        QuotaExhaustedError: the account has no credit.
        ProviderUnavailableError: OpenAI did not answer after the retries (connection
            error, timeout, 5xx): what earlier requests bought is stored; the state
            machine waits in ``ProviderDegradedSync`` and runs the step again, which
            buys only the rest (a timed-out request's intent is counted as billed).
        ProviderOutageTooLongError: this execution has waited ``PROVIDER_OUTAGE_SECONDS``.
    """
    phase = "fallback" if job.pending is not None else "urgent"
    tokens_cap = min(tokens_per_request(job.model), settings.embeddings_tokens_per_minute)
    too_big = [r for r in rows if r.token_count > tokens_cap]
    if too_big:
        raise ConfigurationError(
            f"{job.source}: a chunk of {too_big[0].token_count} tokens is larger than "
            f"EMBEDDINGS_TOKENS_PER_MINUTE ({settings.embeddings_tokens_per_minute}); "
            "nothing was bought"
        )
    client = get_client(settings, max_retries=0)
    bucket = token_bucket(settings, job.model)
    dims = request_dimensions_for(settings, job.model, job.dimensions)
    limits = BatchLimits(
        inputs_per_request=settings.batch_inputs_per_request, tokens_per_request=tokens_cap
    )
    totals = {"billed": 0, "requests": 0, "rate_limited": 0, "waited": 0.0, "chunks": 0}
    attempt = uuid.uuid4().hex[:8]
    with (
        provider_calls(settings, job_id=job.job_id, source=job.source),
        connect_settings(settings) as conn,
    ):
        store = ContentStore(conn, model=job.model, dimensions=job.dimensions)
        lost = store.mark_lost(job.job_id)
        if lost:
            logger.warning("an earlier attempt's requests were lost", extra={"tokens": lost})
        stored = store.stored(r.sha256 for r in rows)
        todo = [(r.seq, r.text, r.token_count) for r in rows if r.sha256 not in stored]
        by_seq = {r.seq: r for r in rows}
        for request in pack_requests(todo, limits):
            first, end = request[0][0], request[-1][0] + 1
            purchase = sync_purchase(job.job_id, f"{custom_id(job.job_id, first, end)}:{attempt}")
            hashes = [by_seq[seq].sha256 for seq, _, _ in request]
            store.intend(purchase, job.job_id, hashes, sum(t for _, _, t in request))
            try:
                result = embed_sync(
                    client,
                    [(text, tokens) for _, text, tokens in request],
                    model=request_model(settings, job.model),
                    dimensions=dims,
                    bucket=bucket,
                    max_wait_seconds=settings.rate_limit_max_wait_seconds,
                    limits=limits,
                )
            except openai.APITimeoutError:
                raise  # it may have been billed: the intent stays, the next attempt counts it
            except Exception:
                store.abandon(purchase)  # answered with an error, or never sent: not billed
                raise
            store.put(
                purchase,
                job_id=job.job_id,
                api="sync",
                billed_tokens=result.billed_tokens,
                vectors=(
                    (h, t, v)
                    for h, (_, _, t), v in zip(hashes, request, result.vectors, strict=True)
                ),
            )
            totals["billed"] += result.billed_tokens
            totals["requests"] += result.requests
            totals["rate_limited"] += result.rate_limited
            totals["waited"] += result.waited_seconds
            totals["chunks"] += len(request)
    emit("sync_requests", totals["requests"], MetricUnit.Count)
    if totals["waited"]:
        emit("throttled_waits", 1, MetricUnit.Count)
    logger.info("embedded synchronously", extra={**totals, "phase": phase, "cached": len(stored)})
    output = SyncOutput(
        phase=phase,
        chunks=int(totals["chunks"]),
        billed_tokens=int(totals["billed"]),
        requests=int(totals["requests"]),
        rate_limited=int(totals["rate_limited"]),
    )
    return job.model_copy(update={"sync_outputs": [*job.sync_outputs, output]})
