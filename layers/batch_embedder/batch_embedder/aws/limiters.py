"""The two OpenAI limiters every Lambda shares, bound from the settings in one place.

- :func:`token_bucket`: the synchronous Embeddings API's RPM and TPM
  (:class:`~batch_embedder.aws.rate_bucket.TokenBucket`);
- :func:`batch_queue`: the Batch API's creations per hour and enqueued-token cap
  (:class:`~batch_embedder.aws.batch_queue.BatchQueueLimits`).

Both are keyed by the API key's scope (``OPENAI_RATE_LIMIT_SCOPE``) and the model, since
OpenAI limits each model separately (``docs/openai-limits.md``).
"""

from __future__ import annotations

from ..settings import Settings
from .batch_queue import BatchQueueLimits
from .rate_bucket import TokenBucket

__all__ = ["batch_queue", "token_bucket"]


def token_bucket(settings: Settings, model: str) -> TokenBucket:
    """The RPM/TPM bucket every Lambda shares for ``model`` under this API key's scope."""
    return TokenBucket(
        table=settings.usage_table,
        scope=settings.openai_rate_limit_scope,
        model=model,
        requests_per_minute=settings.embeddings_requests_per_minute,
        tokens_per_minute=settings.embeddings_tokens_per_minute,
    )


def batch_queue(settings: Settings, model: str) -> BatchQueueLimits:
    """The Batch API's own limits for ``model`` (creations per hour, enqueued tokens)."""
    return BatchQueueLimits(
        table=settings.usage_table,
        scope=settings.openai_rate_limit_scope,
        model=model,
        creations_per_hour=settings.batch_creations_per_hour,
        enqueued_token_cap=settings.batch_enqueued_token_cap,
        full_queue_wait_seconds=float(settings.batch_queue_full_wait_seconds),
    )
