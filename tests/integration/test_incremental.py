"""Never pay twice: cache, incremental re-ingestion, deletes, and the synchronous path."""

from __future__ import annotations

from typing import Any

import boto3
import psycopg
import pytest

from batch_embedder.chunking import chunk_text
from batch_embedder.documents import decode_document
from batch_embedder.openai.pricing import cost_usd, price_for
from tests.utils import SAMPLES, fresh, ledger, usd

pytestmark = pytest.mark.integration
NAMES = sorted(p.name for p in SAMPLES.glob("*.rst.txt"))[:10]
MODEL = "text-embedding-3-small"
PRICE = price_for(MODEL)
START = ["ReadGroup", "ChunkAndEstimate", "AnyDeletes", "AnyChunks", "CheckCache",
         "BudgetCheck", "BudgetReserved", "HowToEmbed"]  # fmt: skip
BATCH = ["BuildAndUploadJsonl", "CreateBatch", "BatchQueued", "WaitForBatches"]
END = ["FetchAndWrite", "AnyPending", "RecordCost", "Embedded"]


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


def distinct_tokens(key: str, body: bytes) -> dict[str, int]:
    """Tokens of each distinct chunk of a document (what embedding it once costs)."""
    return {c.sha256: c.token_count for c in chunk_text(decode_document(key, body))}


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
    second = stack.ingest(list(bodies.items()), timeout=600)
    assert all(r.status == "SUCCEEDED" for r in second), [r.cause for r in second]
    assert sorted(k for r in second for k in r.keys) == sorted(bodies)

    # Only the changed chunks were billed, to the token, through one batch.
    assert sum(r.output["billed_tokens"] for r in second) == sum(new_hashes.values()) > 0
    # The unchanged files are not even chunked; the edited one reuses its kept chunks.
    assert sum(r.output["cache_hits"] for r in second) == len(new_chunks) - len(new_hashes)
    assert sum(r.output["vectors_written"] for r in second) == len(new_hashes)
    assert emulator.stats()["batches_created"] - batches_before == 1
    assert sum(r.output["batches"] for r in second) == 1
    [edited] = [r for r in second if edited_key in r.keys]
    assert edited.output["api"] == "batch"
    assert edited.document(edited_key)["chunks"] == len(new_chunks)
    # Identical re-uploads cost nothing and change nothing: they end before chunking.
    for result in second:
        for key in result.keys:
            status = result.document(key)["status"]
            assert status == ("embedded" if key == edited_key else "unchanged"), key
            if key != edited_key:
                assert stored(db, key) == before[key]
    # Stale rows are gone; unchanged chunks kept their row ids and vectors.
    after = stored(db, edited_key)
    assert [r[2] for r in after] == [c.sha256 for c in new_chunks]
    old_by_sha = {r[2]: (r[0], r[3]) for r in before[edited_key]}
    kept = [r for r in after if r[2] in old_by_sha]
    assert kept and all((r[0], r[3]) == old_by_sha[r[2]] for r in kept)


def test_delete_removes_the_documents_rows(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    key = "del/errors.rst.txt"
    [created] = stack.ingest([(key, fresh("errors.rst.txt", "del"))], timeout=300)
    assert created.status == "SUCCEEDED" and len(stored(db, key)) == created.output["chunks"] > 0
    [deleted] = stack.wait_for_groups([stack.delete(key)], timeout=120)
    assert deleted.status == "SUCCEEDED", deleted.cause
    # A group of deletes only: no chunk to embed, straight to RecordCost.
    assert deleted.states == [
        "ReadGroup", "ChunkAndEstimate", "AnyDeletes", "DeleteDocuments", "AnyChunks",
        "RecordCost", "Embedded",
    ]  # fmt: skip
    assert deleted.document(key)["status"] == "deleted"
    out = deleted.output
    assert (out["documents"], out["billed_tokens"], out["batches"], out["api"]) == (0, 0, 0, "none")
    assert out["cost_usd"] == 0 and out["vectors_written"] == 0
    assert stored(db, key) == []
    # Deleting again (another delete marker) removes nothing more and still succeeds.
    arn = stack.start_execution([stack.delete(key, deliver=False)])
    [again] = stack.wait({arn: key}, timeout=120)
    assert again.status == "SUCCEEDED" and again.document(key)["status"] == "deleted"


def test_a_group_of_uploads_and_deletes_applies_the_newest_event_of_each_key(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    gone, new, short_lived = "mix/gone.rst.txt", "mix/new.rst.txt", "mix/short.rst.txt"
    [created] = stack.ingest([(gone, fresh("appetite.rst.txt", "mix-gone"))], timeout=300)
    assert created.status == "SUCCEEDED" and stored(db, gone)
    events = [
        stack.delete(gone, deliver=False),
        stack.upload(new, fresh("whatnow.rst.txt", "mix-new"), deliver=False),
        stack.upload(short_lived, fresh("interpreter.rst.txt", "mix-short"), deliver=False),
        stack.delete(short_lived, deliver=False),  # uploaded then deleted: never embedded
    ]
    arn = stack.start_execution(events)
    [result] = stack.wait({arn: "mix"}, timeout=300)
    assert result.status == "SUCCEEDED", result.cause
    assert result.states == [
        "ReadGroup", "ChunkAndEstimate", "AnyDeletes", "DeleteDocuments", *START[3:], *BATCH,
        *END,
    ]  # fmt: skip
    assert {d["key"]: d["status"] for d in result.output["results"]} == {
        gone: "deleted", new: "embedded", short_lived: "deleted",
    }  # fmt: skip
    assert stored(db, gone) == [] and stored(db, short_lived) == []
    assert len(stored(db, new)) == result.document(new)["chunks"] == result.output["chunks"] > 0
    assert result.output["documents"] == 1


def test_overlapping_uploads_at_once_pay_each_distinct_chunk_once(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    a = fresh("classes.rst.txt", "overlap")
    b = a + b"\n\nOne more closing paragraph that only the second copy has."
    chunks = [chunk_text(decode_document("x.txt", body)) for body in (a, b)]
    distinct = {c.sha256: c.token_count for cs in chunks for c in cs}
    billed_before = emulator.stats()["billed_tokens"]
    # Two executions at the same time (two groups): claims keep them from paying twice.
    events = [
        stack.upload("overlap/a.rst.txt", a, deliver=False),
        stack.upload("overlap/b.rst.txt", b, deliver=False),
    ]
    arns = {stack.start_execution([e]): e["detail"]["object"]["key"] for e in events}
    results = stack.wait(arns, timeout=600)
    assert [r.status for r in results] == ["SUCCEEDED", "SUCCEEDED"], [r.cause for r in results]
    billed = emulator.stats()["billed_tokens"] - billed_before
    assert billed == sum(distinct.values())
    assert sum(r.output["billed_tokens"] for r in results) == billed
    assert len(stored(db, "overlap/a.rst.txt")) == len(chunks[0])
    assert len(stored(db, "overlap/b.rst.txt")) == len(chunks[1])


def test_overlapping_documents_of_one_group_share_one_batch_and_pay_once(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    c = fresh("modules.rst.txt", "overlap-group")
    d = c + b"\n\nA closing paragraph only the second copy of the page has."
    distinct = {**distinct_tokens("c.txt", c), **distinct_tokens("d.txt", d)}
    before = emulator.stats()
    results = stack.ingest([("group/c.rst.txt", c), ("group/d.rst.txt", d)], timeout=600)
    assert all(r.status == "SUCCEEDED" for r in results), [r.cause for r in results]
    after = emulator.stats()
    assert after["billed_tokens"] - before["billed_tokens"] == sum(distinct.values())
    assert sum(r.output["billed_tokens"] for r in results) == sum(distinct.values())
    assert after["batches_created"] - before["batches_created"] == len(results)
    for r in results:
        for key in r.keys:
            assert len(stored(db, key)) == r.document(key)["chunks"] > 0


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


def test_urgent_documents_go_synchronous_and_everything_else_through_a_batch(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    monkeypatch.setenv("SYNC_PREFIXES", "urgent/,alerts/")
    batches = emulator.stats()["batches_created"]

    # Urgent by prefix (any of the comma list): the synchronous API, at the standard price.
    [alert] = stack.ingest([("alerts/whatnow.rst.txt", fresh("whatnow.rst.txt", "alert"))])
    assert alert.status == "SUCCEEDED", alert.cause
    assert alert.states == [*START, "EmbedSync", "AfterSync", *END]
    out = alert.output
    assert out["api"] == "sync" and out["batches"] == 0 and out["billed_tokens"] > 0
    assert out["cost_usd"] == out["standard_cost_usd"] == usd(out["billed_tokens"], PRICE.standard)
    record = ledger(out)
    assert record.api == "sync" and float(record.price_per_million_usd) == 0.02
    assert float(record.cost_usd) == out["cost_usd"]
    assert emulator.stats()["batches_created"] == batches

    # A small document that is not urgent goes through the Batch API (half price) anyway.
    [small] = stack.ingest([("notes/whatnow.rst.txt", fresh("whatnow.rst.txt", "small"))])
    assert small.status == "SUCCEEDED", small.cause
    assert small.states == [*START, *BATCH, *END]
    assert small.output["api"] == "batch"
    assert small.output["cost_usd"] == usd(small.output["billed_tokens"], PRICE.batch)
    assert emulator.stats()["batches_created"] == batches + 1

    # Urgent by tag, whatever its key.
    key = "notes/tagged.rst.txt"
    boto3.client("s3").put_object(
        Bucket=stack.documents_bucket, Key=key, Body=fresh("interpreter.rst.txt", "urgent"),
        Tagging="priority=urgent",
    )  # fmt: skip
    arn = stack.start_execution([stack.object_created_event(key)])
    [tagged] = stack.wait({arn: key}, timeout=300)
    assert tagged.status == "SUCCEEDED" and tagged.output["api"] == "sync"
    assert "BuildAndUploadJsonl" not in tagged.states
    assert len(stored(db, key)) == tagged.document(key)["chunks"] > 0
    assert emulator.stats()["batches_created"] == batches + 1


def test_a_group_mixing_urgent_and_normal_documents_pays_standard_only_for_the_urgent(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    monkeypatch.setenv("SYNC_PREFIXES", "urgent/")
    urgent_key, normal_key = "urgent/appetite.rst.txt", "normal/controlflow.rst.txt"
    urgent_body = fresh("appetite.rst.txt", "mixed-urgent")
    normal_body = fresh("controlflow.rst.txt", "mixed-normal")
    urgent_tokens = distinct_tokens(urgent_key, urgent_body)
    normal_tokens = {
        sha: t
        for sha, t in distinct_tokens(normal_key, normal_body).items()
        if sha not in urgent_tokens
    }
    sync_tokens, batch_tokens = sum(urgent_tokens.values()), sum(normal_tokens.values())
    before = emulator.stats()
    events = [
        stack.upload(urgent_key, urgent_body, deliver=False),
        stack.upload(normal_key, normal_body, deliver=False),
    ]
    arn = stack.start_execution(events)  # one group
    [result] = stack.wait({arn: "mixed"}, timeout=300)
    assert result.status == "SUCCEEDED", result.cause
    # The urgent part first, then one batch for the rest.
    assert result.states == [*START, "EmbedSync", "AfterSync", *BATCH, *END]
    after = emulator.stats()
    assert after["sync_billed_tokens"] - before["sync_billed_tokens"] == sync_tokens
    assert after["batch_billed_tokens"] - before["batch_billed_tokens"] == batch_tokens
    assert after["batches_created"] - before["batches_created"] == 1
    out = result.output
    assert out["api"] == "sync+batch" and out["batches"] == 1
    assert out["billed_tokens"] == sync_tokens + batch_tokens
    # Only the urgent tokens at the standard price; the rest at the batch price.
    expected = cost_usd(sync_tokens, PRICE.standard) + cost_usd(batch_tokens, PRICE.batch)
    assert out["cost_usd"] == float(expected)
    assert out["standard_cost_usd"] == usd(sync_tokens + batch_tokens, PRICE.standard)
    assert out["total_cost_usd"] == pytest.approx(out["cost_usd"] + out["aws_cost_usd"])
    record = ledger(out)
    assert record.api == "sync+batch" and int(record.tokens) == out["billed_tokens"]
    assert float(record.cost_usd) == float(expected)
    for key in (urgent_key, normal_key):
        assert len(stored(db, key)) == result.document(key)["chunks"] > 0


def test_an_expired_batch_is_finished_through_the_synchronous_api(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    emulator.update_config(batch_outcome="expired")
    monkeypatch.setenv("BATCH_INPUTS_PER_REQUEST", "2")
    key = "fallback/errors.rst.txt"
    before = emulator.stats()
    [result] = stack.ingest([(key, fresh("errors.rst.txt", "fallback"))], timeout=300)
    assert result.status == "SUCCEEDED", result.cause
    # The wait ends "expired": what came back is stored and written, the rest is pending
    # and, with the fallback, EmbedSync buys it; the second pass writes the document.
    assert result.states == [
        *START, *BATCH, "FetchAndWrite", "AnyPending", "EmbedSync", "AfterSync", *END
    ]  # fmt: skip
    out = result.output
    assert out["api"] == "sync+batch"
    # Every distinct chunk paid once, no more (repeated text inside the file is free).
    assert out["billed_tokens"] + out["tokens_saved"] == out["tokens"]
    assert len(stored(db, key)) == out["chunks"] == out["vectors_written"]
    # The batch part at the batch price, the rest at the standard price, exactly.
    after = emulator.stats()
    batch_part = after["batch_billed_tokens"] - before["batch_billed_tokens"]
    sync_part = after["sync_billed_tokens"] - before["sync_billed_tokens"]
    assert batch_part > 0 and sync_part > 0
    assert out["billed_tokens"] == batch_part + sync_part
    assert out["cost_usd"] == float(
        cost_usd(batch_part, PRICE.batch) + cost_usd(sync_part, PRICE.standard)
    )
    assert out["standard_cost_usd"] > out["cost_usd"] > out["standard_cost_usd"] / 2
