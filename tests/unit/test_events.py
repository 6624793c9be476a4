"""events/: every file is a valid input of its handler, names a function of template.yaml,
and what the pipe makes of an S3 event (pure: no stack; the replay is in
tests/integration/test_events_replay.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import TypeAdapter

from batch_embedder import failure_models, models, service_models
from batch_embedder_local.events import ALL_FILES, ENV_FILE, SCHEDULES
from tests.utils import (
    EVENTS,
    FUNCTIONS,
    TEMPLATE,
    WORKFLOW_INPUTS,
    handler_model,
    load,
    to_upload,
)


def test_events_folder_holds_exactly_the_captured_files() -> None:
    on_disk = {p.name for p in EVENTS.glob("*.json")} - {ENV_FILE}
    assert on_disk == set(ALL_FILES)
    assert set(ALL_FILES) == set(FUNCTIONS) | WORKFLOW_INPUTS


def test_events_name_only_functions_of_the_template() -> None:
    functions = {
        logical
        for logical, res in TEMPLATE["Resources"].items()
        if res["Type"] == "AWS::Serverless::Function"
    }
    assert set(FUNCTIONS.values()) <= functions
    readme = (EVENTS / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\b([A-Z]\w+Function)\b", readme))
    assert named <= functions, named - functions
    assert set(FUNCTIONS.values()) <= named  # every function's event is documented
    for name in ALL_FILES:
        assert f"`{name}`" in readme, name
    for name, rule in SCHEDULES.items():  # SAM names a Schedule's rule <Function><Event>
        logical = FUNCTIONS[name]
        events = TEMPLATE["Resources"][logical]["Properties"]["Events"]
        assert rule in {logical + e for e, v in events.items() if v["Type"] == "Schedule"}
        assert load(name)["resources"][0].endswith(f"-{rule}")


def resource_names(value: Any, key: str = "") -> set[str]:
    """Every bucket, table and queue name an event carries (fields, ARNs, URIs, URLs)."""
    if isinstance(value, dict):
        found: set[str] = set()
        for k, v in value.items():
            if k == "bucket" and isinstance(v, dict):  # EventBridge: detail.bucket.name
                found |= {str(v["name"])}
            else:
                found |= resource_names(v, k)
        return found
    if isinstance(value, list):
        return set().union(*(resource_names(v, key) for v in value)) if value else set()
    if not isinstance(value, str):
        return set()
    text = value
    if key.lower() in ("bucket", "table", "table_name", "queue", "queue_url"):
        return {text.rsplit("/", 1)[-1] if text.startswith("https://") else text}
    patterns = (
        r"arn:aws:s3:::([^/\s\"]+)",
        r"s3://([^/\s\"]+)",
        r"arn:aws:dynamodb:[^:]*:\d*:table/([^/\s\"]+)",
        r"https://sqs\.[^/]+/\d+/([^/\s\"]+)",
    )
    return {m for p in patterns for m in re.findall(p, text)}


def test_env_json_defines_every_name_the_events_use() -> None:
    """sam local invoke -e events/X.json --env-vars events/env.json is consistent."""
    env: dict[str, dict[str, str]] = load(ENV_FILE)
    functions = {
        logical
        for logical, res in TEMPLATE["Resources"].items()
        if res["Type"] == "AWS::Serverless::Function"
    }
    assert set(env) == functions  # every function, keyed by logical id
    shared = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    for logical, values in env.items():
        own = TEMPLATE["Resources"][logical]["Properties"].get("Environment", {})
        declared = {**shared, **own.get("Variables", {})}
        # exactly its own variables, and the bucket the events name
        assert set(values) - {"DOCUMENTS_BUCKET"} == set(declared), logical
        resources = [v for v in declared if v.endswith(("_BUCKET", "_TABLE", "_SECRET_ID"))]
        assert all(isinstance(v, str) for v in values.values()), logical
        missing = [v for v in resources if not values.get(v)]
        assert not missing, f"{logical}: no {missing} in env.json (make events)"
    defined = {v for values in env.values() for v in values.values()}
    used: dict[str, set[str]] = {name: resource_names(load(name)) for name in ALL_FILES}
    assert used["chunk_and_estimate.json"] and used["check_cache.json"]
    for name, names in used.items():
        assert names <= defined, f"{name} names {sorted(names - defined)}, not in env.json"


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_event_file_is_a_valid_handler_input(name: str) -> None:
    handler_model(FUNCTIONS[name]).model_validate(load(name))


def test_workflow_inputs_are_what_the_pipe_makes() -> None:
    group = load("group.json")
    request = models.GroupRequest.model_validate({"job_id": "example-job-0001", "uploads": group})
    assert load("chunk_and_estimate.json")["uploads"] == group
    created, deleted = load("object_created.json"), load("object_deleted.json")
    for event, kind_ in ((created, "Object Created"), (deleted, "Object Deleted")):
        assert event["source"] == "aws.s3" and event["detail-type"] == kind_
    assert to_upload(created) == group[0]
    upload = TypeAdapter(models.UploadEvent)
    assert upload.validate_python(to_upload(created)) == request.uploads[0]
    assert isinstance(request.uploads[0], models.ObjectCreated)
    gone = upload.validate_python(to_upload(deleted))
    assert isinstance(gone, models.ObjectDeleted) and gone.event == "Object Deleted"
    assert load("delete_documents.json")["deletes"] == [gone.key]
    urgent = [u for u in group if u["key"].startswith("urgent/")]
    empty = [u for u in group if u["size"] in ("0", 0)]
    assert len(group) == 3 and urgent and empty


def test_wait_event_carries_a_task_token_and_the_submitted_job() -> None:
    wait = service_models.WaitRequest.model_validate(load("wait_for_batches.json"))
    job = models.SubmittedJob.model_validate(wait.job)
    assert job.batches and job.create_status == "created"
    added = {"aws", "batches", "create_status", "wait_seconds"}  # what CreateBatch adds
    created = {k: v for k, v in load("create_batch.json").items() if k not in added}
    assert {k: v for k, v in wait.job.items() if k not in added} == created


def test_record_failure_event_is_an_invalid_document() -> None:
    failure = failure_models.FailureInput.model_validate(load("record_failure.json"))
    assert failure.error is not None and failure.error.error == "InvalidDocumentError"
    assert "docs/empty.txt" in failure.error.cause
    # ChunkAndEstimate's input had the uploads themselves: a list, tagged "list".
    assert isinstance(failure.uploads, failure_models.UploadList)
    assert (failure.uploads.count, failure.uploads.keys) == (1, ["docs/empty.txt"])


def test_failure_input_takes_the_uploads_or_their_count() -> None:
    # Every state after ChunkAndEstimate carries the count; the JSON stays what it was.
    job = load("record_cost.json")
    failure = failure_models.FailureInput.model_validate(job)
    assert isinstance(failure.uploads, failure_models.UploadCount)
    assert (failure.uploads.count, failure.uploads.keys) == (job["uploads"], [])
    assert failure.model_dump(mode="json")["uploads"] == job["uploads"]
    assert failure_models.FailureInput.model_validate({"job_id": "j"}).uploads.count == 0
    with pytest.raises(ValueError, match="uploads"):
        failure_models.FailureInput.model_validate({"job_id": "j", "uploads": -1})


def test_delete_only_group_is_a_valid_record_cost_input() -> None:
    # AnyChunks sends a group with nothing to embed straight from DeleteDocuments to RecordCost.
    handler_model("RecordCostFunction").model_validate(load("delete_documents.json"))
