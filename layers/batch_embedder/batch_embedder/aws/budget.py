"""Daily token budgets in DynamoDB: reservations before spend, commit or release after.

A job is charged to one or more *scopes* (its model; the S3 prefixes that have their own
limit), each a counter per UTC day in the usage table (``USAGE_TABLE``, key ``pk``/``sk``):

- ``pk = "budget#<scope>"``, ``sk = "YYYY-MM-DD"``: ``held_tokens`` (reserved + committed:
  what the limit is checked against), ``reserved_tokens``, ``committed_tokens``,
  ``limit_tokens``, ``expires_at`` (epoch seconds, the table's TTL attribute).

The job's own item (``JOBS_TABLE``, key ``job_id``) records its reservation
(``reservation_state`` = held | committed | released | swept, ``reserved_tokens``,
``reservation_day``, ``budget_scopes``) and, while held, ``held_shard``/``held_until``:
the keys of the sparse ``HeldReservations`` index the sweep reads to release reservations
that crashed executions left behind. Every change is one ``TransactWriteItems`` over the
job item and the scopes' counters, with a condition on each, so a Lambda retry never
reserves or releases twice and concurrent executions never pass a limit together.

DynamoDB conditions cannot add, so "held + requested <= limit" is checked as
``held <= limit - requested`` with the right-hand side computed here.

A :class:`BudgetStore` is bound once to both tables and made by a cached factory:
``budgets = budget_store_for(settings)``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple, Protocol

from botocore.exceptions import ClientError

from ..errors import BudgetExceededError
from ..models import Reservation
from ..records import BudgetCounter, JobItem
from .dynamodb import cancellation_codes, ddb
from .jobs import job_store

#: Seconds a day's counter is kept after the day (TTL).
COUNTER_TTL_SECONDS = 35 * 24 * 3600
HELD = "held"
#: Name of the jobs table's sparse index over held reservations.
HELD_INDEX = "HeldReservations"


@dataclass(frozen=True)
class BudgetScope:
    """One daily counter a job is charged to, with its limit in tokens per UTC day."""

    name: str
    limit_tokens: int

    @property
    def pk(self) -> str:
        """The counter's partition key."""
        return f"budget#{self.name}"


def model_scope(model: str, limit_tokens: int) -> BudgetScope:
    """The scope of every job of ``model``."""
    return BudgetScope(f"model:{model}", limit_tokens)


def prefix_scope(prefix: str, limit_tokens: int) -> BudgetScope:
    """The scope of the jobs whose object key starts with ``prefix`` (a project/tenant)."""
    return BudgetScope(f"prefix:{prefix}", limit_tokens)


def utc_day(now: datetime | None = None) -> str:
    """Today's UTC day as ``YYYY-MM-DD``."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%d")


def seconds_to_next_day(now: datetime | None = None) -> int:
    """Whole seconds until the next UTC midnight (at least 1)."""
    now = now or datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((midnight - now).total_seconds()) + 1)


def _expires_at(day: str) -> int:
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    return int((start + timedelta(days=1)).timestamp()) + COUNTER_TTL_SECONDS


class Settled(NamedTuple):
    """What :meth:`BudgetStore.settle` changed, in tokens."""

    given_back: int
    committed: int


class HasBudgetTables(Protocol):
    """Anything naming both tables (the :class:`~batch_embedder.settings.Settings`)."""

    @property
    def jobs_table(self) -> str: ...

    @property
    def usage_table(self) -> str: ...


def _reservation(item: JobItem) -> Reservation:
    assert item.reservation_day is not None, "a reserved job records its day"
    return Reservation(day=item.reservation_day, tokens=item.reserved_tokens)


class BudgetStore:
    """The budget counters (``usage_table``) and the jobs' reservations (``jobs_table``);
    bind once with :func:`budget_store`."""

    def __init__(self, jobs_table: str, usage_table: str) -> None:
        self.jobs_table = jobs_table
        self.usage_table = usage_table

    def counter(self, day: str, scope: str) -> BudgetCounter:
        """A scope's counter for ``day`` (a consistent read; 0 tokens if none).

        ``scope`` is a :class:`BudgetScope` name, e.g. ``"model:text-embedding-3-small"``.
        """
        item = (
            ddb()
            .get_item(
                TableName=self.usage_table,
                Key={"pk": f"budget#{scope}", "sk": day},
                ConsistentRead=True,
            )
            .get("Item", {})
        )
        return BudgetCounter.model_validate(item)

    def reserve(
        self,
        *,
        job_id: str,
        key: str,
        tokens: int,
        scopes: Sequence[BudgetScope],
        day: str | None = None,
        hold_seconds: int = 26 * 3600,
        scope_tokens: dict[str, int] | None = None,
        model: str = "",
    ) -> Reservation:
        """Reserve ``tokens`` for ``job_id`` in every scope, atomically and once.

        ``model`` is recorded on the job's item (the sweep prices what it settles with it).
        ``scope_tokens`` gives a scope its own amount (a group's prefix holds only the tokens
        of its documents); a scope not in it is charged ``tokens``.

        Concurrent callers can never together hold more than a scope's limit. Calling again
        for a job that already has a reservation returns it unchanged. A reservation still
        held after ``hold_seconds`` is settled by the sweep (:meth:`held_jobs`) (the default
        outlasts the Batch API's 24 h completion window).

        Returns:
            The reservation (UTC day, tokens).

        Raises:
            BudgetExceededError: the tokens do not fit in what remains of a scope's limit;
                nothing is reserved in any scope then.
        """
        day = day or utc_day()
        existing = job_store(self.jobs_table).get(job_id)
        if existing.reservation_state is not None:
            return _reservation(existing)

        amounts = {scope.name: (scope_tokens or {}).get(scope.name, tokens) for scope in scopes}

        def exceeded(scope: BudgetScope) -> BudgetExceededError:
            held = self.counter(day, scope.name).held_tokens
            return BudgetExceededError(
                key=key,
                requested_tokens=amounts[scope.name],
                remaining_tokens=max(0, scope.limit_tokens - held),
                limit_tokens=scope.limit_tokens,
                day=day,
                scope=scope.name,
            )

        for scope in scopes:
            if amounts[scope.name] > scope.limit_tokens:
                raise exceeded(scope)
        now = int(time.time())
        items: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self.jobs_table,
                    "Key": {"job_id": job_id},
                    "UpdateExpression": (
                        "SET reservation_state = :held, reserved_tokens = :t, "
                        "reservation_day = :day, source_key = :key, created_at = :now, "
                        "budget_scopes = :scopes, "
                        "scope_tokens = :amounts, held_shard = :held, held_until = :until, "
                        "model = :model"
                    ),
                    "ConditionExpression": "attribute_not_exists(reservation_state)",
                    "ExpressionAttributeValues": {
                        ":held": HELD,
                        ":t": tokens,
                        ":day": day,
                        ":key": key,
                        ":now": now,
                        ":scopes": [s.name for s in scopes],
                        ":amounts": amounts,
                        ":until": now + hold_seconds,
                        ":model": model,
                    },
                }
            }
        ]
        for scope in scopes:
            items.append(
                {
                    "Update": {
                        "TableName": self.usage_table,
                        "Key": {"pk": scope.pk, "sk": day},
                        "UpdateExpression": (
                            "ADD held_tokens :t, reserved_tokens :t "
                            "SET limit_tokens = :limit, expires_at = :exp"
                        ),
                        "ConditionExpression": (
                            "attribute_not_exists(held_tokens) OR held_tokens <= :max_before"
                        ),
                        "ExpressionAttributeValues": {
                            ":t": amounts[scope.name],
                            ":limit": scope.limit_tokens,
                            ":max_before": scope.limit_tokens - amounts[scope.name],
                            ":exp": _expires_at(day),
                        },
                    }
                }
            )
        try:
            ddb().transact_write_items(TransactItems=items)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            codes = cancellation_codes(exc)
            if codes and codes[0] == "ConditionalCheckFailed":
                # A concurrent retry of this very job reserved first: return its reservation.
                return _reservation(job_store(self.jobs_table).get(job_id))
            for scope, code in zip(scopes, codes[1:], strict=False):
                if code == "ConditionalCheckFailed":
                    raise exceeded(scope) from None
            raise
        return Reservation(day=day, tokens=tokens)

    def settle(
        self,
        *,
        job_id: str,
        billed_tokens: int,
        outcome: Literal["committed", "released", "swept"],
    ) -> Settled:
        """Bring the job's committed usage up to ``billed_tokens`` (its whole bill so far).

        The first call turns the held reservation into ``billed_tokens`` of committed usage and
        gives the rest back; ``outcome`` says why: ``committed`` after success, ``released``
        after a failure (``billed_tokens`` is what was billed anyway), ``swept`` when a crashed
        execution's reservation is given up. A later call (a batch of a finished job ingested
        by the reconciler) commits only what its bill grew by. Calling it again with the same
        bill, or for a job without a reservation, changes nothing: committed == billed, once.

        Returns:
            ``(reserved tokens given back, tokens newly committed)``.
        """
        item = job_store(self.jobs_table).get(job_id)
        state = item.reservation_state
        if state is None:
            return Settled(0, 0)
        held_now = state == HELD
        previous = 0 if held_now else item.billed_tokens
        if not held_now and billed_tokens <= previous:
            return Settled(0, 0)
        reserved = item.reserved_tokens
        day = _reservation(item).day
        scopes = item.budget_scopes
        amounts = item.scope_tokens
        condition = "reservation_state = :state" + (
            "" if held_now else " AND billed_tokens = :prev"
        )
        values: dict[str, Any] = {
            ":outcome": outcome if held_now else state,
            ":b": billed_tokens,
            ":state": state,
            ":now": int(time.time()),
        }
        if not held_now:
            values[":prev"] = previous
        items: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self.jobs_table,
                    "Key": {"job_id": job_id},
                    "UpdateExpression": (
                        "SET reservation_state = :outcome, billed_tokens = :b, settled_at = :now "
                        "REMOVE held_shard, held_until"
                    ),
                    "ConditionExpression": condition,
                    "ExpressionAttributeValues": values,
                }
            }
        ]
        for scope in scopes:
            # A scope that held a share of the reservation commits the same share of the bill.
            held = amounts.get(scope, reserved)

            def share(tokens: int, held: int = held) -> int:
                if held == reserved:
                    return tokens
                return round(tokens * held / reserved) if reserved else 0

            committed = share(billed_tokens) - share(previous)
            released = held if held_now else 0
            items.append(
                {
                    "Update": {
                        "TableName": self.usage_table,
                        "Key": {"pk": f"budget#{scope}", "sk": day},
                        "UpdateExpression": (
                            "ADD held_tokens :delta, reserved_tokens :minus_r, committed_tokens :b"
                        ),
                        "ExpressionAttributeValues": {
                            ":delta": committed - released,
                            ":minus_r": -released,
                            ":b": committed,
                        },
                    }
                }
            )
        try:
            ddb().transact_write_items(TransactItems=items)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            if cancellation_codes(exc)[:1] == ["ConditionalCheckFailed"]:
                return Settled(0, 0)  # settled concurrently by a retry
            raise
        given_back = max(0, reserved - billed_tokens) if held_now else 0
        return Settled(given_back, billed_tokens - previous)

    def held_jobs(self, *, now: float | None = None) -> list[str]:
        """The jobs whose reservation is still held past its ``held_until`` (crashed
        executions), from the sparse ``HeldReservations`` index."""
        now = time.time() if now is None else now
        found: list[str] = []
        kwargs: dict[str, Any] = {
            "TableName": self.jobs_table,
            "IndexName": HELD_INDEX,
            "KeyConditionExpression": "held_shard = :held AND held_until < :now",
            "ExpressionAttributeValues": {":held": HELD, ":now": int(now)},
        }
        while True:
            page = ddb().query(**kwargs)
            found.extend(str(item["job_id"]) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def usage_fraction(self, day: str, scope: BudgetScope) -> float:
        """Held tokens over the scope's limit for ``day`` (0.0 when the limit is 0)."""
        held = self.counter(day, scope.name).held_tokens
        return held / scope.limit_tokens if scope.limit_tokens else 0.0


@functools.lru_cache(maxsize=8)
def budget_store(jobs_table: str, usage_table: str) -> BudgetStore:
    """The :class:`BudgetStore` of these two tables, made once per pair of names."""
    return BudgetStore(jobs_table, usage_table)


def budget_store_for(settings: HasBudgetTables) -> BudgetStore:
    """The :class:`BudgetStore` of the settings' ``JOBS_TABLE`` and ``USAGE_TABLE``."""
    return budget_store(settings.jobs_table, settings.usage_table)
