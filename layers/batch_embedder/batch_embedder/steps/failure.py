"""RecordFailure: every failure path ends here before its Fail state.

It names the Fail state and writes a cause that names the file and the reason. It brings
in the job's batches (running ones are cancelled, finished ones ingested: their vectors
are kept in the content store), commits exactly what the content store recorded as
billed (batch and synchronous), releases the rest of the reservation and the job's claims
and queue tokens, and writes the ledger record. Whatever it cannot reach now (OpenAI
down) the reconciler brings in later, settling the difference.
"""

from __future__ import annotations

import json

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from ..aws import metering
from ..aws.budget import budget_store_for, utc_day
from ..aws.jobs import job_store_for
from ..aws.ledger import ledger_store_for
from ..aws.registry import batch_registry_for
from ..db.content import Billed
from ..failure_models import FailedState, FailureInput, FailureOutcome
from ..metrics import emit
from ..openai import pricing
from ..records import LedgerRecord, usd
from ..settings import Settings
from .batch import release_queue
from .chunk import describe
from .cost import common_prefix, queue_usage
from .settle import collect_batches, job_bill, openai_cost, release_claims

logger = Logger(child=True)

ERROR_STATES: dict[str, FailedState] = {
    "InvalidDocumentError": "InvalidDocument",
    "BudgetExceededError": "BudgetExceeded",
    "EmbeddingsIncompleteError": "EmbeddingsIncomplete",
    "CacheNotReadyError": "EmbeddingsIncomplete",
    "BatchFailedError": "BatchFailed",
    "BatchExpiredError": "BatchExpired",
    "BatchCancelledError": "BatchCancelled",
    "ProviderAuthFailedError": "ProviderAuthFailed",
    "AuthenticationError": "ProviderAuthFailed",
    "PermissionDeniedError": "ProviderAuthFailed",
}


def _source_key(failure: FailureInput) -> str:
    if failure.source:
        return failure.source
    if failure.uploads.keys:
        return describe(failure.uploads.keys)
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


def _bill(settings: Settings, failure: FailureInput, batches: int) -> Billed:
    """The job's bill; 0 when the database cannot be reached and nothing was bought yet.

    Raises:
        psycopg.OperationalError: the database is down and something may have been bought
            (the state machine retries; the sweep settles it if it never comes back).
    """
    try:
        return job_bill(settings, failure.job_id)
    except Exception:
        if batches or failure.sync_outputs:
            raise
        logger.exception("could not read the bill; nothing was bought before this state")
        return Billed()


def record_failure(failure: FailureInput, settings: Settings) -> FailureOutcome:
    """Record why the job failed, settle its reservation and pick the Fail state.

    Returns:
        The Fail state (``InvalidDocument``, ``BudgetExceeded``, ``BatchFailed``,
        ``BatchExpired``, ``BatchCancelled``, ``EmbeddingsIncomplete`` or ``PipelineError``),
        the error name and a cause for a person.
    """
    key = _source_key(failure)
    model = failure.model or settings.embedding_model
    collected = collect_batches(settings, failure.job_id)
    _, registered = batch_registry_for(settings).group(failure.job_id)
    bill = _bill(settings, failure, len(registered))
    release_claims(settings, failure.job_id)
    files = [b.input_file_id for b in registered] + [f.file_id for f in failure.batch_files or []]
    if files:  # running batches were cancelled above: none counts against the queue now
        release_queue(settings, failure.job_id, model, sorted(set(files)))
    if failure.error is not None:
        error = failure.error.error
        state: FailedState = ERROR_STATES.get(error, "PipelineError")
        message = error_message(failure.error.cause)
        cause = message if state != "PipelineError" else f"{key}: {error}: {message}"
    else:  # every path here comes from a Catch; no error is a bug: say so plainly
        state, error = "PipelineError", "PipelineError"
        cause = f"{key}: RecordFailure was reached without an error"
    if collected.errors:
        cause += f" (batches left for the reconciler: {'; '.join(collected.errors)[:500]})"
    released, _ = budget_store_for(settings).settle(
        job_id=failure.job_id, billed_tokens=bill.tokens, outcome="released"
    )
    aws = failure.aws + queue_usage(failure.uploads.count) + metering.snapshot()
    if failure.outcome is not None:
        aws = aws + failure.outcome.aws
    jobs = job_store_for(settings)
    item = jobs.get(failure.job_id)
    price = pricing.settings_price(settings, model)
    openai_usd, standard_usd = openai_cost(price, bill)
    day = item.reservation_day or utc_day()
    aws_cost = usd(aws.cost_usd())
    only_sync = bill.sync_tokens == bill.tokens > 0
    record = LedgerRecord(
        job_id=failure.job_id,
        source=key,
        day=day,
        model=model,
        status="FAILED",
        api="sync+batch"
        if bill.sync_tokens and bill.batch_tokens
        else ("sync" if bill.sync_tokens else "batch"),
        prefix=common_prefix([key]),
        batches=len(registered),
        tokens=bill.tokens,
        repaid_tokens=bill.repaid_tokens,
        price_per_million_usd=float(price.standard if only_sync else price.batch),
        cost_usd=usd(openai_usd),
        aws_cost_usd=aws_cost,
        total_cost_usd=usd(float(openai_usd) + aws_cost),
        standard_cost_usd=usd(standard_usd),
        saved_usd=usd(standard_usd - openai_usd),
        naive_cost_usd=usd(standard_usd),
        lambda_requests=aws.lambda_requests,
        lambda_gb_seconds=aws.lambda_gb_seconds,
    )
    ledger_store_for(settings).put(record)
    jobs.mark_failed(failure.job_id, failed_state=state, cause=cause[:4000], source_key=key)
    emit("failed_jobs", 1, MetricUnit.Count)
    logger.warning("job failed", extra={"failed_state": state, "cause": cause})
    return FailureOutcome(
        job_id=failure.job_id,
        failed_state=state,
        error=error,
        cause=cause[:32000],
        released_tokens=released,
        billed_tokens=bill.tokens,
    )
