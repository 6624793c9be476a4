"""Degraded mode: whether the embedding provider answers, recorded once per provider.

Items of the usage table (``USAGE_TABLE``, key ``pk``/``sk``):

- ``pk = "provider#<endpoint>"``, ``sk = "health"``: the provider's record.
  ``degraded_since`` (epoch seconds) is present while the provider is degraded, with
  ``last_failure_at``, ``last_error`` (the exception's class and message, at most 300
  characters) and ``failures`` (failed step attempts since ``degraded_since``). The first
  success after an outage removes them and sets ``recovered_at`` and
  ``last_degraded_seconds``. ``expires_at`` (the table's TTL, epoch seconds) is pushed 7
  days past each failure, so a record nobody clears (the stack was deleted mid-outage)
  goes away by itself.
- ``pk = "provider#<endpoint>"``, ``sk = "job#<job_id>#<degraded_since>"``: when one
  execution started waiting in this outage (``waiting_since``, epoch seconds), which is
  what ``PROVIDER_OUTAGE_SECONDS`` is measured against. Left to the TTL (``expires_at``).

``<endpoint>`` is ``OPENAI_BASE_URL``, or ``https://api.openai.com/v1`` when it is empty:
an outage is a property of the endpoint, shared by every model and execution using it.

Metric ``ProviderDegraded`` (namespace ``POWERTOOLS_METRICS_NAMESPACE``): 1 at each failed
attempt recorded here, 0 when the provider answers again; the template's
``ProviderDegradedAlarm`` fires on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError

from ..metrics import emit
from ..settings import Settings
from .dynamodb import ddb

logger = Logger(child=True)

#: The endpoint the official SDK uses when no base URL is set
#: (https://github.com/openai/openai-python, ``OpenAI(base_url=None)``).
OPENAI_ENDPOINT = "https://api.openai.com/v1"
#: Seconds a health record outlives its last failure (TTL), when no success clears it.
RECORD_TTL_SECONDS = 7 * 86400
#: The metric the alarm watches.
METRIC = "ProviderDegraded"
HEALTH_SK = "health"


@dataclass(frozen=True)
class Outage:
    """One failed attempt, as recorded.

    Attributes:
        provider: the endpoint (``pk`` without ``provider#``).
        degraded_since: epoch seconds of the outage's first recorded failure.
        failures: failed attempts recorded since then (every execution together).
        waited_seconds: seconds this execution has waited in this outage (0.0 when the
            failure was not an execution's, e.g. the reconciler's).
        new: True when this failure started the outage (the record did not exist).
    """

    provider: str
    degraded_since: float
    failures: int
    waited_seconds: float
    new: bool


def provider_key(settings: Settings) -> str:
    """The endpoint the records are kept for: ``AZURE_OPENAI_ENDPOINT`` for Azure, else
    ``OPENAI_BASE_URL`` or OpenAI's own."""
    if settings.embedding_provider == "azure" and settings.azure_openai_endpoint:
        return settings.azure_openai_endpoint
    return settings.openai_base_url or OPENAI_ENDPOINT


def _pk(settings: Settings) -> str:
    return f"provider#{provider_key(settings)}"


def record_outage(
    settings: Settings, *, error: str, job_id: str | None, now: float | None = None
) -> Outage:
    """Record a failed attempt: the provider's record (``degraded_since`` set once) and,
    for an execution, when it started waiting in this outage; emit ``ProviderDegraded`` 1.

    Args:
        error: what failed, for people (class and message; cut to 300 characters).
        job_id: the execution's job id, or None (the reconciler).
        now: epoch seconds (default: the clock).

    Returns:
        The outage as recorded (two DynamoDB UpdateItem calls, one without ``job_id``).
    """
    now = time.time() if now is None else now
    pk = _pk(settings)
    item = ddb().update_item(
        TableName=settings.usage_table,
        Key={"pk": pk, "sk": HEALTH_SK},
        UpdateExpression="SET degraded_since = if_not_exists(degraded_since, :now), "
        "last_failure_at = :now, last_error = :error, expires_at = :expires "
        "ADD failures :one",
        ExpressionAttributeValues={
            ":now": int(now),
            ":error": error[:300],
            ":expires": int(now) + RECORD_TTL_SECONDS,
            ":one": 1,
        },
        ReturnValues="ALL_NEW",
    )["Attributes"]
    since = int(item["degraded_since"])
    failures = int(item["failures"])
    new = since == int(now) and failures == 1
    waited = 0.0
    if job_id is not None:
        mine = ddb().update_item(
            TableName=settings.usage_table,
            Key={"pk": pk, "sk": f"job#{job_id}#{since}"},
            UpdateExpression="SET waiting_since = if_not_exists(waiting_since, :now), "
            "expires_at = :expires",
            ExpressionAttributeValues={
                ":now": int(now),
                ":expires": int(now) + settings.provider_outage_seconds + RECORD_TTL_SECONDS,
            },
            ReturnValues="ALL_NEW",
        )["Attributes"]
        waited = max(0.0, now - int(mine["waiting_since"]))
    if new:
        logger.warning("provider degraded", extra={"provider": provider_key(settings),
                                                   "error": error[:300]})  # fmt: skip
    emit(METRIC, 1, MetricUnit.Count)
    return Outage(
        provider=provider_key(settings),
        degraded_since=float(since),
        failures=failures,
        waited_seconds=waited,
        new=new,
    )


def current(settings: Settings) -> dict[str, Any] | None:
    """The provider's record while it is degraded (``degraded_since``, ``last_error``,
    ``failures``, ...), or None when it is not."""
    item: dict[str, Any] | None = (
        ddb()
        .get_item(TableName=settings.usage_table, Key={"pk": _pk(settings), "sk": HEALTH_SK})
        .get("Item")
    )
    return item if item is not None and "degraded_since" in item else None


def recovered(settings: Settings, now: float | None = None) -> float | None:
    """Clear the degraded state after a success (one GetItem when there is none).

    The record is cleared only if no failure was recorded after it was read, so a success
    racing a fresh failure does not hide the outage. Emits ``ProviderDegraded`` 0.

    Returns:
        Seconds the provider was degraded, or None if it was not (or another failure
        was recorded meanwhile).
    """
    record = current(settings)
    if record is None:
        return None
    now = time.time() if now is None else now
    degraded = max(0.0, now - int(record["degraded_since"]))
    try:
        ddb().update_item(
            TableName=settings.usage_table,
            Key={"pk": _pk(settings), "sk": HEALTH_SK},
            UpdateExpression="REMOVE degraded_since, last_failure_at, last_error, failures "
            "SET recovered_at = :now, last_degraded_seconds = :degraded",
            ConditionExpression="last_failure_at = :seen",
            ExpressionAttributeValues={
                ":now": int(now),
                ":degraded": int(degraded),
                ":seen": record["last_failure_at"],
            },
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return None  # failed again meanwhile: still degraded
        raise
    logger.warning("provider recovered", extra={"provider": provider_key(settings),
                                                "degraded_seconds": int(degraded)})  # fmt: skip
    emit(METRIC, 0, MetricUnit.Count)
    return degraded
