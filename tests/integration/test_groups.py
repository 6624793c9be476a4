"""Uploads grouped into one execution and one shared batch (the pipe, on the local stack)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import psycopg
import pytest

from batch_embedder.aws import budget
from batch_embedder.openai.pricing import price_for
from tests.utils import SAMPLES, fresh, ledger

pytestmark = pytest.mark.integration

MODEL = "text-embedding-3-small"


def keys_with_rows(db: psycopg.Connection[tuple[Any, ...]], prefix: str) -> dict[str, int]:
    rows = db.execute(
        "SELECT source_key, count(*) FROM batch_embedder.chunks WHERE source_key LIKE %s "
        "GROUP BY source_key",
        (prefix + "%",),
    ).fetchall()
    return {str(k): int(n) for k, n in rows}


@pytest.fixture()
def window(stack: Any) -> Iterator[Any]:
    """Lets a test widen the pipe's window; puts it back after."""
    before = stack.pipe.window_seconds, stack.pipe.batch_size
    yield stack.pipe
    stack.pipe.window_seconds, stack.pipe.batch_size = before


def test_300_small_files_uploaded_one_by_one_share_one_execution_and_one_batch(
    stack: Any, window: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    # One group of exactly the 300 uploads, however slow the machine: the pipe sends it as
    # soon as it holds 300 (UploadBatchSize), the 120 s window is only a backstop.
    window.window_seconds = 120
    window.batch_size = 300
    salt = uuid.uuid4().hex[:8]
    prefix = f"small-{salt}/"
    files = [
        (f"{prefix}note-{i:03d}.txt",
         f"Note {i} ({salt}): the quarterly report for region {i % 7} lists {i * 13} orders, "
         f"{i % 5} returns and a customer satisfaction score of {50 + i % 50}.".encode())
        for i in range(300)
    ]  # fmt: skip
    sync_before = stack.emulator.stats()["sync_billed_tokens"]
    results = stack.ingest(files, timeout=300)
    assert len(results) == 1
    assert all(r.status == "SUCCEEDED" for r in results), [
        (r.failed_state, r.cause) for r in results
    ]
    assert sum(r.output["batches"] for r in results) == 1
    assert sum(r.output["documents"] for r in results) == 300
    stored = keys_with_rows(db, prefix)
    assert sorted(stored) == sorted(k for k, _ in files)
    # Every token at the batch price: none went through the synchronous API.
    assert stack.emulator.stats()["sync_billed_tokens"] == sync_before
    batch_price = price_for(MODEL).batch
    for r in results:
        out = r.output
        assert out["api"] == "batch"
        expected = float(
            (Decimal(out["billed_tokens"]) * batch_price / Decimal(1_000_000)).quantize(
                Decimal("0.000000001")
            )
        )
        assert out["cost_usd"] == pytest.approx(expected, abs=1e-9)
        assert out["total_cost_usd"] == pytest.approx(out["cost_usd"] + out["aws_cost_usd"])
        assert out["aws"]["sfn_transitions"] >= 10  # counted from the execution's history
        assert out["aws"]["lambda_requests"] >= 7


def test_a_bad_file_and_a_prefix_over_budget_are_reported_and_the_rest_is_embedded(
    stack: Any, window: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: Any
) -> None:
    window.window_seconds = 5
    salt = uuid.uuid4().hex[:8]
    capped = f"capped-{salt}/"
    monkeypatch.setenv("PREFIX_TOKEN_LIMITS", f'{{"{capped}": 10}}')  # read on every call
    good = [
        (f"mixed-{salt}/{name}", f"[{salt}] ".encode() + (SAMPLES / name).read_bytes())
        for name in ("appetite.rst.txt", "interpreter.rst.txt")
    ]
    files = [*good, (f"mixed-{salt}/empty.txt", b""), (f"{capped}big.rst.txt",
             f"[{salt}] ".encode() + (SAMPLES / "errors.rst.txt").read_bytes())]  # fmt: skip
    results = stack.ingest(files, timeout=300)
    assert len(results) == 1
    result = results[0]
    assert result.status == "SUCCEEDED", (result.failed_state, result.cause)
    by_key = {r["key"]: r for r in result.output["results"]}
    for key, _ in good:
        assert by_key[key]["status"] == "embedded"
        assert by_key[key]["chunks"] == keys_with_rows(db, key)[key] > 0
    empty = by_key[f"mixed-{salt}/empty.txt"]
    assert (empty["status"], empty["chunks"], empty["reason"]) == (
        "rejected", 0, "the file is empty (0 bytes)",
    )  # fmt: skip
    over = by_key[f"{capped}big.rst.txt"]
    assert over["status"] == "over_budget" and capped in over["reason"]
    assert keys_with_rows(db, capped) == {}
    # Named in the output a user reads, with the reason.
    assert any(r.startswith(f"mixed-{salt}/empty.txt: ") for r in result.output["rejected"])
    assert any(r.startswith(f"{capped}big.rst.txt: ") for r in result.output["rejected"])
    assert result.output["documents"] == 2
    # The ledger names the documents left out and points at every document's result and cost.
    record = ledger(result.output)
    assert int(record.rejected_count) == 2
    assert sorted(r.split(":")[0] for r in record.rejected) == sorted(
        [f"mixed-{salt}/empty.txt", f"{capped}big.rst.txt"]
    )
    bucket, _, key = str(record.results).removeprefix("s3://").partition("/")
    lines = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()
    per_document = [json.loads(line) for line in lines]
    assert {d["key"] for d in per_document} == {k for k, _ in files}
    out = result.output
    assert sum(d["cost_usd"] for d in per_document) == pytest.approx(out["cost_usd"], abs=1e-8)
    assert sum(d["aws_cost_usd"] for d in per_document) == pytest.approx(
        out["aws_cost_usd"], abs=1e-8
    )
    assert all(d["cost_usd"] == 0 for d in per_document if d["status"] != "embedded")


def test_a_group_of_only_bad_files_fails_naming_each_file(stack: Any) -> None:
    salt = uuid.uuid4().hex[:8]
    results = stack.ingest(
        [(f"bad-{salt}/empty.txt", b""), (f"bad-{salt}/binary.txt", b"\x00\x01\x02\xff" * 10)],
        timeout=120,
    )
    assert len(results) == 1 and results[0].status == "FAILED"
    assert results[0].failed_state == "InvalidDocument"
    cause = results[0].cause or ""
    assert f"bad-{salt}/empty.txt" in cause and f"bad-{salt}/binary.txt" in cause
    assert "empty" in cause


def test_a_failed_batch_after_urgent_documents_commits_what_the_sync_part_billed(
    stack: Any, emulator: Any, monkeypatch: Any
) -> None:
    """billed == committed == ledger: the synchronous part of a failed group is counted."""
    salt = uuid.uuid4().hex[:8]
    monkeypatch.setenv("SYNC_PREFIXES", f"urgent-{salt}/")
    monkeypatch.setenv("SYNC_FALLBACK", "false")
    emulator.update_config(batch_outcome="failed")
    day = budget.utc_day()
    before = (
        budget.budget_store(os.environ["JOBS_TABLE"], os.environ["USAGE_TABLE"])
        .counter(day, f"model:{MODEL}")
        .model_dump()
    )
    billed_before = emulator.stats()
    files = [
        (f"urgent-{salt}/now.rst.txt", fresh("whatnow.rst.txt", salt)),
        (f"later-{salt}/page.rst.txt", fresh("appetite.rst.txt", salt)),
    ]
    [result] = stack.ingest(files, timeout=300)
    assert result.status == "FAILED" and result.failed_state == "BatchFailed"
    assert "EmbedSync" in result.states  # the urgent part was bought before the batch failed
    billed = emulator.stats()
    sync_billed = billed["sync_billed_tokens"] - billed_before["sync_billed_tokens"]
    batch_billed = billed["batch_billed_tokens"] - billed_before["batch_billed_tokens"]
    assert sync_billed > 0
    after = (
        budget.budget_store(os.environ["JOBS_TABLE"], os.environ["USAGE_TABLE"])
        .counter(day, f"model:{MODEL}")
        .model_dump()
    )
    committed = after["committed_tokens"] - before["committed_tokens"]
    assert committed == sync_billed + batch_billed
    assert after["reserved_tokens"] == before["reserved_tokens"]  # nothing left reserved
    job_id = result.execution_arn.rsplit(":", 1)[-1]
    record = ledger({"day": day, "job_id": job_id})
    assert int(record.tokens) == committed
    assert record.status == "FAILED"
