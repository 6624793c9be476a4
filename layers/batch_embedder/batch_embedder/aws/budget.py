"""Daily token budget in DynamoDB: reservations before spend, commit or release after.

Items of the usage table (``USAGE_TABLE``, key ``pk``/``sk``):

- ``pk = "budget#all"``, ``sk = "YYYY-MM-DD"`` (UTC day): ``held_tokens`` (reserved +
  committed: what the limit is checked against), ``reserved_tokens``, ``committed_tokens``,
  ``limit_tokens``, ``expires_at`` (epoch seconds, the table's TTL attribute).

The job's own item (``JOBS_TABLE``, key ``job_id``) records its reservation
(``reservation_state`` = held | committed | released, ``reserved_tokens``,
``reservation_day``), so that a Lambda retry never reserves or releases twice: every
change is one ``TransactWriteItems`` over the job item and the day's counter, with a
condition on each.

DynamoDB conditions cannot add, so "held + requested <= limit" is checked as
``held <= limit - requested`` with the right-hand side computed here.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from botocore.exceptions import ClientError

from ..errors import BudgetExceededError
from ..models import Reservation
from .dynamodb import cancellation_codes, ddb

BUDGET_SCOPE = "budget#all"
#: Seconds a day's counter is kept after the day (TTL).
COUNTER_TTL_SECONDS = 35 * 24 * 3600


def utc_day(now: datetime | None = None) -> str:
    """Today's UTC day as ``YYYY-MM-DD``."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%d")


def _expires_at(day: str) -> int:
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    return int((start + timedelta(days=1)).timestamp()) + COUNTER_TTL_SECONDS


def get_counter(usage_table: str, day: str) -> dict[str, int]:
    """The day's counter: ``{"held_tokens", "reserved_tokens", "committed_tokens"}`` (0 if none)."""
    item = (
        ddb()
        .get_item(TableName=usage_table, Key={"pk": BUDGET_SCOPE, "sk": day}, ConsistentRead=True)
        .get("Item", {})
    )
    return {
        name: int(item.get(name, 0))
        for name in ("held_tokens", "reserved_tokens", "committed_tokens")
    }


def _job_item(jobs_table: str, job_id: str) -> dict[str, Any]:
    item: dict[str, Any] = (
        ddb()
        .get_item(TableName=jobs_table, Key={"job_id": job_id}, ConsistentRead=True)
        .get("Item", {})
    )
    return item


def reserve(
    *,
    jobs_table: str,
    usage_table: str,
    job_id: str,
    key: str,
    tokens: int,
    limit_tokens: int,
    day: str | None = None,
) -> Reservation:
    """Reserve ``tokens`` for ``job_id`` against the day's limit, atomically and once.

    Concurrent callers can never together hold more than ``limit_tokens``. Calling again
    for a job that already holds a reservation returns that reservation unchanged.

    Returns:
        The reservation (UTC day, tokens).

    Raises:
        BudgetExceededError: the tokens do not fit in what remains of the day's limit.
    """
    day = day or utc_day()
    existing = _job_item(jobs_table, job_id)
    if "reservation_state" in existing:
        return Reservation(day=existing["reservation_day"], tokens=int(existing["reserved_tokens"]))

    def exceeded() -> BudgetExceededError:
        held = get_counter(usage_table, day)["held_tokens"]
        return BudgetExceededError(
            key=key,
            requested_tokens=tokens,
            remaining_tokens=max(0, limit_tokens - held),
            limit_tokens=limit_tokens,
            day=day,
        )

    if tokens > limit_tokens:
        raise exceeded()
    now = int(time.time())
    try:
        ddb().transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": jobs_table,
                        "Key": {"job_id": job_id},
                        "UpdateExpression": (
                            "SET reservation_state = :held, reserved_tokens = :t, "
                            "reservation_day = :day, source_key = :key, created_at = :now"
                        ),
                        "ConditionExpression": "attribute_not_exists(reservation_state)",
                        "ExpressionAttributeValues": {
                            ":held": "held",
                            ":t": tokens,
                            ":day": day,
                            ":key": key,
                            ":now": now,
                        },
                    }
                },
                {
                    "Update": {
                        "TableName": usage_table,
                        "Key": {"pk": BUDGET_SCOPE, "sk": day},
                        "UpdateExpression": (
                            "ADD held_tokens :t, reserved_tokens :t "
                            "SET limit_tokens = :limit, expires_at = :exp"
                        ),
                        "ConditionExpression": (
                            "attribute_not_exists(held_tokens) OR held_tokens <= :max_before"
                        ),
                        "ExpressionAttributeValues": {
                            ":t": tokens,
                            ":limit": limit_tokens,
                            ":max_before": limit_tokens - tokens,
                            ":exp": _expires_at(day),
                        },
                    }
                },
            ]
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
            raise
        codes = cancellation_codes(exc)
        if codes and codes[0] == "ConditionalCheckFailed":
            # A concurrent retry of this very job reserved first: return its reservation.
            item = _job_item(jobs_table, job_id)
            return Reservation(day=item["reservation_day"], tokens=int(item["reserved_tokens"]))
        if len(codes) > 1 and codes[1] == "ConditionalCheckFailed":
            raise exceeded() from None
        raise
    return Reservation(day=day, tokens=tokens)


def settle(
    *,
    jobs_table: str,
    usage_table: str,
    job_id: str,
    billed_tokens: int,
    outcome: Literal["committed", "released"],
) -> tuple[int, int]:
    """Turn the job's held reservation into ``billed_tokens`` of committed usage, once.

    ``outcome`` says why: ``committed`` after success, ``released`` after a failure (then
    ``billed_tokens`` is what was billed anyway, e.g. an expired batch's finished part, and
    usually 0). Calling it again, or for a job without a reservation, changes nothing.

    Returns:
        ``(reserved tokens given back, tokens committed)``; ``(0, 0)`` when nothing was held.
    """
    item = _job_item(jobs_table, job_id)
    if item.get("reservation_state") != "held":
        return 0, 0
    reserved = int(item["reserved_tokens"])
    day = str(item["reservation_day"])
    try:
        ddb().transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": jobs_table,
                        "Key": {"job_id": job_id},
                        "UpdateExpression": (
                            "SET reservation_state = :outcome, billed_tokens = :b, "
                            "settled_at = :now"
                        ),
                        "ConditionExpression": "reservation_state = :held",
                        "ExpressionAttributeValues": {
                            ":outcome": outcome,
                            ":b": billed_tokens,
                            ":held": "held",
                            ":now": int(time.time()),
                        },
                    }
                },
                {
                    "Update": {
                        "TableName": usage_table,
                        "Key": {"pk": BUDGET_SCOPE, "sk": day},
                        "UpdateExpression": (
                            "ADD held_tokens :delta, reserved_tokens :minus_r, committed_tokens :b"
                        ),
                        "ExpressionAttributeValues": {
                            ":delta": billed_tokens - reserved,
                            ":minus_r": -reserved,
                            ":b": billed_tokens,
                        },
                    }
                },
            ]
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
            raise
        if cancellation_codes(exc)[:1] == ["ConditionalCheckFailed"]:
            return 0, 0  # settled concurrently by a retry
        raise
    return max(0, reserved - billed_tokens), billed_tokens
