"""RecordCost: commit actual usage, release the rest, write the ledger record, emit metrics."""

from __future__ import annotations

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from .. import pricing
from ..aws import budget, jobs
from ..metrics import emit
from ..models import JobSummary, WrittenJob
from ..settings import Settings

logger = Logger(child=True)


def record_cost(job: WrittenJob, settings: Settings) -> JobSummary:
    """Settle the reservation with the billed tokens and record what the job cost.

    Batch API tokens are priced at the batch price, synchronous ones at the standard price;
    cached content costs nothing. Ledger record (usage table, ``pk = ledger#<day>``,
    ``sk = job_id``): job, source, day, model, api, tokens billed, price per 1M used, cost,
    standard-price cost of the same tokens, naive cost (every chunk through the synchronous
    API at standard price, cache hits included), saved, cache hits and the cost they
    avoided (USD). Idempotent: a retry commits nothing twice and overwrites the same record.
    """
    batch_tokens = job.written.billed_tokens
    sync_tokens = job.written.sync_billed_tokens
    billed = batch_tokens + sync_tokens
    budget.settle(
        jobs_table=settings.jobs_table,
        usage_table=settings.usage_table,
        job_id=job.job_id,
        billed_tokens=billed,
        outcome="committed",
    )
    price = pricing.price_for(job.model)
    cost = pricing.cost_usd(batch_tokens, price.batch) + pricing.cost_usd(
        sync_tokens, price.standard
    )
    standard = pricing.cost_usd(billed, price.standard)
    naive = pricing.cost_usd(job.tokens, price.standard)
    plan = job.embed
    api: str = plan.api if plan is not None else "batch"
    if sync_tokens and batch_tokens:
        api = "batch+sync"  # a batch finished through the synchronous fallback
    elif sync_tokens:
        api = "sync"
    cached_tokens = plan.cached_tokens if plan is not None else 0
    avoided_price = price.standard if api == "sync" else price.batch
    day = job.reservation.day
    summary = JobSummary(
        job_id=job.job_id,
        bucket=job.document.bucket,
        key=job.document.key,
        model=job.model,
        dimensions=job.dimensions,
        chunks=job.chunks,
        tokens=job.tokens,
        billed_tokens=billed,
        vectors_written=job.written.vectors_written,
        cost_usd=float(cost),
        standard_cost_usd=float(standard),
        saved_usd=float(standard - cost),
        day=day,
        documents=job.documents,
        rejected_count=job.rejected_count,
        rejected=job.rejected,
        api=api,
        cache_hits=plan.cache_hits if plan is not None else 0,
        tokens_saved=cached_tokens,
        cost_avoided_usd=float(pricing.cost_usd(cached_tokens, avoided_price)),
        naive_cost_usd=float(naive),
    )
    jobs.put_ledger_record(
        settings.usage_table,
        day,
        job.job_id,
        {
            "job_id": job.job_id,
            "source": f"s3://{job.document.bucket}/{job.document.key}",
            "day": day,
            "model": job.model,
            "status": "SUCCEEDED",
            "api": api,
            "tokens": billed,
            "price_per_million_usd": float(price.standard if api == "sync" else price.batch),
            "cost_usd": summary.cost_usd,
            "standard_cost_usd": summary.standard_cost_usd,
            "saved_usd": summary.saved_usd,
            "naive_cost_usd": summary.naive_cost_usd,
            "cache_hits": summary.cache_hits,
            "tokens_saved": summary.tokens_saved,
            "cost_avoided_usd": summary.cost_avoided_usd,
        },
    )
    jobs.mark_finished(
        settings.jobs_table,
        job.job_id,
        {"status": "SUCCEEDED", **summary.model_dump(exclude={"rejected"})},
    )
    emit("tokens", billed, MetricUnit.Count)
    emit("cost_usd", summary.cost_usd, MetricUnit.NoUnit)
    emit("saved_usd", summary.saved_usd, MetricUnit.NoUnit)
    emit("chunks", job.chunks, MetricUnit.Count)
    emit("vectors_written", summary.vectors_written, MetricUnit.Count)
    logger.info("cost recorded", extra=summary.model_dump(exclude={"rejected"}))
    return summary
