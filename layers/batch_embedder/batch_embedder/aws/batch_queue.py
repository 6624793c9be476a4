"""The Batch API's own limits, shared by concurrent Lambdas in DynamoDB.

The Batch API's own pool (separate from RPM/TPM): batch creations per hour ("2,000 per
hour (unverified)") and the model's enqueued-token cap ("3M tokens at tier 1 for
3-small (unverified)"), both from ``docs/openai-limits.md``, "Batch API", and both
parameters.

Items ``pk = "batchq#<scope>#<model>"`` of the usage table (``sk = "queue"`` and one
``sk = "batch#<batch_key>"`` per reservation); how they are written:
:mod:`batch_embedder.aws.levels`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from .dynamodb import cancellation_codes, ddb
from .levels import (
    CONTENTION_WAIT_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    HOUR,
    MILLI,
    REFERENCE_BATCH_CREATIONS_PER_HOUR,
    REFERENCE_ENQUEUED_TOKEN_CAP,
    RELEASED_BATCH_TTL_SECONDS,
    ZERO,
    Acquire,
    ceil3,
    floor3,
    is_code,
    non_negative_count,
    positive_capacity,
    to_decimal,
)

__all__ = ["BatchQueueLimits", "QueueState"]

_ENQUEUED = "enqueued"
_RELEASED = "released"


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
        self._per_hour = positive_capacity("creations_per_hour", creations_per_hour)
        self._cap = int(positive_capacity("enqueued_token_cap", enqueued_token_cap))
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
        non_negative_count("tokens", tokens)
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
            raw_now = to_decimal(self._clock())
            creations, at, version = self._creations(queue, floor3(raw_now))
            enqueued = int((queue or {}).get("enqueued_tokens", 0))
            wait = ZERO
            if creations < 1:
                wait = ceil3(at + (1 - creations) * HOUR / self._per_hour) - raw_now
            if enqueued + tokens > self._cap:
                wait = max(wait, to_decimal(self._full_wait))
            if creations < 1 or enqueued + tokens > self._cap:
                return Acquire(False, float(max(MILLI, wait)), conflicts)
            try:
                self._transact_reserve(batch_key, tokens, creations - 1, at, version, raw_now)
            except ClientError as exc:
                if not is_code(exc, "TransactionCanceledException"):
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
        now = floor3(to_decimal(self._clock()))
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
            if not is_code(exc, "TransactionCanceledException"):
                raise
            if cancellation_codes(exc)[:1] == ["ConditionalCheckFailed"]:
                return 0  # released concurrently
            raise
        return tokens

    def state(self) -> QueueState:
        """The queue item refilled to now (one consistent read, no write)."""
        queue = self._get("queue")
        creations, _, version = self._creations(queue, floor3(to_decimal(self._clock())))
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
        elapsed = max(ZERO, now - at)
        available = Decimal(queue["available_creations"]) + self._per_hour * elapsed / HOUR
        return min(self._per_hour, floor3(available)), max(at, now), int(queue["version"])

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
                            "reserved_at": floor3(raw_now),
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
