"""The DynamoDB resource's client: takes and returns plain Python values (ints come back as
``Decimal``), which keeps transactions readable."""

from __future__ import annotations

import functools
from typing import Any

import boto3

from .clients import _CONFIG
from .metering import instrument


@functools.cache
def ddb() -> Any:
    """The low-level DynamoDB client of a boto3 resource (native Python types in and out),
    metered for the AWS cost ledger."""
    return instrument(boto3.resource("dynamodb", config=_CONFIG).meta.client)


def cancellation_codes(exc: Exception) -> list[str]:
    """The per-item ``Code`` of a ``TransactionCanceledException`` ('None' where it passed)."""
    response: dict[str, Any] = getattr(exc, "response", {})
    return [str(r.get("Code", "None")) for r in response.get("CancellationReasons", [])]
