"""Every events/ file is a valid input of its handler, and they replay in order."""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
import pytest
from pydantic import BaseModel

from batch_embedder import models
from tests.conftest import ROOT, SAMPLES

EVENTS = ROOT / "events"
#: events file -> (function logical id, input model)
HANDLERS: dict[str, tuple[str, type[BaseModel]]] = {
    "chunk_and_estimate.json": ("ChunkAndEstimateFunction", models.ChunkRequest),
    "check_cache.json": ("CheckCacheFunction", models.ChunkedJob),
    "embed_sync.json": ("EmbedSyncFunction", models.WriteInput),
    "delete_document.json": ("DeleteDocumentFunction", models.DeleteRequest),
    "budget_check.json": ("BudgetCheckFunction", models.ChunkedJob),
    "build_and_upload_jsonl.json": ("BuildAndUploadJsonlFunction", models.ReservedJob),
    "create_batch.json": ("CreateBatchFunction", models.UploadedJob),
    "poll_batch.json": ("PollBatchFunction", models.SubmittedJob),
    "fetch_and_write.json": ("FetchAndWriteFunction", models.WriteInput),
    "record_cost.json": ("RecordCostFunction", models.WrittenJob),
    "record_failure.json": ("RecordFailureFunction", models.FailureInput),
}
#: Values that differ between runs (ids minted by S3/OpenAI, the UTC day, poll timing).
VOLATILE = {
    "etag", "size",
    "version_id", "file_id", "batch_id", "input_file_id", "output_file_id", "error_file_id",
    "day", "poll", "status", "completed_requests", "total_requests",
}  # fmt: skip


def load(name: str) -> Any:
    return json.loads((EVENTS / name).read_text())


def mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "*" if k in VOLATILE else mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


def ids(recorded: Any, live: Any, found: dict[str, str]) -> dict[str, str]:
    """Map each id in the recorded event to the one minted in this run."""
    if isinstance(recorded, dict) and isinstance(live, dict):
        for k, v in recorded.items():
            if k in VOLATILE and isinstance(v, str) and isinstance(live.get(k), str):
                found[v] = live[k]
            elif k in live:
                ids(v, live[k], found)
    elif isinstance(recorded, list) and isinstance(live, list):
        for a, b in zip(recorded, live, strict=False):
            ids(a, b, found)
    return found


def invoke(stack: Any, logical: str, event: Any) -> Any:
    resp = boto3.client("lambda").invoke(
        FunctionName=stack.refs[logical], Payload=json.dumps(event).encode()
    )
    payload = json.loads(resp["Payload"].read())
    assert "FunctionError" not in resp, payload
    return payload


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_event_file_is_a_valid_handler_input(name: str) -> None:
    HANDLERS[name][1].model_validate(load(name))


def test_object_created_event_is_what_eventbridge_sends() -> None:
    event = load("object_created.json")
    assert event["source"] == "aws.s3" and event["detail-type"] == "Object Created"
    assert event == load("chunk_and_estimate.json")["event"]


def test_events_replay_through_their_handlers_in_order(stack: Any) -> None:
    event = load("object_created.json")
    key = event["detail"]["object"]["key"]
    s3 = boto3.client("s3")
    put = s3.put_object(
        Bucket=stack.documents_bucket, Key=key, Body=(SAMPLES / key.split("/")[-1]).read_bytes()
    )
    first = load("chunk_and_estimate.json")
    first["event"]["detail"]["bucket"]["name"] = stack.documents_bucket
    first["event"]["detail"]["object"]["version-id"] = put["VersionId"]
    live = invoke(stack, "ChunkAndEstimateFunction", first)
    order = [
        "check_cache.json", "budget_check.json", "build_and_upload_jsonl.json",
        "create_batch.json", "poll_batch.json", "fetch_and_write.json", "record_cost.json",
    ]  # fmt: skip
    for name in order:
        recorded = load(name)
        assert mask(live) == mask(recorded), name
        text = json.dumps(recorded)
        for old, new in ids(recorded, live, {}).items():
            text = text.replace(old, new)
        logical = HANDLERS[name][0]
        if name == "fetch_and_write.json":
            # Poll until the batch is done, as the Wait/PollBatch loop does.
            polled = json.loads(text)
            while polled["poll"]["status"] != "completed":
                time.sleep(0.3)
                polled = invoke(stack, "PollBatchFunction", polled)
            text = json.dumps(polled)
        live = invoke(stack, logical, json.loads(text))
    assert live["vectors_written"] == live["chunks"] > 0
    assert live["billed_tokens"] == live["tokens"]
    failure = invoke(stack, "RecordFailureFunction", load("record_failure.json"))
    assert failure["failed_state"] == "InvalidDocument"
    assert "docs/empty.txt" in failure["cause"]
    delete = load("delete_document.json")
    delete["event"]["detail"]["bucket"]["name"] = stack.documents_bucket
    deleted = invoke(stack, "DeleteDocumentFunction", delete)
    assert deleted == {"bucket": stack.documents_bucket, "key": key, "rows_deleted": live["chunks"]}


def test_embed_sync_event_replays_after_its_chain(stack: Any, monkeypatch: Any) -> None:
    recorded = load("embed_sync.json")
    key = recorded["document"]["key"]
    monkeypatch.setenv("SYNC_PREFIXES", '["urgent/"]')
    put = boto3.client("s3").put_object(
        Bucket=stack.documents_bucket, Key=key, Body=(SAMPLES / key.split("/")[-1]).read_bytes()
    )
    first = load("chunk_and_estimate.json")
    first["job_id"] = recorded["job_id"]
    detail = first["event"]["detail"]
    detail["bucket"]["name"] = stack.documents_bucket
    detail["object"].update({"key": key, "version-id": put["VersionId"]})
    live = invoke(stack, "ChunkAndEstimateFunction", first)
    for logical in ("CheckCacheFunction", "BudgetCheckFunction"):
        live = invoke(stack, logical, live)
    assert live["urgent"] and live["embed"]["api"] == "sync"
    assert mask(live) == mask({k: v for k, v in recorded.items() if k in live})
    text = json.dumps(recorded)
    for old, new in ids(recorded, live, {}).items():
        text = text.replace(old, new)
    synced = invoke(stack, "EmbedSyncFunction", json.loads(text))
    assert synced["sync"]["billed_tokens"] == live["embed"]["tokens"] > 0
