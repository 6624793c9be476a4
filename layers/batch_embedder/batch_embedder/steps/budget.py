"""BudgetCheck: check the API key, then reserve the job's tokens against today's (UTC)
budgets.

Also the scheduled sweep that settles reservations crashed executions left behind.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from ..aws import s3
from ..aws.budget import (
    BudgetScope,
    budget_store_for,
    model_scope,
    prefix_scope,
    seconds_to_next_day,
    utc_day,
)
from ..aws.jobs import job_store_for
from ..errors import BudgetExceededError
from ..metrics import emit
from ..models import BudgetDecision, ChunkedJob
from ..openai.client import check_provider
from ..records import EmbedRow
from ..service_models import ScheduledEvent, SweepResult
from ..settings import Settings
from .cache import api_for
from .settle import collect_batches, resettle

logger = Logger(child=True)

#: Fractions of a limit past which BudgetCheck warns (log + metric); the template's
#: CloudWatch alarm fires on ``budget_used_pct`` >= 90.
WARN_AT = (0.8, 0.9)


def _remaining(settings: Settings, day: str, prefix: str) -> int:
    held = budget_store_for(settings).counter(day, f"prefix:{prefix}").held_tokens
    return max(0, settings.prefix_token_limits[prefix] - held)


def _without(job: ChunkedJob, excluded: set[str]) -> ChunkedJob:
    """The group with the documents of ``excluded`` prefixes left out of the plan."""
    plan = job.embed
    if plan is None or plan.manifest is None:
        return job.model_copy(update={"excluded_prefixes": sorted(excluded)})
    rows = [
        r
        for r in (EmbedRow.model_validate(x) for x in s3.iter_jsonl(plan.manifest.bucket,
                                                                    plan.manifest.key))
        if r.needed(excluded)
    ]  # fmt: skip
    sync_rows = [r for r in rows if r.urgent]
    batch_rows = [r for r in rows if not r.urgent]
    api = api_for(len(sync_rows), len(batch_rows))
    tokens = sum(r.token_count for r in rows)
    new_plan = plan.model_copy(
        update={
            "api": api,
            "chunks": len(rows),
            "tokens": tokens,
            "sync_chunks": len(sync_rows),
            "sync_tokens": sum(r.token_count for r in sync_rows),
            "batch_chunks": len(batch_rows),
            "batch_tokens": sum(r.token_count for r in batch_rows),
            "prefix_tokens": {p: t for p, t in plan.prefix_tokens.items() if p not in excluded},
        }
    )
    return job.model_copy(update={"embed": new_plan, "excluded_prefixes": sorted(excluded)})


def _warn(settings: Settings, scopes: list[BudgetScope], tokens: int, day: str) -> None:
    highest = 0.0
    budgets = budget_store_for(settings)
    for scope in scopes:
        used = budgets.usage_fraction(day, scope)
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
    """Reserve the tokens the group will pay for (idempotent per group).

    That is ``job.embed.tokens`` (cached content costs nothing) against the model's daily
    counter, and each budget prefix's share against that prefix's counter, in one
    DynamoDB transaction. A prefix without room for its share is left out: its documents
    are reported ``over_budget`` and the rest of the group goes on.

    Returns:
        The group with its reservation (and ``excluded_prefixes``); with
        ``BUDGET_EXCEEDED_ACTION=wait`` and no room today for the model, no reservation and
        ``budget_wait_seconds`` until the next UTC day.

    Raises:
        BudgetExceededError: the model's counter has no room (action ``fail``, or the group
            is larger than a whole day's limit); nothing is reserved then.
        ProviderAuthFailedError: the provider refused the API key or token (checked
            first, with one ``GET /v1/models/{model}``, which is not billed:
            ``client.check_provider``, for OpenAI, Azure and compatible servers alike);
            nothing is reserved.
        ProviderUnavailableError: the provider did not answer that check (connection error,
            timeout, 5xx): the state machine waits in ``ProviderDegradedBudget`` and
            checks again; nothing is reserved.
        ProviderOutageTooLongError: this execution has waited ``PROVIDER_OUTAGE_SECONDS``.
    """
    check_provider(settings, job.model, job.source, job_id=job.job_id)
    day = utc_day()
    excluded = {
        p
        for p, tokens in (job.embed.prefix_tokens if job.embed else {}).items()
        if tokens > _remaining(settings, day, p)
    }
    for _ in range(len(settings.prefix_token_limits) + 1):
        if excluded:
            job = _without(job, excluded)
        tokens = job.embed.tokens if job.embed is not None else job.tokens
        shares = job.embed.prefix_tokens if job.embed is not None else {}
        scopes = [model_scope(job.model, settings.daily_token_limit)] + [
            prefix_scope(p, settings.prefix_token_limits[p]) for p in sorted(shares)
        ]
        try:
            reservation = budget_store_for(settings).reserve(
                job_id=job.job_id,
                key=job.source,
                tokens=tokens,
                scopes=scopes,
                hold_seconds=settings.reservation_hold_seconds,
                scope_tokens={f"prefix:{p}": t for p, t in shares.items()},
                day=day,
                model=job.model,
            )
        except BudgetExceededError as exc:
            if exc.scope.startswith("prefix:"):  # lost a race for a prefix: leave it out
                excluded.add(exc.scope.removeprefix("prefix:"))
                continue
            if settings.budget_exceeded_action == "wait" and tokens <= exc.limit_tokens:
                wait = seconds_to_next_day()
                logger.warning(
                    "over budget: waiting for the next UTC day", extra={"wait_seconds": wait}
                )
                emit("budget_waits", 1, MetricUnit.Count)
                return BudgetDecision(**job.model_dump(), budget_wait_seconds=wait)
            raise
        if excluded:
            logger.warning("prefixes over their daily budget", extra={"prefixes": excluded})
            emit("prefixes_over_budget", len(excluded), MetricUnit.Count)
        _warn(settings, scopes, reservation.tokens, reservation.day)
        logger.info("reserved", extra={"tokens": reservation.tokens, "day": reservation.day})
        return BudgetDecision(**job.model_dump(), reservation=reservation)
    raise RuntimeError("budget prefixes kept changing while reserving")  # pragma: no cover


def sweep_reservations(event: ScheduledEvent, settings: Settings) -> SweepResult:
    """Settle the reservations held past ``RESERVATION_HOLD_SECONDS`` (crashed executions)
    at the event's ``time``.

    Each job's running batches are cancelled and its finished ones ingested
    (``steps.settle.collect_batches``); then its reservation is released after committing
    what the content store recorded as billed, and its claims are released.
    """
    swept: list[str] = []
    given_back = committed = 0
    jobs = job_store_for(settings)
    for job_id in budget_store_for(settings).held_jobs(now=event.epoch_seconds()):
        collected = collect_batches(settings, job_id)
        item = jobs.get(job_id)
        before = item.reserved_tokens
        bill = resettle(
            settings,
            job_id,
            model=item.model or settings.embedding_model,
            reason=f"{item.source_key or job_id}: the execution did not finish within "
            f"{settings.reservation_hold_seconds} s; its reservation was swept",
        )
        swept.append(job_id)
        given_back += max(0, before - bill.tokens)
        committed += bill.tokens
        logger.warning(
            "swept a stale reservation",
            extra={"job_id": job_id, "billed_tokens": bill.tokens, "batches": collected.ingested},
        )
    emit("reservations_swept", len(swept), MetricUnit.Count)
    return SweepResult(released_jobs=swept, released_tokens=given_back, committed_tokens=committed)
