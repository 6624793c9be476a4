"""EmbedSync: embed through the synchronous Embeddings API (urgent documents, or to finish a
failed/expired batch), paced by the shared token bucket."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from openai.types.create_embedding_response import Usage

from ..aws import s3
from ..batch_files import BatchLimits, custom_id, pack_requests, parse_custom_id
from ..metrics import emit
from ..models import S3Location, SyncOutput, WriteInput
from ..openai_client import get_client
from ..openai_files import iter_jsonl_file
from ..records import (
    BatchOutputLine,
    EmbeddingItem,
    EmbeddingsBody,
    EmbedRow,
    OutputResponse,
)
from ..settings import Settings, request_dimensions
from ..sync_embed import bucket_for, embed_sync

logger = Logger(child=True)


def _b64(vector: Any) -> str:
    """A float32 vector as the API's base64 (little-endian float32 bytes)."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode()


def sync_output_key(job_id: str, phase: str) -> str:
    """Work-bucket key of a group's synchronous embeddings (batch-output-shaped JSONL);
    ``phase`` is ``urgent`` or ``fallback``."""
    return f"jobs/{job_id}/sync-{phase}.jsonl"


def _done_in_batches(job: WriteInput, settings: Settings) -> set[int]:
    """Embed seqs a (failed/expired) batch already returned: they are not paid twice."""
    client = get_client(settings)
    done: set[int] = set()
    for batch in job.final_batches:
        if not batch.output_file_id:
            continue
        for record in iter_jsonl_file(client, batch.output_file_id):
            line = BatchOutputLine.model_validate(record)
            if line.embeddings is not None:
                _, first, end = parse_custom_id(line.custom_id)
                done.update(range(first, end))
    return done


def embed_sync_step(job: WriteInput, settings: Settings) -> WriteInput:
    """Embed contents through the synchronous API: the urgent documents' (before any batch),
    or what a failed or expired batch did not return (the fallback, after the wait).

    Reads CheckCache's embed manifest and leaves out what the group's batches already
    returned, what an earlier synchronous phase embedded, and what only documents of
    prefixes over budget need. The vectors go to ``jobs/<job>/sync-<phase>.jsonl`` in the
    Batch API's output line format, so FetchAndWrite reads both the same way.

    Raises:
        RateLimitWaitTooLong: the token bucket needs a longer wait than
            ``RATE_LIMIT_MAX_WAIT_SECONDS``; the state machine retries later.
        QuotaExhaustedError: the account has no credit.
    """
    assert job.embed is not None and job.embed.manifest is not None, "CheckCache runs first"
    fallback = job.outcome is not None
    done = _done_in_batches(job, settings) if fallback else set()
    excluded = set(job.excluded_prefixes)
    urgent_done = bool(job.sync_outputs)
    rows = [
        (r.seq, r.text, r.token_count)
        for r in (
            EmbedRow.model_validate(x)
            for x in s3.iter_jsonl(job.embed.manifest.bucket, job.embed.manifest.key)
        )
        if r.needed(excluded)
        and r.seq not in done
        and (r.urgent if not fallback else not (r.urgent and urgent_done))
    ]
    client = get_client(settings, max_retries=0)
    bucket = bucket_for(settings, job.model)
    dims = request_dimensions(job.model, job.dimensions)
    totals = {"billed": 0, "requests": 0, "rate_limited": 0, "waited": 0.0}
    limits = BatchLimits(inputs_per_request=settings.batch_inputs_per_request)

    def lines() -> Iterator[dict[str, Any]]:
        # Consecutive seqs per line (a fallback's remaining seqs may have gaps).
        runs: list[list[tuple[int, str, int]]] = []
        for row in rows:
            if runs and runs[-1][-1][0] + 1 == row[0]:
                runs[-1].append(row)
            else:
                runs.append([row])
        for run in runs:
            for request in pack_requests(run, limits):
                result = embed_sync(
                    client,
                    [(text, tokens) for _, text, tokens in request],
                    model=job.model,
                    dimensions=dims,
                    bucket=bucket,
                    max_wait_seconds=settings.rate_limit_max_wait_seconds,
                    limits=limits,
                )
                totals["billed"] += result.billed_tokens
                totals["requests"] += result.requests
                totals["rate_limited"] += result.rate_limited
                totals["waited"] += result.waited_seconds
                first = request[0][0]
                yield BatchOutputLine(
                    custom_id=custom_id(job.job_id, first, first + len(request)),
                    response=OutputResponse(
                        status_code=200,
                        body=EmbeddingsBody(
                            model=job.model,
                            data=[
                                EmbeddingItem(index=i, embedding=_b64(v))
                                for i, v in enumerate(result.vectors)
                            ],
                            usage=Usage(
                                prompt_tokens=result.billed_tokens,
                                total_tokens=result.billed_tokens,
                            ),
                        ),
                    ),
                ).model_dump(exclude_none=True)

    phase = "fallback" if fallback else "urgent"
    location = S3Location(bucket=settings.work_bucket, key=sync_output_key(job.job_id, phase))
    s3.write_jsonl(location.bucket, location.key, lines())
    emit("sync_requests", totals["requests"], MetricUnit.Count)
    if totals["waited"]:
        emit("throttled_waits", 1, MetricUnit.Count)
    logger.info("embedded synchronously", extra={**totals, "chunks": len(rows)})
    output = SyncOutput(
        location=location,
        billed_tokens=int(totals["billed"]),
        requests=int(totals["requests"]),
        rate_limited=int(totals["rate_limited"]),
    )
    return job.model_copy(update={"sync_outputs": [*job.sync_outputs, output]})
