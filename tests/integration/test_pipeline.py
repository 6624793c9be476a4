"""The whole workflow on the local stack: real ASL, real handlers, moto, Postgres, emulator.

One execution embeds one group of uploads (the pipe's window); its output lists each
document's result.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import boto3
import psycopg
import pytest

from batch_embedder.aws import budget
from batch_embedder.openai.pricing import price_for
from batch_embedder.tokenizer import count_tokens
from tests.utils import SAMPLES, fresh, ledger, usd

pytestmark = pytest.mark.integration

MODEL = "text-embedding-3-small"
PRICE = price_for(MODEL)
START = ["ReadGroup", "ChunkAndEstimate", "AnyDeletes", "AnyChunks", "CheckCache",
         "BudgetCheck", "BudgetReserved", "HowToEmbed"]  # fmt: skip
HAPPY_PATH = [
    *START, "BuildAndUploadJsonl", "CreateBatch", "BatchQueued", "WaitForBatches",
    "FetchAndWrite", "AnyPending", "RecordCost", "Embedded",
]  # fmt: skip
SAMPLE_FILES = ["appetite.rst.txt", "controlflow.rst.txt", "errors.rst.txt", "venv.rst.txt"]
TUTORIAL_KEYS = [f"tutorial/{name}" for name in SAMPLE_FILES]


def rows(db: psycopg.Connection[tuple[Any, ...]], key: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT id, chunk_index, content_sha256, token_count, text, embedding::text "
        "FROM batch_embedder.chunks WHERE source_key = %s ORDER BY chunk_index",
        (key,),
    ).fetchall()


def counter(stack: Any) -> dict[str, int]:
    return (
        budget.budget_store(os.environ["JOBS_TABLE"], os.environ["USAGE_TABLE"])
        .counter(budget.utc_day(), f"model:{MODEL}")
        .model_dump()
    )


@pytest.fixture(scope="module")
def ingested(stack: Any) -> list[Any]:
    """The four tutorial pages uploaded one by one: one group (the pipe's 1 s window)."""
    files = [
        (key, (SAMPLES / name).read_bytes())
        for key, name in zip(TUTORIAL_KEYS, SAMPLE_FILES, strict=True)
    ]
    return stack.ingest(files, timeout=600)


def test_the_group_succeeds_through_the_named_states(ingested: list[Any]) -> None:
    assert sorted(k for r in ingested for k in r.keys) == TUTORIAL_KEYS
    for result in ingested:
        assert result.status == "SUCCEEDED", (result.keys, result.failed_state, result.cause)
        assert result.states == HAPPY_PATH
        out = result.output
        assert out["api"] == "batch" and out["batches"] == 1
        assert out["uploads"] == out["documents"] == len(result.keys)
        assert [d["status"] for d in out["results"]] == ["embedded"] * len(result.keys)
        assert out["rejected_count"] == 0 and out["rejected"] == []


def test_rows_in_pgvector_equal_chunks_and_tokens_match_tiktoken(
    ingested: list[Any], db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    for result in ingested:
        stored = {key: rows(db, key) for key in result.keys}
        for key, chunks in stored.items():
            assert len(chunks) == result.document(key)["chunks"] > 0
            assert [r[1] for r in chunks] == list(range(len(chunks)))
        every = [r for chunks in stored.values() for r in chunks]
        assert len(every) == result.output["chunks"] == result.output["vectors_written"]
        # Billed tokens (the emulator's usage) equal tiktoken's count of the stored chunks.
        assert result.output["billed_tokens"] == sum(count_tokens(r[4]) for r in every)
        assert result.output["billed_tokens"] == sum(r[3] for r in every)
        assert result.output["billed_tokens"] == result.output["tokens"]
        dims = db.execute(
            "SELECT DISTINCT vector_dims(embedding), dimensions, model "
            "FROM batch_embedder.chunks WHERE source_key = ANY(%s)",
            (result.keys,),
        ).fetchall()
        assert dims == [(1536, 1536, MODEL)]


def test_cost_record_and_dynamodb_counters(stack: Any, ingested: list[Any]) -> None:
    billed = sum(r.output["billed_tokens"] for r in ingested)
    c = counter(stack)
    assert c["reserved_tokens"] == 0  # every reservation settled
    assert c["committed_tokens"] >= billed
    assert c["held_tokens"] == c["committed_tokens"]
    for result in ingested:
        out = result.output
        record = ledger(out)
        tokens = int(record.tokens)
        assert tokens == out["billed_tokens"] > 0
        assert record.api == "batch" and float(record.price_per_million_usd) == 0.01
        assert int(record.documents) == out["documents"] and int(record.batches) == 1
        # OpenAI at the batch price, exactly; the standard price and what was saved.
        assert float(record.cost_usd) == out["cost_usd"] == usd(tokens, PRICE.batch)
        assert float(record.standard_cost_usd) == usd(tokens, PRICE.standard)
        assert float(record.saved_usd) == pytest.approx(
            usd(tokens, PRICE.standard) - usd(tokens, PRICE.batch), abs=1e-9
        )
        # AWS is counted too, and the total is their sum.
        assert out["aws_cost_usd"] > 0 and float(record.aws_cost_usd) == out["aws_cost_usd"]
        assert out["total_cost_usd"] == pytest.approx(out["cost_usd"] + out["aws_cost_usd"])
        assert float(record.total_cost_usd) == out["total_cost_usd"]
        job = (
            boto3.resource("dynamodb")
            .Table(os.environ["JOBS_TABLE"])
            .get_item(Key={"job_id": out["job_id"]})["Item"]
        )
        assert job["status"] == "SUCCEEDED" and job["reservation_state"] == "committed"


def test_same_file_twice_leaves_the_same_rows(
    stack: Any, ingested: list[Any], db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    key = TUTORIAL_KEYS[0]
    before = rows(db, key)
    [again] = stack.ingest([(key, (SAMPLES / SAMPLE_FILES[0]).read_bytes())], timeout=300)
    assert again.status == "SUCCEEDED", again.cause
    assert rows(db, key) == before  # same ids, content, vectors
    out = again.output
    assert out["vectors_written"] == 0  # an identical re-upload rewrites nothing
    assert out["billed_tokens"] == 0 and out["api"] == "none" and out["batches"] == 0
    # Unchanged: neither decoded nor chunked, no cache lookup, no budget, no batch.
    assert out["cache_hits"] == 0 and out["cost_usd"] == 0
    assert again.document(key)["status"] == "unchanged"
    assert "CheckCache" not in again.states and "BudgetCheck" not in again.states
    assert again.states[:2] == ["ReadGroup", "ChunkAndEstimate"]
    assert again.states[-2:] == ["RecordCost", "Embedded"]


def test_budget_exceeded_sends_nothing_and_reserves_nothing(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    monkeypatch.setenv("DAILY_TOKEN_LIMIT", "100")
    files_before = emulator.stats()["files"]
    held_before = counter(stack)["held_tokens"]
    [result] = stack.ingest([("big/controlflow.rst.txt", fresh("controlflow.rst.txt", "big"))])
    assert result.status == "FAILED"
    assert result.failed_state == "BudgetExceeded"
    assert result.error == "BudgetExceededError"
    assert "big/controlflow.rst.txt" in result.cause and "tokens" in result.cause
    assert "remain" in result.cause
    assert result.states[-3:] == ["RecordFailure", "FailureKind", "BudgetExceeded"]
    assert "BuildAndUploadJsonl" not in result.states
    assert emulator.stats()["files"] == files_before
    assert counter(stack)["held_tokens"] == held_before
    assert rows(db, "big/controlflow.rst.txt") == []


@pytest.mark.parametrize(
    ("switch", "failed_state"),
    [
        ({"batch_outcome": "failed"}, "BatchFailed"),
        ({"batch_outcome": "expired"}, "BatchExpired"),
        ({"fail_custom_id_pattern": r":0-"}, "EmbeddingsIncomplete"),
    ],
)
def test_batches_that_keep_failing_end_in_a_named_state_after_every_round(
    stack: Any,
    emulator: Any,
    db: psycopg.Connection[tuple[Any, ...]],
    switch: dict[str, Any],
    failed_state: str,
    monkeypatch: Any,
) -> None:
    emulator.update_config(**switch)
    # Several request lines, so an expired batch keeps some; no sync fallback: every round
    # goes through the Batch API and every round fails the same way.
    monkeypatch.setenv("BATCH_INPUTS_PER_REQUEST", "2")
    monkeypatch.setenv("SYNC_FALLBACK", "false")
    key = f"{failed_state}/errors.rst.txt"
    before = counter(stack)
    billed_before = emulator.stats()["batch_billed_tokens"]
    [result] = stack.ingest([(key, fresh("errors.rst.txt", failed_state))], timeout=300)
    assert result.status == "FAILED", result.states
    assert result.failed_state == failed_state
    assert result.states[-4:] == ["FetchAndWrite", "RecordFailure", "FailureKind", failed_state]
    assert result.states.count("CreateBatch") == 3  # EMBED_ROUNDS
    assert key in result.cause and "3 round(s)" in result.cause
    assert rows(db, key) == []  # a document is written whole or not at all
    after = counter(stack)
    assert after["reserved_tokens"] == before["reserved_tokens"] == 0
    # What the batches billed anyway (an expired batch's finished part) is committed, no more.
    billed = emulator.stats()["batch_billed_tokens"] - billed_before
    assert after["committed_tokens"] - before["committed_tokens"] == billed
    if failed_state != "BatchFailed":
        assert billed > 0


def test_a_failed_line_is_bought_again_synchronously_and_only_it(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    emulator.update_config(fail_custom_id_pattern=r":0-")
    monkeypatch.setenv("BATCH_INPUTS_PER_REQUEST", "2")  # the failed line holds 2 chunks
    key = "lines/errors.rst.txt"
    before = emulator.stats()
    [result] = stack.ingest([(key, fresh("errors.rst.txt", "lines"))], timeout=300)
    assert result.status == "SUCCEEDED", result.cause
    assert "EmbedSync" in result.states  # SyncFallback: the failed line's contents
    out = result.output
    after = emulator.stats()
    sync_part = after["sync_billed_tokens"] - before["sync_billed_tokens"]
    batch_part = after["batch_billed_tokens"] - before["batch_billed_tokens"]
    assert 0 < sync_part < batch_part
    assert out["billed_tokens"] == sync_part + batch_part == out["tokens"] - out["tokens_saved"]
    assert out["repaid_tokens"] == 0
    assert len(rows(db, key)) == out["chunks"]
    assert counter(stack)["reserved_tokens"] == 0


@pytest.mark.parametrize(
    ("key", "body", "reason"),
    [
        ("bad/empty.txt", b"", "empty"),
        ("bad/binary.txt", b"\x00\x01\x02PNG\x00" * 50, "binary"),
        ("bad/report.pdf", b"%PDF-1.4 some text", "not a readable PDF ("),
    ],
)
def test_bad_input_ends_in_invalid_document(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]], key: str, body: bytes, reason: str
) -> None:
    before = counter(stack)
    [result] = stack.ingest([(key, body)], timeout=120)
    assert result.status == "FAILED"
    assert result.failed_state == "InvalidDocument"
    assert key in result.cause and reason in result.cause
    assert "CheckCache" not in result.states
    assert rows(db, key) == []
    assert counter(stack) == before


def test_file_over_the_size_limit(stack: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("MAX_DOCUMENT_BYTES", "1000")
    [result] = stack.ingest([("bad/big.txt", b"word " * 1000)], timeout=120)
    assert result.failed_state == "InvalidDocument"
    assert "bad/big.txt" in result.cause and "5000 bytes" in result.cause


@pytest.mark.parametrize(
    "key", ["odd keys/with space.md", "odd/ünïcødé 文档.txt", "odd/100%+a=b.txt"]
)
def test_odd_keys_succeed(stack: Any, db: psycopg.Connection[tuple[Any, ...]], key: str) -> None:
    [result] = stack.ingest([(key, b"A short note about tokens and batches.\n\nSecond paragraph.")])
    assert result.status == "SUCCEEDED", result.cause
    assert result.keys == [key]
    assert len(rows(db, key)) == result.document(key)["chunks"] == 1


def test_search_finds_the_document_a_sentence_was_taken_from(
    home: Any, ingested: list[Any]
) -> None:
    from batch_embedder_local.search import search_local

    sentence = (
        "The with statement allows objects like files to be used in a way that ensures "
        "they are always cleaned up promptly and correctly."
    )
    hits = search_local(sentence, k=3, home=home)
    assert hits[0].key == "tutorial/errors.rst.txt"
    assert sentence.split(" statement")[1][:40] in " ".join(hits[0].text.split())
    assert hits[0].score > hits[-1].score


def test_full_batch_queue_waits_instead_of_failing(
    stack: Any, monkeypatch: Any, emulator: Any
) -> None:
    from batch_embedder.aws.limiters import batch_queue
    from batch_embedder.settings import Settings

    # Room for one of the two groups at a time: the second waits in WaitForBatchQueue.
    monkeypatch.setenv("BATCH_ENQUEUED_TOKEN_CAP", "12000")
    monkeypatch.setenv("BATCH_QUEUE_FULL_WAIT_SECONDS", "1")
    emulator.update_config(batch_in_progress_seconds=6.0)
    first = stack.start_execution(
        [stack.upload("queue/a.rst.txt", fresh("controlflow.rst.txt", "queue"), deliver=False)]
    )
    deadline = time.monotonic() + 60
    while stack.current_state(first) not in {"WaitForBatches", "FetchAndWrite"}:
        assert time.monotonic() < deadline, stack.current_state(first)
        time.sleep(0.2)
    second = stack.start_execution(
        [stack.upload("queue/b.rst.txt", fresh("classes.rst.txt", "queue"), deliver=False)]
    )
    results = stack.wait({first: "queue/a.rst.txt", second: "queue/b.rst.txt"}, timeout=300)
    assert [r.status for r in results] == ["SUCCEEDED", "SUCCEEDED"], [r.cause for r in results]
    assert "WaitForBatchQueue" not in results[0].states
    assert "WaitForBatchQueue" in results[1].states
    queue = batch_queue(Settings(), MODEL).state()
    assert queue.enqueued_tokens == 0  # every finished batch gave its tokens back


def test_executions_racing_for_the_last_tokens_never_pass_the_limit(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    [probe] = stack.ingest([("race/probe.rst.txt", fresh("venv.rst.txt", "probe"))], timeout=300)
    tokens = probe.output["tokens"]
    before = counter(stack)
    held = before["held_tokens"]
    limit = held + 3 * tokens + tokens // 2
    # Room for exactly three of the six groups below.
    monkeypatch.setenv("DAILY_TOKEN_LIMIT", str(limit))
    # Six different documents of the same size (the same tokens each): no cache hits. Each
    # is its own group, and the six executions run at the same time.
    keys = [f"race/copy-{i}.rst.txt" for i in range(6)]
    events = [stack.upload(k, fresh("venv.rst.txt", f"rac{i}"), deliver=False)
              for i, k in enumerate(keys)]  # fmt: skip
    arns = {stack.start_execution([e]): k for e, k in zip(events, keys, strict=True)}
    results = stack.wait(arns, timeout=300)
    won = [r for r in results if r.status == "SUCCEEDED"]
    lost = [r for r in results if r.status != "SUCCEEDED"]
    assert len(won) == 3 and {r.failed_state for r in lost} == {"BudgetExceeded"}
    after = counter(stack)
    assert after["reserved_tokens"] == 0  # nothing left reserved
    committed = after["committed_tokens"] - before["committed_tokens"]
    assert committed == sum(r.output["billed_tokens"] for r in won)  # none lost
    assert after["held_tokens"] <= limit
    for r in won:
        assert len(rows(db, r.key)) == r.document(r.key)["chunks"] > 0
    for r in lost:
        assert rows(db, r.key) == []


def test_create_batch_never_creates_a_second_batch_on_retry(
    stack: Any, ingested: list[Any], emulator: Any
) -> None:
    history = stack.history(ingested[0].execution_arn)
    entered = {
        e["stateEnteredEventDetails"]["name"]: json.loads(e["stateEnteredEventDetails"]["input"])
        for e in reversed(history)
        if "stateEnteredEventDetails" in e
    }
    job = entered["CreateBatch"]
    created = [b["batch_id"] for b in entered["WaitForBatches"]["batches"]]
    assert len(created) == 1
    before = emulator.stats()["batches_created"]

    def invoke() -> list[str]:
        resp = boto3.client("lambda").invoke(
            FunctionName=stack.refs["CreateBatchFunction"], Payload=json.dumps(job).encode()
        )
        assert "FunctionError" not in resp
        return [b["batch_id"] for b in json.loads(resp["Payload"].read())["batches"]]

    assert invoke() == created  # a plain retry: the recorded id is reused
    # A retry after a crash between the claim and recording the id: found by its metadata.
    table = boto3.resource("dynamodb").Table(os.environ["JOBS_TABLE"])
    file_id = job["batch_files"][0]["file_id"]
    table.update_item(
        Key={"job_id": job["job_id"]},
        UpdateExpression="SET #a = :c",
        ExpressionAttributeNames={"#a": f"batch#{file_id}"},
        ExpressionAttributeValues={":c": "creating"},
    )
    assert invoke() == created
    assert emulator.stats()["batches_created"] == before
