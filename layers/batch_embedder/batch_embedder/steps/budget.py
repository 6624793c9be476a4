"""BudgetCheck: reserve the job's estimated tokens against today's (UTC) limit."""

from __future__ import annotations

from aws_lambda_powertools import Logger

from ..aws import budget
from ..models import ChunkedJob, ReservedJob
from ..settings import Settings

logger = Logger(child=True)


def reserve_budget(job: ChunkedJob, settings: Settings) -> ReservedJob:
    """Reserve ``job.tokens`` under ``DAILY_TOKEN_LIMIT`` (idempotent per job).

    Raises:
        BudgetExceededError: the tokens do not fit; its message says how many were asked
            for and how many remain. Nothing is reserved then.
    """
    reservation = budget.reserve(
        jobs_table=settings.jobs_table,
        usage_table=settings.usage_table,
        job_id=job.job_id,
        key=job.document.key,
        tokens=job.tokens,
        limit_tokens=settings.daily_token_limit,
    )
    logger.info("reserved", extra={"tokens": reservation.tokens, "day": reservation.day})
    return ReservedJob(**job.model_dump(), reservation=reservation)
