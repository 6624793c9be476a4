"""Unchanged files cost nothing: an upload already embedded under the same settings ends
before chunking (``steps/unchanged.py``, ``db/fingerprints.py``)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from batch_embedder.chunking import chunk_text
from batch_embedder.documents import decode_document
from tests.utils import SAMPLES, fresh

pytestmark = pytest.mark.integration
NAMES = sorted(p.name for p in SAMPLES.glob("*.rst.txt"))[:4]
#: A group with nothing to chunk, embed or delete: straight to RecordCost.
NOTHING_TO_DO = ["ReadGroup", "ChunkAndEstimate", "AnyDeletes", "AnyChunks", "RecordCost",
                 "Embedded"]  # fmt: skip


def rows(db: psycopg.Connection[tuple[Any, ...]], prefix: str) -> list[Any]:
    """Every stored chunk under ``prefix``, with what a write would change."""
    return db.execute(
        "SELECT source_key, id, chunk_index, content_sha256, source_version, job_id, updated_at "
        "FROM batch_embedder.chunks WHERE source_key LIKE %s ORDER BY source_key, chunk_index",
        (prefix + "%",),
    ).fetchall()


def chunked(stack: Any, execution_arn: str) -> dict[str, Any]:
    """ChunkAndEstimate's output, as the execution's history shows it."""
    events = stack.history(execution_arn)
    for event in events:
        details = event.get("stateExitedEventDetails")
        if details and details["name"] == "ChunkAndEstimate":
            return dict(json.loads(details["output"]))
    raise AssertionError("ChunkAndEstimate did not run")


def edit(body: bytes) -> bytes:
    paragraphs = body.decode().split("\n\n")
    paragraphs[len(paragraphs) // 2] = "This paragraph was rewritten for the second version."
    return "\n\n".join(paragraphs).encode()


def test_an_identical_reupload_does_no_work_and_an_edit_rechunks_only_that_file(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    bodies = {f"same/{n}": fresh(n, "same") for n in NAMES}
    first = stack.ingest(list(bodies.items()), timeout=600)
    assert all(r.status == "SUCCEEDED" for r in first), [r.cause for r in first]
    assert sum(r.output["billed_tokens"] for r in first) > 0
    before = rows(db, "same/")
    assert {r[0] for r in before} == set(bodies)
    batches = emulator.stats()["batches_created"]

    # The same bytes under the same keys (new S3 versions, same ETags): nothing to do.
    second = stack.ingest(list(bodies.items()), timeout=300)
    assert all(r.status == "SUCCEEDED" for r in second), [r.cause for r in second]
    assert sorted(k for r in second for k in r.keys) == sorted(bodies)
    for result in second:
        assert result.states == NOTHING_TO_DO
        out = result.output
        assert (out["billed_tokens"], out["chunks"], out["vectors_written"]) == (0, 0, 0)
        assert (out["documents"], out["batches"], out["cost_usd"]) == (0, 0, 0)
        step = chunked(stack, result.execution_arn)
        assert (step["chunks"], step["tokens"], step["documents"]) == (0, 0, 0)
        assert sorted(step["unchanged"]) == sorted(result.keys)
        assert step["unchanged_count"] == len(result.keys)
    assert rows(db, "same/") == before, "no row written, moved or touched"
    assert emulator.stats()["batches_created"] == batches

    # One file edited: only it is read, chunked and billed.
    edited = f"same/{NAMES[1]}"
    bodies[edited] = edit(bodies[edited])
    third = stack.ingest(list(bodies.items()), timeout=600)
    assert all(r.status == "SUCCEEDED" for r in third), [r.cause for r in third]
    steps = [chunked(stack, r.execution_arn) for r in third]
    assert sorted(k for s in steps for k in s["unchanged"]) == sorted(set(bodies) - {edited})
    expected = chunk_text(decode_document(edited, bodies[edited]))
    assert sum(s["documents"] for s in steps) == 1
    assert sum(s["chunks"] for s in steps) == len(expected)
    assert sum(s["tokens"] for s in steps) == sum(c.token_count for c in expected)
    [result] = [r for r in third if edited in r.keys]
    assert result.document(edited)["status"] == "embedded"
    after = rows(db, "same/")
    assert [r for r in after if r[0] != edited] == [r for r in before if r[0] != edited]
    assert [r[3] for r in after if r[0] == edited] == [c.sha256 for c in expected]


def test_same_bytes_with_another_etag_are_compared_by_content(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    key = f"etag/{NAMES[0]}"
    body = fresh(NAMES[0], "etag")
    [first] = stack.ingest([(key, body)], timeout=300)
    assert first.status == "SUCCEEDED", first.cause
    before = rows(db, "etag/")
    # A multipart upload of the same bytes has another ETag: the object is read, its
    # SHA-256 matches, and it is neither decoded nor chunked.
    stack.upload(key, body, deliver=False)
    event = stack.object_created_event(key)
    event["detail"]["object"]["etag"] = "0123456789abcdef0123456789abcdef-2"
    arn = stack.start_execution([event])
    [again] = stack.wait({arn: key}, timeout=120)
    assert again.status == "SUCCEEDED", again.cause
    assert again.states == NOTHING_TO_DO
    assert chunked(stack, arn)["unchanged"] == [key]
    assert rows(db, "etag/") == before


def test_after_a_delete_the_same_bytes_are_embedded_again(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    key = f"gone/{NAMES[2]}"
    body = fresh(NAMES[2], "gone")
    [first] = stack.ingest([(key, body)], timeout=300)
    assert first.status == "SUCCEEDED", first.cause
    chunks = len(rows(db, "gone/"))
    [deleted] = stack.wait_for_groups([stack.delete(key)], timeout=120)
    assert deleted.status == "SUCCEEDED" and rows(db, "gone/") == []
    [back] = stack.ingest([(key, body)], timeout=300)
    assert back.status == "SUCCEEDED", back.cause
    assert chunked(stack, back.execution_arn)["unchanged"] == []
    assert back.document(key)["status"] == "embedded"
    assert len(rows(db, "gone/")) == chunks
