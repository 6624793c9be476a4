"""RecordCost: commit actual usage, release the rest, write the ledger record, emit metrics."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from .. import pricing
from ..aws import budget, jobs
from ..models import JobSummary, WrittenJob
from ..settings import Settings

logger = Logger(child=True)
metrics = Metrics()


def record_cost(job: WrittenJob, settings: Settings) -> JobSummary:
    """Settle the reservation with the billed tokens and record what the job cost.

    Ledger record (usage table, ``pk = ledger#<day>``, ``sk = job_id``): job, source, day,
    model, api, tokens billed, price per 1M used, cost, standard-price cost of the same
    tokens, naive cost (every chunk through the synchronous API at standard price), saved
    (USD).
    Idempotent: a retry commits nothing twice and overwrites the same record.
    """
    billed = job.written.billed_tokens
    budget.settle(
        jobs_table=settings.jobs_table,
        usage_table=settings.usage_table,
        job_id=job.job_id,
        billed_tokens=billed,
        outcome="committed",
    )
    cost = pricing.breakdown(job.model, billed)
    price = pricing.price_for(job.model)
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
        cost_usd=float(cost.batch_usd),
        standard_cost_usd=float(cost.standard_usd),
        saved_usd=float(cost.saved_usd),
        day=day,
        documents=job.documents,
        rejected_count=job.rejected_count,
        rejected=job.rejected,
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
            "tokens": billed,
            "price_per_million_usd": float(price.batch),
            "cost_usd": summary.cost_usd,
            "standard_cost_usd": summary.standard_cost_usd,
            "saved_usd": summary.saved_usd,
            "api": "batch",
            "naive_cost_usd": float(pricing.breakdown(job.model, job.tokens).standard_usd),
        },
    )
    jobs.mark_finished(
        settings.jobs_table,
        job.job_id,
        {"status": "SUCCEEDED", **summary.model_dump(exclude={"rejected"})},
    )
    metrics.add_metric(name="tokens", unit=MetricUnit.Count, value=billed)
    metrics.add_metric(name="cost_usd", unit=MetricUnit.NoUnit, value=summary.cost_usd)
    metrics.add_metric(name="saved_usd", unit=MetricUnit.NoUnit, value=summary.saved_usd)
    metrics.add_metric(name="chunks", unit=MetricUnit.Count, value=job.chunks)
    metrics.add_metric(name="vectors_written", unit=MetricUnit.Count, value=summary.vectors_written)
    logger.info("cost recorded", extra=summary.model_dump())
    return summary
