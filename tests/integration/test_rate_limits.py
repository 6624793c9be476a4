"""The synchronous path under 429s: the shared bucket slows down and the run completes.

Only urgent documents (``SyncPrefixes`` or the tag ``priority=urgent``) and the fallback
of a failed or expired batch use the synchronous API.
"""

from __future__ import annotations

import os
import time
from typing import Any

import openai
import psycopg
import pytest

from batch_embedder.aws.rate_bucket import TokenBucket
from batch_embedder.openai.batch_files import BatchLimits
from batch_embedder.openai.client import QuotaExhaustedError
from batch_embedder.openai.sync_embed import embed_sync
from batch_embedder.tokenizer import count_tokens
from batch_embedder_local.stack import LOCAL_API_KEY
from tests.utils import fresh

pytestmark = pytest.mark.integration
MODEL = "text-embedding-3-small"


def client(emulator: Any) -> openai.OpenAI:
    return openai.OpenAI(api_key=LOCAL_API_KEY, base_url=emulator.base_url, max_retries=0)


def rows(n: int) -> list[tuple[str, int]]:
    texts = [f"Sentence {i} about token buckets, retries and the Batch API." for i in range(n)]
    return [(t, count_tokens(t)) for t in texts]


def test_429s_and_lower_remaining_slow_the_bucket_and_the_run_completes(
    stack: Any, emulator: Any
) -> None:
    bucket = TokenBucket(
        table=os.environ["USAGE_TABLE"], scope="test-429", model=MODEL,
        requests_per_minute=3000, tokens_per_minute=1_000_000,
    )  # fmt: skip
    emulator.update_config(
        fail_next_requests_429=3, retry_after_seconds=1.0,
        remaining_override={"requests": 5, "tokens": 2000},
    )  # fmt: skip
    data = rows(200)
    before = emulator.stats()
    result = embed_sync(
        client(emulator), data, model=MODEL, dimensions=None, bucket=bucket,
        max_wait_seconds=30, limits=BatchLimits(inputs_per_request=20),
    )  # fmt: skip
    answered = time.monotonic()
    assert len(result.vectors) == 200 and all(v.shape == (1536,) for v in result.vectors)
    assert result.requests == 10 and result.rate_limited == 3 and result.retries == 3
    # After the 429 (retry-after 1 s) every taker of the bucket was held back.
    assert result.waited_seconds >= 0.9
    # The server's lower x-ratelimit-remaining won over the bucket's own view: what is
    # available now is that, plus what refilled since (3,000 RPM = 50 requests a second,
    # 1M TPM), however slow the machine.
    state = bucket.state()
    since = time.monotonic() - answered + 0.05
    assert state.available_requests <= 5 + 1 + 3000 / 60 * since
    assert state.available_tokens <= 2000 + 1000 + 1_000_000 / 60 * since
    # Billed tokens are tiktoken's count; the emulator billed exactly the successful calls.
    assert result.billed_tokens == sum(t for _, t in data)
    assert (
        emulator.stats()["sync_billed_tokens"] - before["sync_billed_tokens"]
        == result.billed_tokens
    )


def test_5xx_is_retried_and_insufficient_quota_is_not(stack: Any, emulator: Any) -> None:
    emulator.update_config(fail_next_requests_5xx=2)
    before = emulator.stats()
    ok = embed_sync(client(emulator), rows(5), model=MODEL, dimensions=256, bucket=None,
                    max_wait_seconds=5, sleep=lambda s: None)  # fmt: skip
    assert ok.retries == 2 and ok.vectors[0].shape == (256,)
    assert emulator.stats()["server_errors"] - before["server_errors"] == 2
    emulator.update_config(insufficient_quota=True)
    before = emulator.stats()
    with pytest.raises(QuotaExhaustedError):
        embed_sync(client(emulator), rows(5), model=MODEL, dimensions=None, bucket=None,
                   max_wait_seconds=5, sleep=lambda s: None)  # fmt: skip
    # Asked once and never again: an empty quota is not waited out.
    assert emulator.stats()["api_requests"] - before["api_requests"] == 1


def test_an_urgent_group_under_429s_waits_them_out_and_completes(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    monkeypatch.setenv("SYNC_PREFIXES", "urgent/")
    # Several requests per document, and the first two answered 429 (retry-after 0.5 s).
    monkeypatch.setenv("BATCH_INPUTS_PER_REQUEST", "2")
    emulator.update_config(fail_next_requests_429=2, retry_after_seconds=0.5)
    keys = ["urgent/429-a.rst.txt", "urgent/429-b.rst.txt"]
    before = emulator.stats()
    events = [
        stack.upload(keys[0], fresh("whatnow.rst.txt", "429"), deliver=False),
        stack.upload(keys[1], fresh("appetite.rst.txt", "429"), deliver=False),
    ]
    arn = stack.start_execution(events)
    [result] = stack.wait({arn: "urgent"}, timeout=300)
    assert result.status == "SUCCEEDED", (result.failed_state, result.cause)
    assert "EmbedSync" in result.states and "BuildAndUploadJsonl" not in result.states
    after = emulator.stats()
    assert after["rate_limited"] - before["rate_limited"] == 2
    assert after["batches_created"] == before["batches_created"]
    # Every chunk billed once: the 429s were waited out, not paid for.
    out = result.output
    assert out["api"] == "sync"
    assert after["sync_billed_tokens"] - before["sync_billed_tokens"] == out["billed_tokens"]
    assert out["billed_tokens"] == out["tokens"] - out["tokens_saved"] > 0
    for key in keys:
        count = db.execute(
            "SELECT count(*) FROM batch_embedder.chunks WHERE source_key = %s", (key,)
        ).fetchone()
        assert count is not None and count[0] == result.document(key)["chunks"] > 0
