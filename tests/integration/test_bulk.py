"""Bulk loads: thousands of small documents become one group (one execution) and one batch."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from tests.utils import brief

pytestmark = pytest.mark.integration

WORDS = [
    "token",
    "batch",
    "vector",
    "chunk",
    "budget",
    "embedding",
    "index",
    "bucket",
    "execution",
    "state",
]


def doc_text(i: int, kind: str = "Document") -> str:
    picked = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12))
    return f"{kind} {i} is about {picked}. It has one short paragraph number {i}."


def keys_like(db: psycopg.Connection[tuple[Any, ...]], pattern: str) -> dict[str, int]:
    rows = db.execute(
        "SELECT source_key, count(*) FROM batch_embedder.chunks WHERE source_key LIKE %s "
        "GROUP BY source_key",
        (pattern,),
    ).fetchall()
    return {k: n for k, n in rows}


def test_bundle_of_3000_documents_is_one_group_and_one_batch(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    lines = [json.dumps({"id": f"d{i}", "text": doc_text(i)}) for i in range(3000)]
    lines.insert(10, "{not json")
    lines.insert(20, json.dumps({"text": "no id here"}))
    body = ("\n".join(lines) + "\n").encode()
    before = stack.emulator.stats()["batches_created"]
    [result] = stack.ingest([("loads/docs.bundle.jsonl", body)], timeout=600)
    assert result.status == "SUCCEEDED", result.cause
    out = result.output
    assert out["api"] == "batch" and out["cache_hits"] == 0 and out["batches"] == 1
    assert out["uploads"] == 1 and out["documents"] == 3000 and out["rejected_count"] == 2
    assert any("line 11" in r and "invalid JSON" in r for r in out["rejected"])
    assert any("no 'id' field" in r for r in out["rejected"])
    assert stack.emulator.stats()["batches_created"] - before == 1
    stored = keys_like(db, "loads/docs.bundle.jsonl#%")
    assert len(stored) == 3000 and sum(stored.values()) == out["chunks"] == out["vectors_written"]
    # Each line is a document of its own in the group's results (the first 1,000 listed).
    assert brief(result.document("loads/docs.bundle.jsonl#d0")) == {
        "key": "loads/docs.bundle.jsonl#d0", "status": "embedded",
        "chunks": stored["loads/docs.bundle.jsonl#d0"],
    }  # fmt: skip
    assert result.document("loads/docs.bundle.jsonl line 11")["status"] == "rejected"

    # The same bundle again: the same rows, none rewritten, nothing billed.
    [again] = stack.ingest([("loads/docs.bundle.jsonl", body)], timeout=600)
    assert again.status == "SUCCEEDED" and again.output["vectors_written"] == 0
    assert again.output["billed_tokens"] == 0 and again.output["batches"] == 0
    assert keys_like(db, "loads/docs.bundle.jsonl#%") == stored


def test_prefix_manifest_embeds_every_object_under_the_prefix_as_one_job(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    files = [(f"bulk/set-a/{i:04d}.txt", doc_text(i, "Object").encode()) for i in range(400)]
    files.append(("bulk/set-a/empty.txt", b""))
    before = stack.emulator.stats()["batches_created"]
    assert stack.ingest(files) == []  # under BulkPrefix: no execution per file
    manifest = json.dumps({"prefix": "bulk/set-a/"}).encode()
    [result] = stack.ingest([("manifests/set-a.manifest.json", manifest)], timeout=600)
    assert result.status == "SUCCEEDED", result.cause
    assert result.keys == ["manifests/set-a.manifest.json"]
    assert result.output["documents"] == 400 and result.output["rejected_count"] == 1
    assert result.output["rejected"] == ["bulk/set-a/empty.txt: the file is empty (0 bytes)"]
    assert result.output["batches"] == 1
    assert stack.emulator.stats()["batches_created"] - before == 1
    stored = keys_like(db, "bulk/set-a/%")
    assert len(stored) == 400 and sum(stored.values()) == result.output["chunks"]
    assert brief(result.document("bulk/set-a/0007.txt")) == {
        "key": "bulk/set-a/0007.txt", "status": "embedded", "chunks": stored["bulk/set-a/0007.txt"],
    }  # fmt: skip


def test_a_bundle_and_plain_documents_uploaded_together_share_one_batch(
    stack: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    bundle = "\n".join(
        json.dumps({"id": f"m{i}", "text": doc_text(i, "Mixed")}) for i in range(50)
    ).encode()
    files = [("mixed/m.bundle.jsonl", bundle)] + [
        (f"mixed/plain-{i}.txt", doc_text(i, "Plain").encode()) for i in range(5)
    ]
    before = stack.emulator.stats()["batches_created"]
    # Started as one group, whatever the pipe's window.
    arn = stack.start_execution([stack.upload(k, b, deliver=False) for k, b in files])
    [result] = stack.wait({arn: "mixed"}, timeout=300)
    assert result.status == "SUCCEEDED", result.cause
    assert result.output["uploads"] == 6 and result.output["documents"] == 55
    assert result.output["batches"] == 1
    assert stack.emulator.stats()["batches_created"] - before == 1
    assert len(keys_like(db, "mixed/m.bundle.jsonl#%")) == 50
    assert len(keys_like(db, "mixed/plain-%")) == 5


def test_manifest_without_a_prefix_is_an_invalid_document(stack: Any) -> None:
    [result] = stack.ingest([("manifests/bad.manifest.json", b'{"prefixes": []}')])
    assert result.status == "FAILED" and result.failed_state == "InvalidDocument"
    assert "manifests/bad.manifest.json" in result.cause and "prefix" in result.cause
