"""Never pay twice: cache, incremental re-ingestion, deletes, and the synchronous path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pytest

from batch_embedder.chunking import chunk_text
from batch_embedder.documents import decode_document
from tests.conftest import SAMPLES, fresh

pytestmark = pytest.mark.integration
NAMES = sorted(p.name for p in SAMPLES.glob("*.rst.txt"))[:10]


@pytest.fixture()
def emulator(stack: Any) -> Iterator[Any]:
    before = stack.emulator.config.model_dump()
    yield stack.emulator
    stack.emulator.update_config(**before)


def stored(db: psycopg.Connection[tuple[Any, ...]], key: str, dims: int = 1536) -> list[Any]:
    return db.execute(
        "SELECT id, chunk_index, content_sha256, embedding::text FROM batch_embedder.chunks "
        "WHERE source_key = %s AND dimensions = %s ORDER BY chunk_index",
        (key, dims),
    ).fetchall()


def all_hashes(db: psycopg.Connection[tuple[Any, ...]]) -> set[str]:
    return {r[0] for r in db.execute("SELECT content_sha256 FROM batch_embedder.chunks")}


def edit(body: bytes) -> bytes:
    paragraphs = body.decode().split("\n\n")
    middle = len(paragraphs) // 2
    paragraphs[middle] = "This paragraph was rewritten for the second version of the page."
    return "\n\n".join(paragraphs).encode()


def test_reingest_after_editing_10_percent_bills_only_changed_chunks(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    bodies = {f"inc/{n}": fresh(n, "inc") for n in NAMES}
    first = stack.ingest(list(bodies.items()), timeout=600)
    assert all(r.status == "SUCCEEDED" for r in first), [r.cause for r in first]
    edited_key = f"inc/{NAMES[3]}"
    before = {k: stored(db, k) for k in bodies}
    known = all_hashes(db)

    bodies[edited_key] = edit(bodies[edited_key])
    new_chunks = chunk_text(decode_document(edited_key, bodies[edited_key]))
    new_hashes = {c.sha256: c.token_count for c in new_chunks if c.sha256 not in known}
    batches_before = emulator.stats()["batches_created"]
    second = {r.key: r for r in stack.ingest(list(bodies.items()), timeout=600)}

    # Only the changed chunks were billed, to the token.
    edited = second[edited_key]
    assert edited.status == "SUCCEEDED", edited.cause
    assert edited.output["billed_tokens"] == sum(new_hashes.values()) > 0
    assert edited.output["cache_hits"] == len(new_chunks) - len(new_hashes)
    assert emulator.stats()["batches_created"] - batches_before == 1
    # Identical re-uploads cost nothing and change nothing.
    for key, result in second.items():
        if key != edited_key:
            assert result.status == "SUCCEEDED"
            assert result.output["billed_tokens"] == 0 and result.output["api"] == "none"
            assert result.output["vectors_written"] == 0
            assert stored(db, key) == before[key]
    # Stale rows are gone; unchanged chunks kept their row ids and vectors.
    after = stored(db, edited_key)
    assert [r[2] for r in after] == [c.sha256 for c in new_chunks]
    old_by_sha = {r[2]: (r[0], r[3]) for r in before[edited_key]}
    kept = [r for r in after if r[2] in old_by_sha]
    assert kept and all((r[0], r[3]) == old_by_sha[r[2]] for r in kept)
    assert edited.output["vectors_written"] == len(new_hashes)


def test_delete_removes_the_documents_rows(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    key = "del/errors.rst.txt"
    [created] = stack.ingest([(key, fresh("errors.rst.txt", "del"))], timeout=300)
    assert created.status == "SUCCEEDED" and stored(db, key)
    arn = stack.start_execution(stack.delete(key))
    [deleted] = stack.wait({arn: key}, timeout=120)
    assert deleted.status == "SUCCEEDED", deleted.cause
    assert deleted.states == ["UploadOrDelete", "ReadDeleteEvent", "DeleteDocument", "Deleted"]
    assert deleted.output["rows_deleted"] == created.output["chunks"]
    assert stored(db, key) == []


def test_overlapping_uploads_at_once_pay_each_distinct_chunk_once(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    a = fresh("classes.rst.txt", "overlap")
    b = a + b"\n\nOne more closing paragraph that only the second copy has."
    chunks = [chunk_text(decode_document("x.txt", body)) for body in (a, b)]
    distinct = {c.sha256: c.token_count for cs in chunks for c in cs}
    billed_before = emulator.stats()["billed_tokens"]
    results = stack.ingest([("overlap/a.rst.txt", a), ("overlap/b.rst.txt", b)], timeout=600)
    assert [r.status for r in results] == ["SUCCEEDED", "SUCCEEDED"], [r.cause for r in results]
    billed = emulator.stats()["billed_tokens"] - billed_before
    assert billed == sum(distinct.values())
    assert sum(r.output["billed_tokens"] for r in results) == billed
    assert len(stored(db, "overlap/a.rst.txt")) == len(chunks[0])
    assert len(stored(db, "overlap/b.rst.txt")) == len(chunks[1])


def test_a_model_change_never_reuses_another_models_vectors(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    body = fresh("venv.rst.txt", "dims")
    [first] = stack.ingest([("dims/venv.rst.txt", body)], timeout=300)
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "256")
    [second] = stack.ingest([("dims/venv.rst.txt", body)], timeout=300)
    assert second.status == "SUCCEEDED"
    assert second.output["cache_hits"] == 0
    assert second.output["billed_tokens"] == first.output["billed_tokens"] > 0
    assert len(stored(db, "dims/venv.rst.txt", 256)) == len(stored(db, "dims/venv.rst.txt"))


def test_small_and_urgent_jobs_take_the_synchronous_path(
    stack: Any, emulator: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("SYNC_MAX_TOKENS", "100000")
    batches = emulator.stats()["batches_created"]
    [small] = stack.ingest([("sync/whatnow.rst.txt", fresh("whatnow.rst.txt", "sync"))])
    assert small.status == "SUCCEEDED", small.cause
    assert "EmbedSync" in small.states and "BuildAndUploadJsonl" not in small.states
    assert small.output["api"] == "sync"
    assert small.output["cost_usd"] == pytest.approx(small.output["standard_cost_usd"])
    # Urgent by tag, whatever its size.
    monkeypatch.setenv("SYNC_MAX_TOKENS", "0")
    key = "sync/urgent.rst.txt"
    boto3.client("s3").put_object(
        Bucket=stack.documents_bucket, Key=key, Body=fresh("interpreter.rst.txt", "urgent"),
        Tagging="priority=urgent",
    )  # fmt: skip
    arn = stack.start_execution(stack.object_created_event(key))
    [urgent] = stack.wait({arn: key}, timeout=300)
    assert urgent.status == "SUCCEEDED" and urgent.output["api"] == "sync"
    assert emulator.stats()["batches_created"] == batches
    record = (
        boto3.resource("dynamodb")
        .Table(os.environ["USAGE_TABLE"])
        .get_item(Key={"pk": f"ledger#{urgent.output['day']}", "sk": urgent.output["job_id"]})[
            "Item"
        ]
    )
    assert record["api"] == "sync" and float(record["price_per_million_usd"]) == 0.02


def test_an_expired_batch_is_finished_through_the_synchronous_api(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    emulator.update_config(batch_outcome="expired")
    monkeypatch.setenv("BATCH_INPUTS_PER_REQUEST", "2")
    key = "fallback/errors.rst.txt"
    [result] = stack.ingest([(key, fresh("errors.rst.txt", "fallback"))], timeout=300)
    assert result.status == "SUCCEEDED", result.cause
    assert "BatchStatus" in result.states and "EmbedSync" in result.states
    out = result.output
    assert out["api"] == "batch+sync"
    # Every distinct chunk paid once, no more (repeated text inside the file is free).
    assert out["billed_tokens"] + out["tokens_saved"] == out["tokens"]
    assert len(stored(db, key)) == out["chunks"] == out["vectors_written"]
    # The batch part at the batch price, the rest at the standard price.
    assert out["standard_cost_usd"] > out["cost_usd"] > out["standard_cost_usd"] / 2
