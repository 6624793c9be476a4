"""Rate limits shared by any number of concurrent Lambdas, kept in DynamoDB.

Two limiters, both stored in the usage table (``USAGE_TABLE``, key ``pk``/``sk``):

- :class:`TokenBucket`: the synchronous Embeddings API's requests per minute (RPM) and
  tokens per minute (TPM) of one API key scope and model. Reference tier-1 limits for
  text-embedding-3-small: 3,000 RPM and 1,000,000 TPM (``docs/openai-limits.md``, "Rate
  limits and errors"); they depend on the account's usage tier, so they are parameters.
- :class:`BatchQueueLimits`: the Batch API's own pool (separate from RPM/TPM): batch
  creations per hour ("2,000 per hour (unverified)") and the model's enqueued-token cap
  ("3M tokens at tier 1 for 3-small (unverified)"), both from ``docs/openai-limits.md``,
  "Batch API", and both parameters.

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
``enqueued_tokens <= cap - tokens`` with the right-hand side computed here (as in
:mod:`batch_embedder.aws.budget`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any, TypeVar

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from ..errors import BatchEmbedderError
from .dynamodb import cancellation_codes, ddb

__all__ = [
    "Acquire",
    "BatchQueueLimits",
    "BucketContendedError",
    "BucketState",
    "QueueState",
    "RateLimitWaitTooLong",
    "TokenBucket",
    "parse_duration",
    "retry_after_seconds",
]

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

_MILLI = Decimal("0.001")
_MINUTE = Decimal(60)
_HOUR = Decimal(3600)
_ZERO = Decimal(0)
_ENQUEUED = "enqueued"
_RELEASED = "released"
_DESERIALIZER = TypeDeserializer()

_T = TypeVar("_T")


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


@dataclass(frozen=True)
class BucketState:
    """A :class:`TokenBucket` as stored, refilled to the time it was read.

    Attributes:
        available_requests: requests that could be granted now.
        available_tokens: tokens that could be granted now.
        refilled_at: epoch seconds the levels are valid at.
        blocked_until: epoch seconds of a 429 block still in force, else None.
        version: writes so far (0: no item yet).
    """

    available_requests: float
    available_tokens: float
    refilled_at: float
    blocked_until: float | None
    version: int


@dataclass(frozen=True)
class QueueState:
    """A :class:`BatchQueueLimits` as stored, refilled to the time it was read.

    Attributes:
        available_creations: batch creations that could be made now.
        enqueued_tokens: tokens of reserved batches not yet released.
        version: creation-bucket writes so far (0: no item yet).
    """

    available_creations: float
    enqueued_tokens: int
    version: int


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|μs|ns|m|s)")
_DURATION_UNITS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ns": 1e-9,
}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration, as in OpenAI's ``x-ratelimit-reset-*`` headers.

    Accepts ``20ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3.5s``, ``0s`` (units ``h``, ``m``,
    ``s``, ``ms``, ``us``/``µs``, ``ns``) and a bare number of seconds (``"2"``,
    ``"0.5"``). Header format: docs/openai-limits.md, "Rate limits and errors".

    Raises:
        ValueError: empty, negative or not a duration.
    """
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"not a non-negative duration: {text!r}")
        return seconds
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not value or position != len(value):
        raise ValueError(f"not a duration like '20ms', '1.5s' or '6m0s': {text!r}")
    return total


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds a 429 response asks to wait: ``retry-after-ms`` or else ``retry-after``.

    Header names are matched case-insensitively (docs/openai-limits.md: "on 429 also
    ``retry-after`` / ``retry-after-ms``"). Returns None when neither is a usable number of
    seconds (``retry-after`` may also be an HTTP date, which is not read).
    """
    lower = {key.lower(): value for key, value in headers.items()}
    for name, per_second in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = lower.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) / per_second
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def _floor3(value: Decimal) -> Decimal:
    return value.quantize(_MILLI, rounding=ROUND_FLOOR)


def _ceil3(value: Decimal) -> Decimal:
    return value.quantize(_MILLI, rounding=ROUND_CEILING)


def _decimal(value: float) -> Decimal:
    """``value`` (e.g. seconds) as the Decimal its shortest repr spells (``12.345`` stays exact)."""
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite number: {value!r}")
    return Decimal(repr(seconds))


def _capacity(name: str, value: int) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return Decimal(value)


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _is_code(exc: ClientError, code: str) -> bool:
    return exc.response.get("Error", {}).get("Code") == code


@dataclass(frozen=True)
class _Level:
    """The bucket item's state as Decimals (the stored precision)."""

    requests: Decimal
    tokens: Decimal
    at: Decimal
    blocked_until: Decimal | None
    version: int


class TokenBucket:
    """Requests-per-minute and tokens-per-minute limits of one (API key scope, model).

    One DynamoDB item shared by every worker that uses the same ``table``, ``scope`` and
    ``model``; see the module docstring for its layout. Each dimension holds up to its
    per-minute capacity and refills continuously at ``capacity / 60`` per second. Reference
    tier-1 limits for text-embedding-3-small are 3,000 RPM and 1,000,000 TPM
    (docs/openai-limits.md, "Rate limits and errors"; :data:`REFERENCE_REQUESTS_PER_MINUTE`,
    :data:`REFERENCE_TOKENS_PER_MINUTE`).

    Args:
        table: the usage table's name (``USAGE_TABLE``).
        scope: who shares the limit, e.g. the OpenAI organisation or key's name (never the
            key itself).
        model: the embedding model; OpenAI limits each model separately.
        requests_per_minute: RPM capacity (requests).
        tokens_per_minute: TPM capacity (tokens).
        initial_fill: fraction (0..1) of the capacity a new bucket starts with; 1.0 = full.
        clock: epoch seconds now (injectable for tests).
        sleep: sleeps for a number of seconds (used by :meth:`acquire`).
        max_attempts: conditional writes tried per call before giving up.

    Raises:
        ValueError: a capacity is not a positive integer, ``initial_fill`` is outside
            0..1 or ``max_attempts`` < 1.
    """

    def __init__(
        self,
        *,
        table: str,
        scope: str,
        model: str,
        requests_per_minute: int,
        tokens_per_minute: int,
        initial_fill: float = 1.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self._rpm = _capacity("requests_per_minute", requests_per_minute)
        self._tpm = _capacity("tokens_per_minute", tokens_per_minute)
        if not 0.0 <= initial_fill <= 1.0:
            raise ValueError(f"initial_fill must be within 0..1, got {initial_fill!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts!r}")
        self._fill = _decimal(initial_fill)
        self._table = table
        self._key = {"pk": f"bucket#{scope}#{model}", "sk": "rate"}
        self._clock = clock
        self._sleep = sleep
        self._max_attempts = max_attempts

    @property
    def requests_per_minute(self) -> int:
        """RPM capacity (requests)."""
        return int(self._rpm)

    @property
    def tokens_per_minute(self) -> int:
        """TPM capacity (tokens)."""
        return int(self._tpm)

    @property
    def key(self) -> dict[str, str]:
        """The item's key, ``{"pk": "bucket#<scope>#<model>", "sk": "rate"}``."""
        return dict(self._key)

    # -- public operations ---------------------------------------------------------------

    def try_acquire(self, tokens: int, requests: int = 1) -> Acquire:
        """Take ``tokens`` tokens and ``requests`` requests now, or say how long to wait.

        Never grants more than is available, and nothing while a 429 block
        (:meth:`observe_rate_limited`) lasts. One consistent read plus one conditional write
        when granted; no write when refused (except to create the item).

        Returns:
            ``Acquire(granted, wait_seconds, conflicts)``; when refused, ``wait_seconds`` is
            the time (seconds) until both levels would be enough and any block is over. If
            every attempt lost to concurrent writers: not granted, ``wait_seconds`` =
            :data:`CONTENTION_WAIT_SECONDS`.

        Raises:
            ValueError: ``tokens`` or ``requests`` is negative, or larger than the bucket's
                per-minute capacity (it could never be granted).
        """
        self._check_request(tokens, requests)
        want_requests, want_tokens = Decimal(requests), Decimal(tokens)

        def decide(level: _Level, raw_now: Decimal) -> tuple[_Level | None, tuple[bool, float]]:
            blocked = level.blocked_until is not None and level.blocked_until > raw_now
            if not blocked and level.requests >= want_requests and level.tokens >= want_tokens:
                taken = replace(
                    level,
                    requests=level.requests - want_requests,
                    tokens=level.tokens - want_tokens,
                )
                return taken, (True, 0.0)
            # Levels grow from level.at (>= now) at capacity / 60 s per second.
            ready = level.at
            if level.requests < want_requests:
                ready = max(
                    ready, level.at + (want_requests - level.requests) * _MINUTE / self._rpm
                )
            if level.tokens < want_tokens:
                ready = max(ready, level.at + (want_tokens - level.tokens) * _MINUTE / self._tpm)
            if blocked and level.blocked_until is not None:
                ready = max(ready, level.blocked_until)
            return None, (False, float(max(_MILLI, _ceil3(ready) - raw_now)))

        try:
            (granted, wait), conflicts = self._update(decide)
        except BucketContendedError as exc:
            return Acquire(False, CONTENTION_WAIT_SECONDS, exc.attempts)
        return Acquire(granted, wait, conflicts)

    def acquire(self, tokens: int, requests: int = 1, *, max_wait_seconds: float) -> float:
        """Wait (with the injected ``sleep``) until ``tokens`` and ``requests`` are granted.

        Returns:
            Seconds slept in total (the sum of the sleeps), 0.0 if granted at once.

        Raises:
            RateLimitWaitTooLong: the next wait would take the total past
                ``max_wait_seconds``; its ``wait_seconds`` is the wait still needed, for a
                Step Functions ``Wait`` state.
            ValueError: as :meth:`try_acquire`, or ``max_wait_seconds`` is negative.
        """
        if not max_wait_seconds >= 0:
            raise ValueError(f"max_wait_seconds must be >= 0, got {max_wait_seconds!r}")
        waited = 0.0
        while True:
            result = self.try_acquire(tokens, requests)
            if result.granted:
                return waited
            if waited + result.wait_seconds > max_wait_seconds:
                raise RateLimitWaitTooLong(
                    result.wait_seconds, max_wait_seconds=max_wait_seconds, waited_seconds=waited
                )
            self._sleep(result.wait_seconds)
            waited += result.wait_seconds

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Lower the levels to the server's view when the server's is lower than ours.

        Reads OpenAI's ``x-ratelimit-remaining-requests`` / ``-tokens`` (what the server
        will still accept) and ``x-ratelimit-reset-requests`` / ``-tokens`` (how long until
        it is back to full, a duration such as ``20ms`` or ``6m0s``; docs/openai-limits.md,
        "Rate limits and errors"). For each dimension the level becomes
        ``min(ours, remaining, capacity * (1 - reset / 60 s))``: being full again after
        ``reset`` seconds, at our refill rate, means at most that much is free now. A reset
        longer than 60 s belongs to a longer window (not a per-minute limit) and is ignored.
        Header names match case-insensitively; missing or malformed values are ignored.
        Never raises a level. Writes only when something is lowered.

        Raises:
            BucketContendedError: every conditional write lost to concurrent writers.
        """
        lower = {key.lower(): value for key, value in headers.items()}
        bounds = {
            "requests": self._server_bound(lower, "requests", self._rpm),
            "tokens": self._server_bound(lower, "tokens", self._tpm),
        }
        if bounds["requests"] is None and bounds["tokens"] is None:
            return

        def decide(level: _Level, raw_now: Decimal) -> tuple[_Level | None, None]:
            requests, tokens = level.requests, level.tokens
            if bounds["requests"] is not None:
                requests = min(requests, bounds["requests"])
            if bounds["tokens"] is not None:
                tokens = min(tokens, bounds["tokens"])
            if (requests, tokens) == (level.requests, level.tokens):
                return None, None
            return replace(level, requests=requests, tokens=tokens), None

        self._update(decide)

    def observe_rate_limited(self, retry_after_seconds: float) -> None:
        """Record a 429: empty both levels and block every worker for ``retry_after_seconds``.

        ``blocked_until`` becomes ``now + retry_after_seconds`` (an existing longer block is
        kept); until then :meth:`try_acquire` grants nothing anywhere. The levels refill
        during the block as the server's do. Use :func:`retry_after_seconds` to read the
        seconds from the 429's headers (``retry-after-ms`` / ``retry-after``).

        Raises:
            ValueError: ``retry_after_seconds`` is negative or not finite.
            BucketContendedError: every conditional write lost to concurrent writers.
        """
        pause = _decimal(retry_after_seconds)
        if pause < 0:
            raise ValueError(f"retry_after_seconds must be >= 0, got {retry_after_seconds!r}")

        def decide(level: _Level, raw_now: Decimal) -> tuple[_Level | None, None]:
            until = _ceil3(raw_now + pause)
            if level.blocked_until is not None:
                until = max(until, level.blocked_until)
            if level.requests == 0 and level.tokens == 0 and level.blocked_until == until:
                return None, None
            return replace(level, requests=_ZERO, tokens=_ZERO, blocked_until=until), None

        self._update(decide)

    def state(self) -> BucketState:
        """The stored levels refilled to now (one consistent read, no write)."""
        item = self._get()
        raw_now = _decimal(self._clock())
        level = self._refill(self._level(item, _floor3(raw_now)), _floor3(raw_now))
        blocked = level.blocked_until
        return BucketState(
            available_requests=float(level.requests),
            available_tokens=float(level.tokens),
            refilled_at=float(level.at),
            blocked_until=float(blocked) if blocked is not None and blocked > raw_now else None,
            version=level.version,
        )

    # -- internals -----------------------------------------------------------------------

    def _check_request(self, tokens: int, requests: int) -> None:
        _count("tokens", tokens)
        _count("requests", requests)
        if tokens > self._tpm:
            raise ValueError(
                f"{tokens} tokens can never be granted: the bucket holds at most "
                f"{self._tpm} tokens per minute; split the request"
            )
        if requests > self._rpm:
            raise ValueError(
                f"{requests} requests can never be granted: the bucket holds at most "
                f"{self._rpm} requests per minute"
            )

    def _server_bound(
        self, headers: dict[str, str], name: str, capacity: Decimal
    ) -> Decimal | None:
        bound: Decimal | None = None
        remaining = headers.get(f"x-ratelimit-remaining-{name}")
        if remaining is not None:
            try:
                value = Decimal(remaining.strip())
            except InvalidOperation:
                value = Decimal("NaN")
            if value.is_finite():
                bound = _floor3(max(_ZERO, value))
        reset = headers.get(f"x-ratelimit-reset-{name}")
        if reset is not None:
            try:
                seconds = _decimal(parse_duration(reset))
            except ValueError:
                seconds = _MINUTE + 1
            if seconds <= _MINUTE:
                implied = _floor3(capacity * (1 - seconds / _MINUTE))
                bound = implied if bound is None else min(bound, implied)
        return bound

    def _get(self) -> dict[str, Any] | None:
        item: dict[str, Any] | None = (
            ddb().get_item(TableName=self._table, Key=self._key, ConsistentRead=True).get("Item")
        )
        return item

    def _level(self, item: dict[str, Any] | None, now: Decimal) -> _Level:
        if item is None:
            return _Level(
                requests=_floor3(self._rpm * self._fill),
                tokens=_floor3(self._tpm * self._fill),
                at=now,
                blocked_until=None,
                version=0,
            )
        blocked = item.get("blocked_until")
        return _Level(
            requests=Decimal(item["available_requests"]),
            tokens=Decimal(item["available_tokens"]),
            at=Decimal(item["refilled_at"]),
            blocked_until=Decimal(blocked) if blocked is not None else None,
            version=int(item["version"]),
        )

    def _refill(self, level: _Level, now: Decimal) -> _Level:
        elapsed = max(_ZERO, now - level.at)
        return replace(
            level,
            requests=min(self._rpm, _floor3(level.requests + self._rpm * elapsed / _MINUTE)),
            tokens=min(self._tpm, _floor3(level.tokens + self._tpm * elapsed / _MINUTE)),
            at=max(level.at, now),
        )

    def _update(
        self, decide: Callable[[_Level, Decimal], tuple[_Level | None, _T]]
    ) -> tuple[_T, int]:
        """Read, refill to now, let ``decide`` change it, write it conditionally; retry.

        ``decide(level refilled to now, raw now)`` returns the level to write (None: no
        write) and the result. The clock is read after the item, so a grant's time is never
        earlier than the write it builds on. Returns ``(result, conflicts)``.
        """
        item = self._get()
        conflicts = 0
        for _ in range(self._max_attempts):
            raw_now = _decimal(self._clock())
            now = _floor3(raw_now)
            level = self._refill(self._level(item, now), now)
            new, result = decide(level, raw_now)
            if new is None and item is not None:
                return result, conflicts
            try:
                self._put(
                    level if new is None else new, expected_version=level.version, raw_now=raw_now
                )
            except ClientError as exc:
                if not _is_code(exc, "ConditionalCheckFailedException"):
                    raise
                conflicts += 1
                response: Any = exc.response  # ALL_OLD: the item that won, in wire format
                old = response.get("Item")
                item = (
                    {k: _DESERIALIZER.deserialize(v) for k, v in old.items()}
                    if old
                    else self._get()
                )
                continue
            return result, conflicts
        raise BucketContendedError(f"{self._key['pk']}/{self._key['sk']}", self._max_attempts)

    def _put(self, level: _Level, *, expected_version: int, raw_now: Decimal) -> None:
        item: dict[str, Any] = {
            **self._key,
            "available_requests": level.requests,
            "available_tokens": level.tokens,
            "refilled_at": level.at,
            "version": expected_version + 1,
            "requests_per_minute": int(self._rpm),
            "tokens_per_minute": int(self._tpm),
            "expires_at": int(level.at) + BUCKET_TTL_SECONDS,
        }
        if level.blocked_until is not None and level.blocked_until > raw_now:
            item["blocked_until"] = level.blocked_until
        condition: dict[str, Any] = (
            {"ConditionExpression": "attribute_not_exists(pk)"}
            if expected_version == 0
            else {
                "ConditionExpression": "#version = :version",
                "ExpressionAttributeNames": {"#version": "version"},
                "ExpressionAttributeValues": {":version": expected_version},
            }
        )
        ddb().put_item(
            TableName=self._table,
            Item=item,
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
            **condition,
        )


class BatchQueueLimits:
    """The Batch API's own limits for one (API key scope, model): creations and queue size.

    A separate pool from the synchronous RPM/TPM (docs/openai-limits.md, "Batch API"):

    - batch creations per hour: a bucket of ``creations_per_hour`` refilled continuously
      over 3,600 s (reference: 2,000 per hour, unverified:
      :data:`REFERENCE_BATCH_CREATIONS_PER_HOUR`);
    - the model's enqueued-token cap: tokens of batches created and not yet finished
      (reference: 3M tokens at tier 1 for text-embedding-3-small, unverified:
      :data:`REFERENCE_ENQUEUED_TOKEN_CAP`). A batch that would pass it fails validation.

    Each reservation is recorded in its own item so that :meth:`release_batch` gives its
    tokens back exactly once. Releases never conflict with reservations (they only ``ADD``
    to the counter; the counter's own condition protects the cap).

    Args:
        table: the usage table's name (``USAGE_TABLE``).
        scope: who shares the limits (the OpenAI organisation or key's name).
        model: the embedding model (the cap is per model).
        creations_per_hour: batch creations per hour (capacity of the creation bucket).
        enqueued_token_cap: most tokens enqueued at once.
        full_queue_wait_seconds: wait hint (seconds) when the queue is full; when batches
            finish is unknown here.
        clock: epoch seconds now (injectable for tests).
        max_attempts: transactions tried per call before giving up.

    Raises:
        ValueError: a limit is not a positive integer, a wait is negative or
            ``max_attempts`` < 1.
    """

    def __init__(
        self,
        *,
        table: str,
        scope: str,
        model: str,
        creations_per_hour: int = REFERENCE_BATCH_CREATIONS_PER_HOUR,
        enqueued_token_cap: int = REFERENCE_ENQUEUED_TOKEN_CAP,
        full_queue_wait_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self._per_hour = _capacity("creations_per_hour", creations_per_hour)
        self._cap = int(_capacity("enqueued_token_cap", enqueued_token_cap))
        if not full_queue_wait_seconds >= 0:
            raise ValueError(
                f"full_queue_wait_seconds must be >= 0, got {full_queue_wait_seconds!r}"
            )
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts!r}")
        self._full_wait = float(full_queue_wait_seconds)
        self._table = table
        self._pk = f"batchq#{scope}#{model}"
        self._clock = clock
        self._max_attempts = max_attempts

    @property
    def enqueued_token_cap(self) -> int:
        """Most tokens enqueued at once."""
        return self._cap

    def reserve_batch(self, batch_key: str, tokens: int) -> Acquire:
        """Take one batch creation and enqueue ``tokens`` for ``batch_key``, atomically.

        Granted only if a creation is available and ``enqueued + tokens <= cap``; then one
        ``TransactWriteItems`` records the batch (condition: no reservation held for this
        key) and updates the queue item (condition: unchanged creation bucket and
        ``enqueued_tokens <= cap - tokens``). Calling again for a key that holds a
        reservation returns granted without taking anything (safe for Lambda retries); a
        released key can be reserved again.

        Returns:
            ``Acquire(granted, wait_seconds, conflicts)``. Refused: ``wait_seconds`` is the
            time until a creation is back and/or ``full_queue_wait_seconds`` when the queue
            is full (the larger); :data:`CONTENTION_WAIT_SECONDS` if every attempt lost.

        Raises:
            ValueError: ``batch_key`` is empty, ``tokens`` is negative, or the batch alone is
                larger than the cap (it could never be enqueued: split it).
        """
        if not batch_key:
            raise ValueError("batch_key must not be empty")
        _count("tokens", tokens)
        if tokens > self._cap:
            raise ValueError(
                f"batch {batch_key!r} has {tokens} tokens, more than the enqueued-token cap of "
                f"{self._cap}: it can never be enqueued; split it"
            )
        conflicts = 0
        for _ in range(self._max_attempts):
            record = self._get(f"batch#{batch_key}")
            if record is not None and record.get("state") == _ENQUEUED:
                return Acquire(True, 0.0, conflicts)
            queue = self._get("queue")
            raw_now = _decimal(self._clock())
            creations, at, version = self._creations(queue, _floor3(raw_now))
            enqueued = int((queue or {}).get("enqueued_tokens", 0))
            wait = _ZERO
            if creations < 1:
                wait = _ceil3(at + (1 - creations) * _HOUR / self._per_hour) - raw_now
            if enqueued + tokens > self._cap:
                wait = max(wait, _decimal(self._full_wait))
            if creations < 1 or enqueued + tokens > self._cap:
                return Acquire(False, float(max(_MILLI, wait)), conflicts)
            try:
                self._transact_reserve(batch_key, tokens, creations - 1, at, version, raw_now)
            except ClientError as exc:
                if not _is_code(exc, "TransactionCanceledException"):
                    raise
                if "ConditionalCheckFailed" not in cancellation_codes(exc):
                    raise
                conflicts += 1  # a concurrent reservation (of this key or another) won
                continue
            return Acquire(True, 0.0, conflicts)
        return Acquire(False, CONTENTION_WAIT_SECONDS, conflicts)

    def release_batch(self, batch_key: str) -> int:
        """Give the tokens of ``batch_key``'s reservation back to the queue, exactly once.

        One ``TransactWriteItems``: the batch record goes ``enqueued`` -> ``released``
        (conditional) and the counter drops by its tokens. Calling it again, concurrently,
        or for a key never reserved changes nothing. Call it when the batch is finished;
        failed batches have been reported to keep counting against OpenAI's cap for a while
        (https://github.com/openai/openai-python/issues/2084), so a caller may delay it then.

        Returns:
            Tokens given back; 0 when nothing was held.
        """
        record = self._get(f"batch#{batch_key}")
        if record is None or record.get("state") != _ENQUEUED:
            return 0
        tokens = int(record["tokens"])
        now = _floor3(_decimal(self._clock()))
        try:
            ddb().transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": {"pk": self._pk, "sk": f"batch#{batch_key}"},
                            "UpdateExpression": (
                                "SET #state = :released, released_at = :now, expires_at = :exp"
                            ),
                            "ConditionExpression": "#state = :enqueued AND #tokens = :t",
                            "ExpressionAttributeNames": {"#state": "state", "#tokens": "tokens"},
                            "ExpressionAttributeValues": {
                                ":released": _RELEASED,
                                ":enqueued": _ENQUEUED,
                                ":t": tokens,
                                ":now": now,
                                ":exp": int(now) + RELEASED_BATCH_TTL_SECONDS,
                            },
                        }
                    },
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": {"pk": self._pk, "sk": "queue"},
                            "UpdateExpression": "ADD enqueued_tokens :minus",
                            "ExpressionAttributeValues": {":minus": -tokens},
                        }
                    },
                ]
            )
        except ClientError as exc:
            if not _is_code(exc, "TransactionCanceledException"):
                raise
            if cancellation_codes(exc)[:1] == ["ConditionalCheckFailed"]:
                return 0  # released concurrently
            raise
        return tokens

    def state(self) -> QueueState:
        """The queue item refilled to now (one consistent read, no write)."""
        queue = self._get("queue")
        creations, _, version = self._creations(queue, _floor3(_decimal(self._clock())))
        return QueueState(
            available_creations=float(creations),
            enqueued_tokens=int((queue or {}).get("enqueued_tokens", 0)),
            version=version,
        )

    def _get(self, sk: str) -> dict[str, Any] | None:
        item: dict[str, Any] | None = (
            ddb()
            .get_item(TableName=self._table, Key={"pk": self._pk, "sk": sk}, ConsistentRead=True)
            .get("Item")
        )
        return item

    def _creations(
        self, queue: dict[str, Any] | None, now: Decimal
    ) -> tuple[Decimal, Decimal, int]:
        """``(available creations, refilled_at, version)`` refilled to ``now``."""
        if queue is None or "version" not in queue:
            return self._per_hour, now, 0
        at = Decimal(queue["refilled_at"])
        elapsed = max(_ZERO, now - at)
        available = Decimal(queue["available_creations"]) + self._per_hour * elapsed / _HOUR
        return min(self._per_hour, _floor3(available)), max(at, now), int(queue["version"])

    def _transact_reserve(
        self,
        batch_key: str,
        tokens: int,
        creations: Decimal,
        at: Decimal,
        version: int,
        raw_now: Decimal,
    ) -> None:
        # The creation bucket must be as read (version); the counter must still fit the cap
        # (releases change it without touching the version).
        fits = "(attribute_not_exists(enqueued_tokens) OR enqueued_tokens <= :max_before)"
        unchanged = "attribute_not_exists(#version)" if version == 0 else "#version = :version"
        ddb().transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": {
                            "pk": self._pk,
                            "sk": f"batch#{batch_key}",
                            "tokens": tokens,
                            "state": _ENQUEUED,
                            "reserved_at": _floor3(raw_now),
                        },
                        "ConditionExpression": "attribute_not_exists(pk) OR #state = :released",
                        "ExpressionAttributeNames": {"#state": "state"},
                        "ExpressionAttributeValues": {":released": _RELEASED},
                    }
                },
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": {"pk": self._pk, "sk": "queue"},
                        "UpdateExpression": (
                            "SET available_creations = :c, refilled_at = :at, "
                            "#version = :next, creations_per_hour = :per_hour, "
                            "enqueued_token_cap = :cap ADD enqueued_tokens :t"
                        ),
                        "ConditionExpression": f"{unchanged} AND {fits}",
                        "ExpressionAttributeNames": {"#version": "version"},
                        "ExpressionAttributeValues": {
                            ":c": creations,
                            ":at": at,
                            ":next": version + 1,
                            ":per_hour": int(self._per_hour),
                            ":cap": self._cap,
                            ":t": tokens,
                            ":max_before": self._cap - tokens,
                            **({":version": version} if version else {}),
                        },
                    }
                },
            ]
        )
