"""RecordCost: commit actual usage, release the rest, write the ledger record, emit metrics.

The group's cost is OpenAI **plus AWS**. The AWS part is counted, not estimated, for
everything the code does: each handler adds its invocation and the AWS requests it made
to the state payload (``aws``), the completer of the wait adds its own, and the Standard
state transitions come from the execution's history. Only the SQS and Pipes requests
that happen before the execution starts are computed from the group's size (one SQS
send per event, one receive and one delete per 10 messages, one Pipes request per event
of at most 64 KB: https://aws.amazon.com/eventbridge/pricing/ and
https://aws.amazon.com/sqs/pricing/); the local stack counts them for real.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from ..aws import metering, s3
from ..aws.budget import budget_store_for, utc_day
from ..aws.clients import client
from ..aws.jobs import job_store_for
from ..aws.ledger import ledger_store_for
from ..metrics import emit
from ..models import DocumentResult, JobSummary, WrittenJob
from ..openai import pricing
from ..records import DocumentOutcome, LedgerRecord, usd
from ..settings import Settings

logger = Logger(child=True)

#: Bytes of per-document results the execution's output may carry: the state payload is
#: capped at 256 KB (https://docs.aws.amazon.com/step-functions/latest/dg/limits-overview.html);
#: every result is also in ``results/<day>/<job>.jsonl``.
MAX_RESULTS_BYTES = 100_000
#: SQS messages one ReceiveMessage returns at most (what a pipe asks for).
SQS_RECEIVE_BATCH = 10


def queue_usage(uploads: int) -> metering.AwsUsage:
    """SQS and Pipes requests that delivered a group of ``uploads`` S3 events."""
    receives = math.ceil(uploads / SQS_RECEIVE_BATCH)
    return metering.AwsUsage(sqs_requests=uploads + 2 * receives, pipes_requests=uploads)


def searchable_seconds(events: list[dict[str, Any]], window_seconds: int) -> float | None:
    """Seconds from the group's first upload to now, when its documents are searchable:
    the execution's age (its first history event) plus the pipe's window, the longest an
    upload waited for its group (``UploadBatchWindowSeconds``). None without a history."""
    if not events:
        return None
    started = events[0].get("timestamp")
    if not isinstance(started, datetime):
        return None
    return (datetime.now(UTC) - started).total_seconds() + window_seconds


def execution_history(execution_arn: str | None) -> list[dict[str, Any]]:
    """The execution's history events so far, oldest first ([] without an ARN)."""
    if not execution_arn:
        return []
    events: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
    while True:
        page = client("stepfunctions").get_execution_history(**kwargs)
        events.extend(page["events"])
        if not page.get("nextToken"):
            break
        kwargs["nextToken"] = page["nextToken"]
    return events


def common_prefix(keys: list[str]) -> str:
    """The documents' common top-level folder (``tenant-a/``), or '' when they differ."""
    tops = {k.split("/", 1)[0] + "/" if "/" in k else "" for k in keys}
    return tops.pop() if len(tops) == 1 else ""


def _results(job: WrittenJob) -> list[DocumentResult]:
    excluded = set(job.excluded_prefixes)
    superseded = {
        *job.superseded_deletes,
        *job.superseded,
        *(job.written.superseded if job.written else []),
    }
    newer = "a newer event of this key (S3 sequencer) was applied first: nothing changed"
    results: list[DocumentResult] = []
    for raw in s3.iter_jsonl(job.outcomes.bucket, job.outcomes.key):
        o = DocumentOutcome.model_validate(raw)
        if (o.object_key or o.key) in superseded and o.status in ("accepted", "deleted"):
            results.append(DocumentResult(key=o.key, status="superseded", reason=newer))
        elif o.status == "accepted" and o.prefix in excluded:
            reason = f"prefix {o.prefix} is over its daily token budget (PrefixTokenLimits)"
            results.append(
                DocumentResult(key=o.key, status="over_budget", reason=reason, encoding=o.encoding)
            )
        elif o.status == "accepted":
            results.append(
                DocumentResult(key=o.key, status="embedded", chunks=o.chunks, tokens=o.tokens,
                               encoding=o.encoding)
            )  # fmt: skip
        else:
            results.append(DocumentResult(key=o.key, status=o.status, reason=o.reason))
    return results


def _with_costs(
    results: list[DocumentResult], openai_usd: float, aws_usd: float, standard_per_million: float
) -> list[DocumentResult]:
    """Each document's share: OpenAI by its tokens, AWS equally, naive at the standard price."""
    embedded = [r for r in results if r.status == "embedded"]
    tokens = sum(r.tokens for r in embedded) or 1
    share = aws_usd / max(1, len(results))
    return [
        r.model_copy(
            update={
                "cost_usd": usd(openai_usd * r.tokens / tokens) if r.status == "embedded" else 0.0,
                "aws_cost_usd": usd(share),
                "naive_cost_usd": usd(r.tokens * standard_per_million / 1_000_000),
            }
        )
        for r in results
    ]


def _fitting(results: list[DocumentResult], max_bytes: int) -> list[DocumentResult]:
    """The first results whose JSON fits in ``max_bytes``."""
    kept: list[DocumentResult] = []
    size = 0
    for r in results:
        size += len(r.model_dump_json(exclude_none=True)) + 1
        if size > max_bytes:
            break
        kept.append(r)
    return kept


def record_cost(job: WrittenJob, settings: Settings) -> JobSummary:
    """Settle the reservation with the billed tokens and record what the group cost.

    Batch API tokens are priced at the batch price, synchronous ones at the standard price;
    cached content costs nothing. Writes one :class:`LedgerRecord` (USD rounded to 9
    decimals; the documents left out by name) and every document's result and cost share
    to ``results/<day>/<job>.jsonl`` (:class:`DocumentResult`), which the record points at.
    Idempotent: a retry commits nothing twice and overwrites the same record.

    Returns:
        The summary the execution ends with, listing each document's result.
    """
    written = job.written
    batch_tokens = written.billed_tokens if written else 0
    sync_tokens = written.sync_billed_tokens if written else 0
    billed = batch_tokens + sync_tokens
    if job.reservation is not None:
        budget_store_for(settings).settle(
            job_id=job.job_id, billed_tokens=billed, outcome="committed"
        )
    price = pricing.settings_price(settings, job.model)
    cost = pricing.cost_usd(batch_tokens, price.batch) + pricing.cost_usd(
        sync_tokens, price.standard
    )
    standard = pricing.cost_usd(billed, price.standard)
    naive = pricing.cost_usd(job.tokens, price.standard)
    plan = job.embed
    api = "none" if not billed else ("batch" if not sync_tokens else "sync")
    if sync_tokens and batch_tokens:
        api = "sync+batch"
    cached_tokens = plan.cached_tokens if plan is not None else 0
    results = _results(job)
    history = execution_history(job.execution_arn)
    aws = (
        job.aws
        + (job.outcome.aws if job.outcome is not None else metering.AwsUsage())
        + queue_usage(job.uploads)
        + metering.AwsUsage(
            sfn_transitions=metering.transitions_from_history(history) + 1 if history else 0
        )
        + metering.snapshot()
    )
    aws_cost = usd(aws.cost_usd())
    results = _with_costs(results, float(cost), aws_cost, float(price.standard))
    day = job.reservation.day if job.reservation is not None else utc_day()
    results_key = f"results/{day}/{job.job_id}.jsonl"  # kept: jobs/ expires after 14 days
    embedded = [r for r in results if r.status == "embedded"]
    rejected = [f"{r.key}: {r.reason}" for r in results if r.status in ("rejected", "over_budget")]
    summary = JobSummary(
        job_id=job.job_id,
        bucket=job.bucket,
        source=job.source,
        model=job.model,
        dimensions=job.dimensions,
        uploads=job.uploads,
        documents=len(embedded),
        chunks=sum(r.chunks for r in embedded),
        tokens=job.tokens,
        billed_tokens=billed,
        repaid_tokens=written.repaid_tokens if written else 0,
        vectors_written=written.vectors_written if written else 0,
        batches=len(job.final_batches),
        cost_usd=usd(cost),
        aws_cost_usd=aws_cost,
        total_cost_usd=usd(float(cost) + aws_cost),
        standard_cost_usd=usd(standard),
        saved_usd=usd(standard - cost),
        naive_cost_usd=usd(naive),
        day=day,
        rejected_count=len(rejected),
        rejected=rejected[:20],
        api=api,
        cache_hits=plan.cache_hits if plan is not None else 0,
        tokens_saved=cached_tokens,
        cost_avoided_usd=usd(pricing.cost_usd(cached_tokens, price.batch)),
        aws=aws,
        results=_fitting(results, MAX_RESULTS_BYTES),
        results_file=f"s3://{settings.work_bucket}/{results_key}",
    )
    s3.write_jsonl(settings.work_bucket, results_key, (r.model_dump() for r in results))
    record = LedgerRecord(
        **summary.model_dump(
            include={
                "rejected_count",
                "rejected",
                "job_id",
                "day",
                "model",
                "api",
                "documents",
                "batches",
                "cost_usd",
                "aws_cost_usd",
                "total_cost_usd",
                "standard_cost_usd",
                "saved_usd",
                "naive_cost_usd",
                "cache_hits",
                "tokens_saved",
                "cost_avoided_usd",
                "repaid_tokens",
            }
        ),
        source=f"s3://{job.bucket}/{job.source}",
        status="SUCCEEDED",
        prefix=common_prefix([r.key for r in results]),
        tokens=billed,
        price_per_million_usd=float(price.standard if api == "sync" else price.batch),
        sfn_transitions=aws.sfn_transitions,
        lambda_requests=aws.lambda_requests,
        lambda_gb_seconds=aws.lambda_gb_seconds,
        results=f"s3://{settings.work_bucket}/{results_key}",
    )
    ledger_store_for(settings).put(record)
    job_store_for(settings).mark_succeeded(summary)
    emit("tokens", billed, MetricUnit.Count)
    emit("cost_usd", summary.cost_usd, MetricUnit.NoUnit)
    emit("aws_cost_usd", aws_cost, MetricUnit.NoUnit)
    emit("saved_usd", summary.saved_usd, MetricUnit.NoUnit)
    emit("chunks", summary.chunks, MetricUnit.Count)
    emit("vectors_written", summary.vectors_written, MetricUnit.Count)
    latency = searchable_seconds(history, settings.upload_batch_window_seconds)
    if latency is not None and summary.documents:
        emit("searchable_seconds", latency, MetricUnit.Seconds)
    logger.info("cost recorded", extra=summary.model_dump(exclude={"rejected", "results"}))
    return summary
