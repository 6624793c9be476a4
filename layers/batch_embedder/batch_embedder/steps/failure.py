"""RecordFailure: every failure path ends here before its Fail state.

It names the Fail state, writes a cause that names the file and the reason, cancels
batches still running, commits whatever was billed anyway (an expired batch's finished
part, the good lines of a batch with failed ones) and releases the rest of the
reservation, so no budget is left reserved.
"""

from __future__ import annotations

import json

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from .. import pricing
from ..aws import budget, jobs, metering
from ..db import cache
from ..db.connection import connect_settings
from ..metrics import emit
from ..models import BatchRef, FailedState, FailureInput, FailureOutcome
from ..openai_client import get_client
from ..openai_files import iter_jsonl_file
from ..records import BatchOutputLine, LedgerRecord, usd
from ..settings import Settings
from .batch import TERMINAL, release_queue, to_ref, usage_tokens
from .chunk import describe
from .cost import common_prefix, queue_usage

logger = Logger(child=True)

ERROR_STATES: dict[str, FailedState] = {
    "InvalidDocumentError": "InvalidDocument",
    "BudgetExceededError": "BudgetExceeded",
    "EmbeddingsIncompleteError": "EmbeddingsIncomplete",
    "CacheNotReadyError": "EmbeddingsIncomplete",
}
BATCH_STATES: dict[str, FailedState] = {
    "failed": "BatchFailed",
    "expired": "BatchExpired",
    "cancelled": "BatchCancelled",
}


def _source_key(failure: FailureInput) -> str:
    if failure.source:
        return failure.source
    if isinstance(failure.uploads, list) and failure.uploads:
        return describe([u.key for u in failure.uploads])
    return "<unknown object>"


def error_message(cause: str) -> str:
    """The ``errorMessage`` inside a Lambda error's Cause (JSON), or the cause as it is."""
    try:
        parsed = json.loads(cause)
    except (TypeError, ValueError):
        return cause
    if isinstance(parsed, dict) and "errorMessage" in parsed:
        return str(parsed["errorMessage"])
    return cause


def _batch_cause(key: str, status: str, batches: list[BatchRef], details: list[str]) -> str:
    done = sum(b.completed_requests for b in batches)
    failed = sum(b.failed_requests for b in batches)
    total = sum(b.total_requests for b in batches)
    ids = ", ".join(b.batch_id for b in batches if b.status == status)
    text = (
        f"{key}: batch {ids} ended '{status}' with {done}/{total} requests completed "
        f"and {failed} failed; no vectors were written"
    )
    return f"{text}; {'; '.join(details)}" if details else text


def _billed_tokens(
    settings: Settings, batch_ids: list[str]
) -> tuple[int, list[BatchRef], list[str]]:
    """Tokens billed by the job's batches so far; cancels those still running."""
    client = get_client(settings)
    billed = 0
    refs: list[BatchRef] = []
    details: list[str] = []
    for batch_id in batch_ids:
        batch = client.batches.retrieve(batch_id)
        if batch.status not in TERMINAL and batch.status != "cancelling":
            batch = client.batches.cancel(batch_id)
        refs.append(to_ref(batch))
        for err in (batch.errors.data or []) if batch.errors else []:
            details.append(f"line {err.line}: {err.message}" if err.line else str(err.message))
        tokens = usage_tokens(batch)
        if tokens is not None:
            billed += tokens
        elif batch.output_file_id:
            for record in iter_jsonl_file(client, batch.output_file_id):
                billed += BatchOutputLine.model_validate(record).billed_tokens
    return billed, refs, details


def _release_claims(settings: Settings, job_id: str) -> None:
    """Let other executions embed what this one had claimed (best effort: claims also go
    stale after ``CLAIM_STALE_SECONDS``)."""
    try:
        with connect_settings(settings) as conn, conn.transaction():
            cache.release_claims(conn, job_id)
    except Exception:
        logger.exception("could not release the job's content claims; they will go stale")


def record_failure(failure: FailureInput, settings: Settings) -> FailureOutcome:
    """Record why the job failed, settle its reservation and pick the Fail state.

    Returns:
        The Fail state (``InvalidDocument``, ``BudgetExceeded``, ``BatchFailed``,
        ``BatchExpired``, ``BatchCancelled``, ``EmbeddingsIncomplete`` or ``PipelineError``),
        the error name and a cause for a person.
    """
    key = _source_key(failure)
    billed = 0
    details: list[str] = []
    refs = failure.outcome.batches if failure.outcome is not None else (failure.batches or [])
    if refs:
        try:
            billed, refs, details = _billed_tokens(settings, [b.batch_id for b in refs])
        except Exception:  # a failure path must still release the reservation
            logger.exception("could not read the batches' usage; committing 0 tokens")
    _release_claims(settings, failure.job_id)
    if failure.batch_files:
        # Running batches were cancelled above: none counts against the queue any more.
        model = failure.model or settings.embedding_model
        release_queue(settings, failure.job_id, model, [f.file_id for f in failure.batch_files])
    if failure.error is not None:
        error = failure.error.error
        state: FailedState = ERROR_STATES.get(error, "PipelineError")
        message = error_message(failure.error.cause)
        cause = message if state != "PipelineError" else f"{key}: {error}: {message}"
    else:
        status = failure.outcome.status if failure.outcome else "failed"
        state = BATCH_STATES.get(status, "PipelineError")
        error = state
        cause = _batch_cause(key, status, refs, details)
    # Tokens bought through the synchronous API (urgent documents) are billed too.
    sync_billed = sum(o.billed_tokens for o in failure.sync_outputs)
    released, committed = budget.settle(
        jobs_table=settings.jobs_table,
        usage_table=settings.usage_table,
        job_id=failure.job_id,
        billed_tokens=billed + sync_billed,
        outcome="released",
    )
    model = failure.model or settings.embedding_model
    uploads = failure.uploads if isinstance(failure.uploads, int) else len(failure.uploads or [])
    aws = failure.aws + queue_usage(uploads) + metering.snapshot()
    if failure.outcome is not None:
        aws = aws + failure.outcome.aws
    item = jobs.get_job(settings.jobs_table, failure.job_id)
    price = pricing.price_for(model)
    sync_part = min(sync_billed, committed)
    openai_usd = pricing.cost_usd(committed - sync_part, price.batch) + pricing.cost_usd(
        sync_part, price.standard
    )
    standard_usd = pricing.cost_usd(committed, price.standard)
    day = str(item.get("reservation_day") or budget.utc_day())
    aws_cost = usd(aws.cost_usd())
    record = LedgerRecord(
        job_id=failure.job_id,
        source=key,
        day=day,
        model=model,
        status="FAILED",
        api="sync+batch"
        if sync_part and committed > sync_part
        else ("sync" if sync_part else "batch"),
        prefix=common_prefix([key]),
        batches=len(refs),
        tokens=committed,
        price_per_million_usd=float(price.standard if sync_part == committed > 0 else price.batch),
        cost_usd=usd(openai_usd),
        aws_cost_usd=aws_cost,
        total_cost_usd=usd(float(openai_usd) + aws_cost),
        standard_cost_usd=usd(standard_usd),
        saved_usd=usd(standard_usd - openai_usd),
        naive_cost_usd=usd(standard_usd),
        lambda_requests=aws.lambda_requests,
        lambda_gb_seconds=aws.lambda_gb_seconds,
    )
    jobs.put_ledger_record(settings.usage_table, day, failure.job_id, record.model_dump())
    jobs.mark_finished(
        settings.jobs_table,
        failure.job_id,
        {"status": "FAILED", "failed_state": state, "cause": cause[:4000], "source_key": key},
    )
    emit("failed_jobs", 1, MetricUnit.Count)
    logger.warning("job failed", extra={"failed_state": state, "cause": cause})
    return FailureOutcome(
        job_id=failure.job_id,
        failed_state=state,
        error=error,
        cause=cause[:32000],
        released_tokens=released,
        billed_tokens=committed,
    )
