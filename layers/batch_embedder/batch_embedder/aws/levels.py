"""What the two DynamoDB limiters share: refill arithmetic, outcomes and errors.

The limiters (:mod:`batch_embedder.aws.rate_bucket` for the synchronous API's RPM/TPM,
:mod:`batch_embedder.aws.batch_queue` for the Batch API's creations and enqueued tokens)
keep their state in the usage table (``USAGE_TABLE``, key ``pk``/``sk``):

Items:

- ``pk = "bucket#<scope>#<model>"``, ``sk = "rate"``: ``available_requests`` and
  ``available_tokens`` (Decimal, 3 decimals, rounded down), ``refilled_at`` (epoch seconds,
  Decimal with ms precision: the instant the two levels are valid at), ``version`` (int,
  +1 on every write), ``blocked_until`` (epoch seconds, only while a 429 block lasts),
  ``requests_per_minute`` / ``tokens_per_minute`` (the writer's configuration, for people)
  and ``expires_at`` (the table's TTL: an idle bucket disappears and starts afresh).
- ``pk = "batchq#<scope>#<model>"``, ``sk = "queue"``: ``available_creations`` (Decimal, 3
  decimals), ``refilled_at``, ``version``, ``enqueued_tokens`` (int), ``creations_per_hour``
  and ``enqueued_token_cap`` (the writer's configuration).
- ``pk = "batchq#<scope>#<model>"``, ``sk = "batch#<batch_key>"``: one batch's reservation,
  ``tokens``, ``state`` (``enqueued`` | ``released``), ``reserved_at``, ``released_at``
  and, once released, ``expires_at``.

Levels refill continuously (``capacity * elapsed / period``, capped at the capacity) and
are recomputed by whoever writes next; every change is a conditional write on ``version``
(optimistic concurrency). A writer that loses re-reads (the failed write returns the
current item, ``ReturnValuesOnConditionCheckFailure=ALL_OLD``) and tries again, a bounded
number of times. Time never goes backwards in an item: a writer whose clock is behind
``refilled_at`` sees no refill, so skewed clocks only make the bucket stricter.

DynamoDB conditions cannot add, so "enqueued + tokens <= cap" is checked as
``enqueued_tokens <= cap - tokens`` with the right-hand side computed by the writer (as in
:mod:`batch_embedder.aws.budget`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from ..errors import BatchEmbedderError

#: Reference tier-1 limits of text-embedding-3-small (docs/openai-limits.md, "Rate limits").
REFERENCE_REQUESTS_PER_MINUTE = 3000
REFERENCE_TOKENS_PER_MINUTE = 1_000_000
#: Batch creations per hour; "(unverified)" in docs/openai-limits.md, "Batch API".
REFERENCE_BATCH_CREATIONS_PER_HOUR = 2000
#: Enqueued-token cap of text-embedding-3-small at tier 1; "(unverified)", same source.
REFERENCE_ENQUEUED_TOKEN_CAP = 3_000_000

#: Seconds an idle bucket item is kept (TTL) after its last write.
BUCKET_TTL_SECONDS = 24 * 3600
#: Seconds a released batch record is kept (TTL).
RELEASED_BATCH_TTL_SECONDS = 30 * 24 * 3600
#: Conditional writes tried before giving up on a contended item.
DEFAULT_MAX_ATTEMPTS = 25
#: Wait hint (seconds) when every attempt lost to a concurrent writer.
CONTENTION_WAIT_SECONDS = 0.05

#: Turns the ``ALL_OLD`` item of a failed conditional write into Python values.
DESERIALIZER = TypeDeserializer()

MILLI = Decimal("0.001")
MINUTE = Decimal(60)
HOUR = Decimal(3600)
ZERO = Decimal(0)


class RateLimitWaitTooLong(BatchEmbedderError):
    """Waiting for the rate limit would take longer than the caller allows.

    Raise it out of a Lambda (or turn it into state output) so that Step Functions waits in a
    ``Wait`` state for ``wait_seconds`` instead of a Lambda sleeping.

    Attributes:
        wait_seconds: seconds from now until the request could be granted (a hint: other
            workers may take the capacity first).
        max_wait_seconds: the caller's limit, seconds (None if not given).
        waited_seconds: seconds already slept before giving up.
    """

    def __init__(
        self,
        wait_seconds: float,
        *,
        max_wait_seconds: float | None = None,
        waited_seconds: float = 0.0,
    ) -> None:
        self.wait_seconds = wait_seconds
        self.max_wait_seconds = max_wait_seconds
        self.waited_seconds = waited_seconds
        limit = (
            "" if max_wait_seconds is None else f", more than the {max_wait_seconds:g} s allowed"
        )
        super().__init__(
            f"the rate limit needs a wait of {wait_seconds:.3f} s{limit} "
            f"(already waited {waited_seconds:.3f} s)"
        )


class BucketContendedError(BatchEmbedderError):
    """Every one of ``attempts`` conditional writes lost to a concurrent writer.

    Attributes:
        item: ``"<pk>/<sk>"`` of the contended item.
        attempts: conditional writes tried.
    """

    def __init__(self, item: str, attempts: int) -> None:
        self.item = item
        self.attempts = attempts
        super().__init__(f"{item}: {attempts} conditional writes in a row lost to other writers")


@dataclass(frozen=True)
class Acquire:
    """Outcome of one attempt to take capacity.

    Attributes:
        granted: True if the capacity was taken (and must be used or is lost).
        wait_seconds: if not granted, seconds until enough should be available (0.0 when
            granted). A hint: concurrent workers may take it first.
        conflicts: conditional writes lost to concurrent writers during this call.
    """

    granted: bool
    wait_seconds: float
    conflicts: int


def floor3(value: Decimal) -> Decimal:
    """``value`` rounded down to 3 decimals (the stored precision)."""
    return value.quantize(MILLI, rounding=ROUND_FLOOR)


def ceil3(value: Decimal) -> Decimal:
    """``value`` rounded up to 3 decimals (the stored precision)."""
    return value.quantize(MILLI, rounding=ROUND_CEILING)


def to_decimal(value: float) -> Decimal:
    """``value`` (e.g. seconds) as the Decimal its shortest repr spells (``12.345`` stays exact)."""
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite number: {value!r}")
    return Decimal(repr(seconds))


def positive_capacity(name: str, value: int) -> Decimal:
    """``value`` as a Decimal capacity.

    Raises:
        ValueError: not a positive integer.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return Decimal(value)


def non_negative_count(name: str, value: int) -> int:
    """``value``, checked.

    Raises:
        ValueError: not a non-negative integer.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def is_code(exc: ClientError, code: str) -> bool:
    """Whether a botocore ``ClientError`` carries the error code ``code``."""
    return exc.response.get("Error", {}).get("Code") == code
