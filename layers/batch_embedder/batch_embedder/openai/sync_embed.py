"""The synchronous Embeddings API, paced by the shared token bucket and retried with tenacity.

For small or urgent jobs and for search queries: no batch wait, standard price. Requests
carry many inputs each (at most 2,048 inputs and 300,000 tokens, the endpoint's limits in
``docs/openai-limits.md``). Before each request the caller's
:class:`~batch_embedder.aws.rate_bucket.TokenBucket` (RPM + TPM, shared in DynamoDB by
every Lambda) grants its tokens; every response's ``x-ratelimit-*`` headers and every
429's ``retry-after`` correct the bucket, so deployments sharing one key converge.

Retries (tenacity, the SDK's own are off): 429 rate limits, 5xx, connection errors and
timeouts, waiting ``retry-after`` when the server gives one and exponential backoff with
jitter otherwise. Never retried: 429 ``insufficient_quota`` (no credit), 401, 400.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import openai
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from ..aws.rate_bucket import TokenBucket
from .batch_files import BatchLimits, pack_requests
from .client import QuotaExhaustedError
from .files import decode_embedding
from .headers import retry_after_seconds

#: Backoff when the server gives no retry-after: 0.5 s doubling to 30 s, plus up to 1 s jitter.
_BACKOFF = wait_exponential_jitter(multiplier=0.5, max=30.0, jitter=1.0)


@dataclass
class SyncResult:
    """Vectors in input order, and what it took to get them."""

    vectors: list[np.ndarray[Any, Any]] = field(default_factory=list)
    billed_tokens: int = 0
    requests: int = 0
    rate_limited: int = 0
    retries: int = 0
    waited_seconds: float = 0.0


def is_retryable(exc: BaseException) -> bool:
    """Whether an OpenAI error is worth another attempt (see the module doc)."""
    if isinstance(exc, openai.RateLimitError):
        return exc.code != "insufficient_quota"
    return isinstance(exc, openai.APIConnectionError | openai.InternalServerError)


def _retry_after(exc: BaseException | None) -> float | None:
    response = getattr(exc, "response", None)
    return retry_after_seconds(response.headers) if response is not None else None


def _waiter(bucket: TokenBucket | None) -> Callable[[RetryCallState], float]:
    """Seconds tenacity sleeps before the next attempt.

    After a 429 with a bucket, none: the bucket was blocked for ``retry-after`` and its
    ``acquire`` does the waiting, for this worker and every other one sharing the key.
    """

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if bucket is not None and isinstance(exc, openai.RateLimitError):
            return 0.0
        hinted = _retry_after(exc)
        return hinted if hinted is not None else float(_BACKOFF(state))

    return wait


def embed_sync(
    client: openai.OpenAI,
    rows: Sequence[tuple[str, int]],
    *,
    model: str,
    dimensions: int | None,
    bucket: TokenBucket | None,
    max_wait_seconds: float,
    max_attempts: int = 8,
    limits: BatchLimits | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SyncResult:
    """Embed ``rows`` of ``(text, token_count)``; returns their vectors in the same order.

    Args:
        client: an ``openai.OpenAI`` (or ``AzureOpenAI``) with ``max_retries=0`` (retries
            happen here).
        rows: texts with their exact cl100k_base token counts (what the bucket is charged).
        model: what the request names: the model, or the Azure deployment
            (``client.request_model``).
        dimensions: the ``dimensions`` parameter, or None for the model's native size.
        bucket: the shared RPM/TPM bucket; None to call without pacing (tests, search).
        max_wait_seconds: longest single wait for the bucket, seconds.

    Raises:
        QuotaExhaustedError: 429 ``insufficient_quota``: the account has no credit.
        RateLimitWaitTooLong: the bucket needs a longer wait than ``max_wait_seconds``.
        openai.APIStatusError: a non-retryable error (401, 400), or retries ran out.
    """
    result = SyncResult(vectors=[np.empty(0, dtype=np.float32)] * len(rows))
    numbered = [(i, text, tokens) for i, (text, tokens) in enumerate(rows)]
    for request in pack_requests(numbered, limits):
        tokens = sum(t for _, _, t in request)
        texts = [text for _, text, _ in request]

        def call(texts: list[str] = texts, tokens: int = tokens) -> Any:
            if bucket is not None:
                result.waited_seconds += bucket.acquire(
                    tokens, 1, max_wait_seconds=max_wait_seconds
                )
            try:
                raw = client.embeddings.with_raw_response.create(
                    model=model,
                    input=texts,
                    encoding_format="base64",
                    dimensions=dimensions if dimensions is not None else openai.omit,
                )
            except openai.RateLimitError as exc:
                if exc.code == "insufficient_quota":
                    raise QuotaExhaustedError(str(exc)) from exc
                result.rate_limited += 1
                if bucket is not None:
                    bucket.observe_rate_limited(_retry_after(exc) or 1.0)
                raise
            if bucket is not None:
                bucket.observe_headers(raw.headers)
            return raw.parse()

        retrying = Retrying(
            retry=retry_if_exception(is_retryable),
            wait=_waiter(bucket),
            stop=stop_after_attempt(max_attempts),
            sleep=sleep,
            reraise=True,
        )
        response = retrying(call)
        result.retries += retrying.statistics.get("attempt_number", 1) - 1
        result.requests += 1
        # A compatible server that reports no usage is counted with cl100k_base's tokens.
        usage = getattr(response, "usage", None)
        result.billed_tokens += usage.total_tokens if usage is not None else tokens
        first = request[0][0]
        for item in response.data:
            result.vectors[first + item.index] = decode_embedding(item.embedding)
    return result
