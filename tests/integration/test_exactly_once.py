"""Every token paid for once and counted once, whatever fails (the fault suite).

Each scenario runs the real ASL and handlers on the local stack with a fault injected
(a Lambda that dies after its work, 429s and 5xx, a tight TPM, failed / expired /
cancelled batches, failed lines, OpenAI unreachable, an aborted execution, a revoked
key) and checks the three invariants:

1. billed (the emulator's billing counters) == committed (DynamoDB) == ledger;
2. tokens are paid again only for content whose vector never reached the store, and
   reported (``repaid_tokens``): here, never;
3. nothing is left over: reserved == 0, enqueued == 0, no claim and no open batch of the
   execution, no OpenAI file left behind.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import openai
import psycopg
import pytest

from batch_embedder.steps.batch import TERMINAL
from tests.books import (
    Books,
    chunks_of,
    counter,
    embedded_once,
    job_batches,
    job_of,
    planned_tokens,
    reupload_buys_only_the_rest,
    sdk,
    start,
)
from tests.utils import fresh, until

pytestmark = pytest.mark.integration

#: Every Task that can crash after its side effect (WaitForBatches stores a token).
TASKS = [
    "ChunkAndEstimateFunction",
    "CheckCacheFunction",
    "BudgetCheckFunction",
    "BuildAndUploadJsonlFunction",
    "CreateBatchFunction",
    "WaitForBatchesFunction",
    "FetchAndWriteFunction",
    "RecordCostFunction",
]


def test_a_crash_after_every_task_buys_nothing_twice(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"crash-{salt}/errors.rst.txt"
    books = Books(stack)
    calls_before = len(stack.adapter.invocations)
    for task in TASKS:
        stack.adapter.crash_after(task)
    [result] = stack.ingest([(key, fresh("errors.rst.txt", salt))], timeout=300)
    assert embedded_once(result, books, db, key) > 0
    calls = [name for name, _, _ in stack.adapter.invocations[calls_before:]]
    for task in TASKS:
        assert calls.count(task) >= 2, (task, calls)  # it ran, "crashed", and ran again


def test_a_crash_after_the_synchronous_requests_buys_nothing_twice(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    salt = uuid.uuid4().hex[:8]
    monkeypatch.setenv("SYNC_PREFIXES", f"urgent-{salt}/")
    monkeypatch.setenv("BATCH_INPUTS_PER_REQUEST", "2")  # several requests, several checkpoints
    key = f"urgent-{salt}/errors.rst.txt"
    books = Books(stack)
    stack.adapter.crash_after("EmbedSyncFunction")
    stack.adapter.crash_after("FetchAndWriteFunction")
    [result] = stack.ingest([(key, fresh("errors.rst.txt", salt))], timeout=300)
    assert embedded_once(result, books, db, key) == books.billed("sync_billed_tokens") > 0


def test_429s_and_5xx_on_the_synchronous_path(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    salt = uuid.uuid4().hex[:8]
    monkeypatch.setenv("SYNC_PREFIXES", f"flaky-{salt}/")
    monkeypatch.setenv("BATCH_INPUTS_PER_REQUEST", "2")
    emulator.update_config(
        error_rate_429=0.5, error_rate_5xx=0.1, error_seed=7, retry_after_seconds=0.05
    )
    key = f"flaky-{salt}/errors.rst.txt"
    books = Books(stack)
    refused_before = emulator.stats()["rate_limited"] + emulator.stats()["server_errors"]
    [result] = stack.ingest([(key, fresh("errors.rst.txt", salt))], timeout=300)
    assert emulator.stats()["rate_limited"] + emulator.stats()["server_errors"] > refused_before
    embedded_once(result, books, db, key)


def test_a_synchronous_job_larger_than_the_token_bucket_is_paced_without_paying_twice(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    salt = uuid.uuid4().hex[:8]
    monkeypatch.setenv("SYNC_PREFIXES", f"tight-{salt}/")
    monkeypatch.setenv("BATCH_INPUTS_PER_REQUEST", "4")
    # 1,200 tokens a minute for a job of about 2,000: the bucket can never hold it all, so
    # EmbedSync buys what fits, hands the wait to Step Functions and resumes.
    monkeypatch.setenv("EMBEDDINGS_TOKENS_PER_MINUTE", "1200")
    monkeypatch.setenv("OPENAI_RATE_LIMIT_SCOPE", f"tight-{salt}")
    monkeypatch.setenv("RATE_LIMIT_MAX_WAIT_SECONDS", "1")
    key = f"tight-{salt}/appetite.rst.txt"
    body = fresh("appetite.rst.txt", salt) + fresh("whatnow.rst.txt", salt)
    books = Books(stack)
    calls_before = len(stack.adapter.invocations)
    [result] = stack.ingest([(key, body)], timeout=300)
    out = result.output
    assert out["tokens"] > 1200
    sync_calls = [
        c for c in stack.adapter.invocations[calls_before:] if c[0] == "EmbedSyncFunction"
    ]
    assert len(sync_calls) >= 2  # paced over several attempts
    embedded_once(result, books, db, key)


@pytest.mark.parametrize("outcome", ["failed", "expired", "cancelled"])
@pytest.mark.parametrize("fallback", [True, False])
def test_a_batch_that_does_not_complete_is_finished_and_paid_once(
    stack: Any,
    emulator: Any,
    db: psycopg.Connection[tuple[Any, ...]],
    monkeypatch: Any,
    outcome: str,
    fallback: bool,
) -> None:
    salt = uuid.uuid4().hex[:8]
    monkeypatch.setenv("BATCH_INPUTS_PER_REQUEST", "2")  # expired/cancelled keep a part
    monkeypatch.setenv("SYNC_FALLBACK", str(fallback).lower())
    emulator.update_config(batch_outcome=outcome, batch_in_progress_seconds=0.5)
    key = f"{outcome}-{fallback}-{salt}/errors.rst.txt"
    books = Books(stack)
    arn = start(stack, key, fresh("errors.rst.txt", salt))
    # Only the first batch misbehaves: the next round's batch completes.
    until(lambda: job_batches(stack, job_of(arn)), what="the first batch")
    emulator.update_config(batch_outcome="completed")
    [result] = stack.wait({arn: key}, timeout=300)
    assert ("EmbedSync" in result.states) == fallback
    assert result.states.count("CreateBatch") == (1 if fallback else 2)
    if outcome != "failed":
        assert books.billed("batch_billed_tokens") > 0  # the part that came back was kept
    embedded_once(result, books, db, key, arn)


def test_a_failed_line_then_the_same_file_again_pays_only_that_line(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    salt = uuid.uuid4().hex[:8]
    monkeypatch.setenv("BATCH_INPUTS_PER_REQUEST", "2")
    monkeypatch.setenv("SYNC_FALLBACK", "false")
    emulator.update_config(fail_custom_id_pattern=r":0-2$")  # the first line, every round
    key = f"line-{salt}/errors.rst.txt"
    body = fresh("errors.rst.txt", salt)
    books = Books(stack)
    [first] = stack.ingest([(key, body)], timeout=300)
    assert first.status == "FAILED" and first.failed_state == "EmbeddingsIncomplete"
    assert key in first.cause and "3 round(s)" in first.cause
    assert chunks_of(db, key) == 0  # the document is written whole or not at all
    books.check(db, first.execution_arn)
    billed_first = books.billed()
    # The first line's two contents are all that is missing from the content store.
    manifest = (
        boto3.client("s3")
        .get_object(
            Bucket=os.environ["WORK_BUCKET"], Key=f"jobs/{job_of(first.execution_arn)}/embed.jsonl"
        )["Body"]
        .read()
    )
    line_tokens = sum(
        r["token_count"] for r in map(json.loads, manifest.splitlines()) if r["seq"] in (0, 1)
    )
    emulator.update_config(fail_custom_id_pattern=None)
    planned = planned_tokens(first.execution_arn)
    assert reupload_buys_only_the_rest(stack, db, key, body, billed_first, planned) == line_tokens


def test_a_three_batch_job_whose_first_batch_fails(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"three-{salt}/controlflow.rst.txt"
    body = fresh("controlflow.rst.txt", salt)
    monkeypatch.setenv("BATCH_INPUTS_PER_REQUEST", "4")
    monkeypatch.setenv("BATCH_ENQUEUED_TOKEN_CAP", "2500")  # about a third of the document
    monkeypatch.setenv("BATCH_QUEUE_FULL_WAIT_SECONDS", "1")
    monkeypatch.setenv("SYNC_FALLBACK", "false")
    emulator.update_config(batch_outcome="failed")
    books = Books(stack)
    arn = start(stack, key, body)
    until(lambda: job_batches(stack, job_of(arn)), what="the first batch")
    emulator.update_config(batch_outcome="completed")
    [result] = stack.wait({arn: key}, timeout=300)
    batches = job_batches(stack, job_of(arn))
    assert len(batches) >= 4  # three, then the first one's contents again
    assert sorted(b.status for b in batches).count("failed") == 1
    embedded_once(result, books, db, key, arn)


def test_openai_unreachable_during_the_wait_and_during_the_fetch(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"outage-{salt}/errors.rst.txt"
    emulator.update_config(batch_in_progress_seconds=1.0)
    books = Books(stack)
    gate = stack.adapter.hold("FetchAndWriteFunction")
    arn = start(stack, key, fresh("errors.rst.txt", salt))
    until(lambda: stack.current_state(arn) == "WaitForBatches", what="the wait")
    emulator.update_config(outage_seconds=3)  # the batch ends during the outage
    result_during = stack.reconcile()  # the reconciler survives it (next run)
    assert "errorType" not in result_during, result_during
    until(lambda: stack.current_state(arn) == "FetchAndWrite", timeout=60, what="the fetch")
    emulator.update_config(outage_seconds=6)  # and the fetch starts during another one
    gate.set()
    [result] = stack.wait({arn: key}, timeout=300)
    assert emulator.stats()["outage_refused"] > books.stats["outage_refused"]
    embedded_once(result, books, db, key, arn)


def test_the_asl_outlasts_a_ten_minute_outage() -> None:
    """The Retry of every Task that talks to OpenAI or Postgres spans more than 10 minutes
    of connection errors (the fault test above uses seconds; this is the schedule)."""
    from pathlib import Path

    asl = json.loads(
        (Path(__file__).resolve().parents[2] / "statemachine/embed_uploads.asl.json").read_text()
    )
    for name, state in asl["States"].items():
        for retry in state.get("Retry", []):
            if "APIConnectionError" not in retry["ErrorEquals"]:
                continue
            assert retry.get("JitterStrategy", "NONE") == "NONE", name
            wait, total = float(retry["IntervalSeconds"]), 0.0
            for _ in range(retry["MaxAttempts"]):
                total += min(wait, retry.get("MaxDelaySeconds", wait))
                wait *= retry["BackoffRate"]
            assert total >= 600, (name, total)


def start_split(
    stack: Any, key: str, body: bytes, monkeypatch: Any, emulator: Any, running: float = 20.0
) -> str:
    """Start a group whose first batch runs (``running`` seconds) while the rest waits for
    room in the queue (a Wait state: where StopExecution takes effect at once, locally as
    on AWS)."""
    monkeypatch.setenv("BATCH_INPUTS_PER_REQUEST", "4")
    monkeypatch.setenv("BATCH_ENQUEUED_TOKEN_CAP", "2500")
    monkeypatch.setenv("BATCH_QUEUE_FULL_WAIT_SECONDS", "30")
    emulator.update_config(batch_in_progress_seconds=running)
    arn = start(stack, key, body)
    until(lambda: stack.current_state(arn) == "WaitForBatchQueue", what="the queue wait")
    assert len(job_batches(stack, job_of(arn))) == 1
    return arn


def test_an_aborted_execution_is_brought_in_by_the_reconciler(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"abort-{salt}/controlflow.rst.txt"
    body = fresh("controlflow.rst.txt", salt)
    books = Books(stack)
    arn = start_split(stack, key, body, monkeypatch, emulator)
    stack.abort(arn)
    until(lambda: stack.status(arn) == "ABORTED", what="the abort")
    first = stack.reconcile()  # the owner is gone: its running batch is cancelled
    assert first["cancelled"] == 1, first
    [batch] = job_batches(stack, job_of(arn))
    until(
        lambda: stack.emulator.batches.get(batch.id).status in TERMINAL,
        what="the cancellation",
    )
    second = stack.reconcile()  # ... then ingested and settled
    assert second["adopted"] == 1, second
    billed_first = books.check(db, arn)
    emulator.update_config(batch_in_progress_seconds=0.5)
    monkeypatch.setenv("BATCH_ENQUEUED_TOKEN_CAP", "3000000")
    # The re-upload buys only what the cancelled batch did not return.
    reupload_buys_only_the_rest(stack, db, key, body, billed_first, planned_tokens(arn))


def test_an_aborted_execution_then_the_sweep_commits_what_its_batch_billed(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"sweep-{salt}/controlflow.rst.txt"
    # The first batch completes, but no webhook comes and no reconciler runs: nobody has
    # recorded it when the execution is aborted and the sweep comes by.
    emulator.update_config(webhook_drop=True)
    books = Books(stack)
    arn = start_split(
        stack, key, fresh("controlflow.rst.txt", salt), monkeypatch, emulator, running=0.2
    )
    [batch] = job_batches(stack, job_of(arn))
    until(lambda: stack.emulator.batches.get(batch.id).status in TERMINAL, what="the batch")
    stack.abort(arn)
    until(lambda: stack.status(arn) == "ABORTED", what="the abort")
    later = (datetime.now(UTC) + timedelta(hours=27)).strftime("%Y-%m-%dT%H:%M:%SZ")
    swept = stack.sweep(at=later)  # past RESERVATION_HOLD_SECONDS
    assert swept["released_jobs"] == [job_of(arn)], swept
    assert swept["committed_tokens"] == books.billed() > 0  # what the batch billed
    assert stack.sweep(at=later)["released_jobs"] == []  # once
    books.check(db, arn)


def test_a_revoked_key_fails_before_anything_is_reserved_or_bought(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"revoked-{salt}/errors.rst.txt"
    emulator.update_config(api_key="sk-someone-else")  # the stack's key is now refused
    books = Books(stack)
    held_before = counter()["held_tokens"]
    [result] = stack.ingest([(key, fresh("errors.rst.txt", salt))], timeout=120)
    assert result.status == "FAILED"
    assert result.failed_state == "ProviderAuthFailed"
    assert key in result.cause and "refused the API key" in result.cause
    assert "BuildAndUploadJsonl" not in result.states and "EmbedSync" not in result.states
    assert books.billed() == 0
    assert counter()["held_tokens"] == held_before
    with pytest.raises(openai.AuthenticationError):
        sdk(stack).models.list()
    books.check(db, result.execution_arn)
