"""The token bucket of the synchronous Embeddings API's requests and tokens per minute.

Shared by concurrent Lambdas through one item of the usage table; its layout and how it
is written: :mod:`batch_embedder.aws.levels`. Limits: ``docs/openai-limits.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from ..openai.headers import server_bounds
from .dynamodb import ddb
from .levels import (
    BUCKET_TTL_SECONDS,
    CONTENTION_WAIT_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DESERIALIZER,
    MILLI,
    MINUTE,
    ZERO,
    Acquire,
    BucketContendedError,
    RateLimitWaitTooLong,
    ceil3,
    floor3,
    is_code,
    non_negative_count,
    positive_capacity,
    to_decimal,
)

__all__ = ["BucketState", "TokenBucket"]

_T = TypeVar("_T")


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
        self._rpm = positive_capacity("requests_per_minute", requests_per_minute)
        self._tpm = positive_capacity("tokens_per_minute", tokens_per_minute)
        if not 0.0 <= initial_fill <= 1.0:
            raise ValueError(f"initial_fill must be within 0..1, got {initial_fill!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts!r}")
        self._fill = to_decimal(initial_fill)
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
                ready = max(ready, level.at + (want_requests - level.requests) * MINUTE / self._rpm)
            if level.tokens < want_tokens:
                ready = max(ready, level.at + (want_tokens - level.tokens) * MINUTE / self._tpm)
            if blocked and level.blocked_until is not None:
                ready = max(ready, level.blocked_until)
            return None, (False, float(max(MILLI, ceil3(ready) - raw_now)))

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
        bounds = server_bounds(headers, requests_per_minute=self._rpm, tokens_per_minute=self._tpm)
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
        pause = to_decimal(retry_after_seconds)
        if pause < 0:
            raise ValueError(f"retry_after_seconds must be >= 0, got {retry_after_seconds!r}")

        def decide(level: _Level, raw_now: Decimal) -> tuple[_Level | None, None]:
            until = ceil3(raw_now + pause)
            if level.blocked_until is not None:
                until = max(until, level.blocked_until)
            if level.requests == 0 and level.tokens == 0 and level.blocked_until == until:
                return None, None
            return replace(level, requests=ZERO, tokens=ZERO, blocked_until=until), None

        self._update(decide)

    def state(self) -> BucketState:
        """The stored levels refilled to now (one consistent read, no write)."""
        item = self._get()
        raw_now = to_decimal(self._clock())
        level = self._refill(self._level(item, floor3(raw_now)), floor3(raw_now))
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
        non_negative_count("tokens", tokens)
        non_negative_count("requests", requests)
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

    def _get(self) -> dict[str, Any] | None:
        item: dict[str, Any] | None = (
            ddb().get_item(TableName=self._table, Key=self._key, ConsistentRead=True).get("Item")
        )
        return item

    def _level(self, item: dict[str, Any] | None, now: Decimal) -> _Level:
        if item is None:
            return _Level(
                requests=floor3(self._rpm * self._fill),
                tokens=floor3(self._tpm * self._fill),
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
        elapsed = max(ZERO, now - level.at)
        return replace(
            level,
            requests=min(self._rpm, floor3(level.requests + self._rpm * elapsed / MINUTE)),
            tokens=min(self._tpm, floor3(level.tokens + self._tpm * elapsed / MINUTE)),
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
            raw_now = to_decimal(self._clock())
            now = floor3(raw_now)
            level = self._refill(self._level(item, now), now)
            new, result = decide(level, raw_now)
            if new is None and item is not None:
                return result, conflicts
            try:
                self._put(
                    level if new is None else new, expected_version=level.version, raw_now=raw_now
                )
            except ClientError as exc:
                if not is_code(exc, "ConditionalCheckFailedException"):
                    raise
                conflicts += 1
                response: Any = exc.response  # ALL_OLD: the item that won, in wire format
                old = response.get("Item")
                item = (
                    {k: DESERIALIZER.deserialize(v) for k, v in old.items()} if old else self._get()
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
