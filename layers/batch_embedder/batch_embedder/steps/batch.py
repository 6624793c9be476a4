"""BuildAndUploadJsonl and CreateBatch: the OpenAI Batch side of the workflow.

Waiting for the batches is not here: see ``steps.complete`` (task token, webhook,
reconciler).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import openai
from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from openai.types import Batch

from ..aws import s3
from ..aws.jobs import CREATING, job_store_for
from ..aws.limiters import batch_queue
from ..aws.registry import batch_registry_for
from ..metrics import emit
from ..models import BatchFile, BatchRef, BatchStatus, ReservedJob, SubmittedJob, UploadedJob
from ..openai.batch_files import BatchLimits, tokens_per_request, write_batch_files
from ..openai.client import (
    batch_endpoint,
    get_client,
    provider_calls,
    raise_if_quota_exhausted,
    request_dimensions_for,
    request_model,
)
from ..records import EmbedRow
from ..settings import Settings

logger = Logger(child=True)

#: Statuses after which a batch changes no more (OpenAI Batch guide).
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})
#: How far back CreateBatch looks for a batch it may have created before a crash.
RECOVERY_SCAN_LIMIT = 500
#: Seconds an input file lives at most: the 24 h completion window plus a day. It is
#: deleted as soon as its batch ends; the expiry only catches files a retry orphaned
#: (https://platform.openai.com/docs/api-reference/files/create).
INPUT_FILE_TTL_SECONDS = 48 * 3600


def build_and_upload_jsonl(
    job: ReservedJob, settings: Settings, *, limits: BatchLimits | None = None
) -> UploadedJob:
    """Pack what is left to embed into ``/v1/embeddings`` request lines and upload the files.

    The rows come from CheckCache's embed manifest (distinct contents not yet stored),
    less those of urgent documents (already embedded synchronously) and those only needed
    by documents of prefixes over budget.

    Files are written to a temporary directory (Lambda: ``/tmp``) and uploaded with
    ``purpose="batch"`` and an expiry; the round's file ids are recorded in the job's item,
    so a retry reuses them.

    Raises:
        ProviderUnavailableError: OpenAI did not answer (connection error, timeout, 5xx)
            after the SDK's retries; the state machine waits in
            ``ProviderDegradedUpload`` and runs the step again.
        ProviderOutageTooLongError: this execution has waited ``PROVIDER_OUTAGE_SECONDS``.
        openai.APIError: any other failed upload (a 4xx), after the SDK's retries.
    """
    jobs = job_store_for(settings)
    recorded = jobs.recorded_uploads(job.job_id, job.embed_round)
    if recorded is not None:  # a retry: the files of this round are uploaded already
        return UploadedJob(**job.model_dump(), batch_files=recorded)
    client = get_client(settings)
    uploaded: list[BatchFile] = []
    assert job.embed is not None and job.embed.manifest is not None, "CheckCache runs first"
    # The next round takes the pending contents (urgent or not); the first, the plan's
    # non-urgent ones (the urgent ones went through EmbedSync).
    source = job.pending.manifest if job.pending is not None else job.embed.manifest
    first_round = job.pending is None
    excluded = set(job.excluded_prefixes)
    with (
        provider_calls(settings, job_id=job.job_id, source=job.source),
        tempfile.TemporaryDirectory(prefix="batch-embedder-") as tmp,
    ):
        rows = (
            (r.seq, r.text, r.token_count)
            for r in (EmbedRow.model_validate(x) for x in s3.iter_jsonl(source.bucket, source.key))
            if not (first_round and r.urgent) and r.needed(excluded)
        )
        planned = write_batch_files(
            rows,
            job_id=job.job_id,
            model=request_model(settings, job.model),
            dimensions=request_dimensions_for(settings, job.model, job.dimensions),
            directory=Path(tmp),
            url=batch_endpoint(settings),
            limits=limits
            or BatchLimits(
                inputs_per_request=settings.batch_inputs_per_request,
                tokens_per_request=tokens_per_request(job.model),
                tokens_per_file=settings.batch_enqueued_token_cap,
            ),
        )
        for f in planned:
            with f.path.open("rb") as fh:
                # Expires on its own: a file a retried upload orphaned is never left behind.
                created = client.files.create(
                    file=(f.path.name, fh),
                    purpose="batch",
                    expires_after={"anchor": "created_at", "seconds": INPUT_FILE_TTL_SECONDS},
                )
            uploaded.append(
                BatchFile(
                    file_id=created.id,
                    requests=f.requests,
                    inputs=f.inputs,
                    tokens=f.tokens,
                    bytes=f.bytes,
                )
            )
    jobs.record_uploads(job.job_id, job.embed_round, uploaded)
    logger.info("uploaded batch files", extra={"files": [u.file_id for u in uploaded]})
    return UploadedJob(**job.model_dump(), batch_files=uploaded)


def _find_created_batch(client: openai.OpenAI, job_id: str, input_file_id: str) -> Batch | None:
    for i, batch in enumerate(client.batches.list(limit=100)):
        if i >= RECOVERY_SCAN_LIMIT:
            break
        meta = batch.metadata or {}
        if meta.get("job_id") == job_id and batch.input_file_id == input_file_id:
            return batch
    return None


def queue_key(job_id: str, input_file_id: str) -> str:
    """The batch-queue record of one batch input file."""
    return f"{job_id}/{input_file_id}"


def release_queue(settings: Settings, job_id: str, model: str, input_file_ids: list[str]) -> int:
    """Give the enqueued tokens of these files' batches back (each once).

    Returns:
        Tokens given back.
    """
    queue = batch_queue(settings, model)
    released = sum(queue.release_batch(queue_key(job_id, f)) for f in input_file_ids)
    if released:
        emit("enqueued_tokens", queue.state().enqueued_tokens, MetricUnit.Count)
    return released


def create_batches(job: UploadedJob, settings: Settings) -> SubmittedJob:
    """Create one batch per uploaded file, exactly once per file across Lambda retries.

    Before a batch is created its tokens are taken from the Batch API's queue limits
    (creations per hour, enqueued-token cap), kept in DynamoDB for every execution. When
    the queue is full the job comes back ``queued`` with the seconds to wait, and the
    workflow calls CreateBatch again after a Wait state instead of failing at OpenAI's
    validation.

    Each file is first claimed in the job's DynamoDB item with a conditional write; the
    batch id is recorded after creation. A retry that finds a claim without an id (the
    earlier attempt died between the two) looks the batch up by its metadata before
    creating one.

    Raises:
        QuotaExhaustedError: OpenAI says the account has no credit.
        ValueError: one file alone holds more tokens than the enqueued-token cap.
        ProviderUnavailableError: OpenAI did not answer (connection error, timeout, 5xx)
            after the SDK's retries; the state machine waits in
            ``ProviderDegradedCreate`` and runs the step again (a batch created
            before the error is found by its claim and metadata, never created twice).
        ProviderOutageTooLongError: this execution has waited ``PROVIDER_OUTAGE_SECONDS``.
        openai.APIError: any other failed creation (a 4xx), after the SDK's retries.
    """
    with provider_calls(settings, job_id=job.job_id, source=job.source):
        return _create_batches(job, settings)


def _create_batches(job: UploadedJob, settings: Settings) -> SubmittedJob:
    client = get_client(settings)
    queue = batch_queue(settings, job.model)
    refs: list[BatchRef] = []
    assert job.embed is not None and job.embed.manifest is not None, "CheckCache runs first"
    source = f"s3://{job.bucket}/{job.source}"
    registry = batch_registry_for(settings)
    jobs = job_store_for(settings)
    for f in job.batch_files:
        recorded = jobs.recorded_batch(job.job_id, f.file_id)
        if recorded and recorded != CREATING:
            refs.append(BatchRef(batch_id=recorded, input_file_id=f.file_id))
            continue
        batch: Batch | None = None
        if recorded == CREATING:  # an earlier attempt died between create and record
            batch = _find_created_batch(client, job.job_id, f.file_id)
        if batch is None:
            grant = queue.reserve_batch(queue_key(job.job_id, f.file_id), f.tokens)
            if not grant.granted:
                wait = max(1, math.ceil(grant.wait_seconds))
                emit("throttled_waits", 1, MetricUnit.Count)
                logger.info("batch queue full", extra={"wait_seconds": wait, "tokens": f.tokens})
                return SubmittedJob(
                    **job.model_dump(), batches=refs, create_status="queued", wait_seconds=wait
                )
            if recorded is None and not jobs.claim_batch(job.job_id, f.file_id):
                # a concurrent attempt claimed it first
                batch = _find_created_batch(client, job.job_id, f.file_id)
        if batch is None:
            try:
                batch = client.batches.create(
                    input_file_id=f.file_id,
                    endpoint=batch_endpoint(settings),  # type: ignore[arg-type]
                    completion_window="24h",
                    output_expires_after={
                        "anchor": "created_at",
                        "seconds": settings.output_retention_days * 86400,
                    },
                    metadata={
                        "job_id": job.job_id,
                        "source": source[:512],
                        "app": "batch-embedder",
                    },
                )
            except openai.RateLimitError as exc:
                raise_if_quota_exhausted(exc)
                raise
            emit("batches_created", 1, MetricUnit.Count)
        jobs.record_batch(job.job_id, f.file_id, batch.id)
        ref = BatchRef(batch_id=batch.id, input_file_id=f.file_id, status=batch.status)
        registry.register(
            job.job_id,
            job.model,
            ref,
            dimensions=job.dimensions,
            manifest=job.embed.manifest,
            execution_arn=job.execution_arn,
        )
        refs.append(ref)
    logger.info("batches created", extra={"batches": [r.batch_id for r in refs]})
    emit("enqueued_tokens", queue.state().enqueued_tokens, MetricUnit.Count)
    return SubmittedJob(**job.model_dump(), batches=refs, create_status="created")


def overall_status(statuses: list[str]) -> BatchStatus:
    """One status for a job's batches: a failure wins, then all-completed, else still going.

    ``failed`` > ``expired`` > ``cancelled`` as soon as any batch has it (RecordFailure
    cancels the others); ``completed`` only when all are; otherwise the least advanced.
    """
    for bad in ("failed", "expired", "cancelled"):
        if bad in statuses:
            return bad
    if all(s == "completed" for s in statuses):
        return "completed"
    for going in ("validating", "in_progress", "finalizing", "cancelling"):
        if going in statuses:
            return going
    return "in_progress"


def usage_tokens(batch: Batch) -> int | None:
    """Tokens the batch billed, from its ``usage`` (None when the API gives none)."""
    usage = getattr(batch, "usage", None)
    tokens = getattr(usage, "input_tokens", None) if usage is not None else None
    return int(tokens) if tokens is not None else None


def to_ref(batch: Batch) -> BatchRef:
    """What the workflow keeps of a retrieved batch."""
    counts = batch.request_counts
    return BatchRef(
        batch_id=batch.id,
        input_file_id=batch.input_file_id,
        status=batch.status,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        completed_requests=counts.completed if counts else 0,
        failed_requests=counts.failed if counts else 0,
        total_requests=counts.total if counts else 0,
    )
