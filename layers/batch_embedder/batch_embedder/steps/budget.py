"""BudgetCheck: reserve the job's estimated tokens against today's (UTC) budgets.

Also the scheduled sweep that releases reservations crashed executions left behind.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from ..aws import budget
from ..errors import BudgetExceededError
from ..metrics import emit
from ..models import BudgetDecision, ChunkedJob, SweepResult
from ..settings import Settings

logger = Logger(child=True)

#: Fractions of a limit past which BudgetCheck warns (log + metric); the template's
#: CloudWatch alarm fires on ``budget_used_pct`` >= 90.
WARN_AT = (0.8, 0.9)


def scopes_for(settings: Settings, model: str, key: str) -> list[budget.BudgetScope]:
    """The counters a job is charged to: its model, and each configured prefix of its key."""
    scopes = [budget.model_scope(model, settings.daily_token_limit)]
    for prefix, limit in sorted(settings.prefix_token_limits.items()):
        if key.startswith(prefix):
            scopes.append(budget.prefix_scope(prefix, limit))
    return scopes


def _warn(settings: Settings, scopes: list[budget.BudgetScope], tokens: int, day: str) -> None:
    highest = 0.0
    for scope in scopes:
        used = budget.usage_fraction(settings.usage_table, day, scope)
        before = (
            (used * scope.limit_tokens - tokens) / scope.limit_tokens if scope.limit_tokens else 0
        )
        highest = max(highest, used)
        for threshold in WARN_AT:
            if before < threshold <= used:
                logger.warning(
                    "daily budget threshold passed",
                    extra={"scope": scope.name, "day": day, "threshold_pct": int(threshold * 100),
                           "used_pct": round(used * 100, 1)},
                )  # fmt: skip
                emit("budget_threshold_passed", 1, MetricUnit.Count)
    emit("budget_used_pct", round(highest * 100, 2), MetricUnit.Percent)


def reserve_budget(job: ChunkedJob, settings: Settings) -> BudgetDecision:
    """Reserve the tokens the job will pay for in every scope of the job (idempotent per job).

    That is ``job.embed.tokens`` once CheckCache ran (cached content costs nothing), else
    ``job.tokens``.

    Returns:
        The job with its reservation; with ``BUDGET_EXCEEDED_ACTION=wait`` and no room
        today, no reservation and ``budget_wait_seconds`` until the next UTC day.

    Raises:
        BudgetExceededError: the tokens do not fit (and the action is ``fail``, or the job
            is larger than a whole day's limit); the message says how many tokens were
            asked for and how many remain. Nothing is reserved then.
    """
    scopes = scopes_for(settings, job.model, job.document.key)
    tokens = job.embed.tokens if job.embed is not None else job.tokens  # cache hits are free
    try:
        reservation = budget.reserve(
            jobs_table=settings.jobs_table,
            usage_table=settings.usage_table,
            job_id=job.job_id,
            key=job.document.key,
            tokens=tokens,
            scopes=scopes,
            hold_seconds=settings.reservation_hold_seconds,
        )
    except BudgetExceededError as exc:
        if settings.budget_exceeded_action == "wait" and tokens <= exc.limit_tokens:
            wait = budget.seconds_to_next_day()
            logger.warning(
                "over budget: waiting for the next UTC day", extra={"wait_seconds": wait}
            )
            emit("budget_waits", 1, MetricUnit.Count)
            return BudgetDecision(**job.model_dump(), budget_wait_seconds=wait)
        raise
    _warn(settings, scopes, reservation.tokens, reservation.day)
    logger.info("reserved", extra={"tokens": reservation.tokens, "day": reservation.day})
    return BudgetDecision(**job.model_dump(), reservation=reservation)


def sweep_reservations(settings: Settings) -> SweepResult:
    """Release reservations held past ``RESERVATION_HOLD_SECONDS`` (crashed executions)."""
    released = budget.sweep_expired(
        jobs_table=settings.jobs_table, usage_table=settings.usage_table
    )
    if released:
        logger.warning("released stale reservations", extra={"jobs": released})
    emit("reservations_swept", len(released), MetricUnit.Count)
    return SweepResult(
        released_jobs=[job for job, _ in released], released_tokens=sum(t for _, t in released)
    )
