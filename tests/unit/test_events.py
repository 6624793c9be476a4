"""events/: every file is a valid input of its handler, names a function of template.yaml,
and the captured chain replays through the real handlers on the local stack."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import boto3
import openai
import pytest
from pydantic import BaseModel

from batch_embedder import failure_models, models, service_models
from batch_embedder.steps.batch import overall_status, to_ref
from batch_embedder_local.events import ALL_FILES, ENV_FILE, FILES, SCHEDULES
from batch_embedder_local.pipe import render_input_template
from batch_embedder_local.stack import LOCAL_API_KEY
from batch_embedder_local.template import load_template
from tests.utils import ROOT, fresh, wait_for_batch

EVENTS = ROOT / "events"
TEMPLATE = load_template()
#: events file -> the function (logical id in template.yaml) it is the input of.
FUNCTIONS: dict[str, str] = {
    **{name: f"{state}Function" for state, name in FILES.items()},
    "webhook_receiver.json": "WebhookReceiverFunction",
    "reconcile_batches.json": "ReconcileBatchesFunction",
    "sweep_reservations.json": "SweepReservationsFunction",
}
#: Files that start the workflow rather than a function.
WORKFLOW_INPUTS = {"group.json", "object_created.json", "object_deleted.json"}
#: Keys whose contents differ with the run (a metering snapshot's open-ended parts).
OPAQUE = {"other_requests", "prefix_tokens"}
#: Keys a replay leaves out (the replay is not an execution: no execution ARN).
OPTIONAL = {"execution_arn"}


def load(name: str) -> Any:
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


def handler_model(logical: str) -> type[BaseModel]:
    """The model ``functions/<dir>/app.py`` parses its event with (``step_handler(Model)``)."""
    code = ROOT / TEMPLATE["Resources"][logical]["Properties"]["CodeUri"] / "app.py"
    found = re.search(r"step_handler\((\w+)\)", code.read_text(encoding="utf-8"))
    assert found, f"{code}: no step_handler(Model)"
    model: type[BaseModel] = (
        getattr(models, found.group(1), None)
        or getattr(failure_models, found.group(1), None)
        or getattr(service_models, found.group(1))
    )
    return model


def to_upload(event: dict[str, Any]) -> dict[str, Any]:
    """What the pipe's input template (template.yaml's) makes of an EventBridge S3 event."""
    pipe = TEMPLATE["Resources"]["UploadPipe"]["Properties"]
    upload: dict[str, Any] = render_input_template(
        pipe["TargetParameters"]["InputTemplate"], {"body": json.dumps(event)}
    )
    return upload


def kind(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return type(value).__name__
    return "number" if isinstance(value, int | float) else type(value).__name__


def same_shape(recorded: Any, live: Any, path: str = "$") -> None:
    """Same keys (recursively) and value kinds: the recorded file is what the chain makes."""
    if isinstance(recorded, dict) and isinstance(live, dict):
        left = {k for k in recorded if k not in OPTIONAL}
        right = {k for k in live if k not in OPTIONAL}
        assert left == right, f"{path}: only recorded {left - right}, only live {right - left}"
        for k in left - OPAQUE:
            same_shape(recorded[k], live[k], f"{path}.{k}")
    elif isinstance(recorded, list) and isinstance(live, list):
        if recorded and live:
            same_shape(recorded[0], live[0], f"{path}[0]")
    else:
        assert kind(recorded) == kind(live), f"{path}: {recorded!r} vs {live!r}"


def invoke(stack: Any, logical: str, event: Any) -> Any:
    resp = boto3.client("lambda").invoke(
        FunctionName=stack.refs[logical], Payload=json.dumps(event).encode()
    )
    payload = json.loads(resp["Payload"].read())
    assert "FunctionError" not in resp, payload
    return payload


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
    declared = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    resources = [v for v in declared if v.endswith(("_BUCKET", "_TABLE", "_SECRET_ID"))]
    assert resources
    for logical, values in env.items():
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
    assert models.Upload.model_validate(to_upload(created)) == request.uploads[0]
    gone = models.Upload.model_validate(to_upload(deleted))
    assert gone.event == "Object Deleted"
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


def test_events_replay_through_their_handlers_in_order(
    stack: Any, db: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("SYNC_PREFIXES", "urgent/")  # as PARAMETERS of the capture
    salt = uuid.uuid4().hex[:12]
    job_id = f"events-replay-{salt}"
    recorded = load("chunk_and_estimate.json")
    uploads = []
    for upload in recorded["uploads"]:  # the same group, at keys and contents of this run
        top, name = upload["key"].split("/", 1)
        key = f"{top}/{salt}/{name}"
        body = fresh(name, salt) if upload["size"] not in ("0", 0) else b""
        uploads.append(to_upload(stack.upload(key, body, deliver=False)))
    sample_key, urgent_key = uploads[0]["key"], uploads[1]["key"]
    first = {k: v for k, v in recorded.items() if k not in OPTIONAL}
    live = invoke(
        stack, "ChunkAndEstimateFunction", {**first, "job_id": job_id, "uploads": uploads}
    )
    for state in ("CheckCache", "BudgetCheck", "EmbedSync", "BuildAndUploadJsonl", "CreateBatch"):
        same_shape(load(FILES[state]), live, FILES[state])
        live = invoke(stack, f"{state}Function", live)
    same_shape(load("wait_for_batches.json")["job"], live, "wait_for_batches.json")
    assert live["embed"]["api"] == "sync+batch" and live["urgent_documents"] == 1
    assert live["rejected_count"] == 1 and live["create_status"] == "created"

    # WaitForBatches needs a real task token: wait for the batches here instead and build
    # the outcome as the completer (webhook receiver or reconciler) sends it.
    client = openai.OpenAI(api_key=LOCAL_API_KEY, base_url=stack.emulator.base_url)
    refs = []
    for ref in live["batches"]:
        batch = wait_for_batch(client, ref["batch_id"])
        tokens = batch.usage.input_tokens if batch.usage else None
        refs.append(to_ref(batch).model_copy(update={"billed_tokens": tokens}))
    outcome = models.BatchesOutcome(status=overall_status([r.status for r in refs]), batches=refs)
    assert outcome.status == "completed"
    live = {**live, "outcome": json.loads(outcome.model_dump_json())}  # ResultPath $.outcome
    same_shape(load("fetch_and_write.json"), live, "fetch_and_write.json")
    live = invoke(stack, "FetchAndWriteFunction", live)
    same_shape(load("record_cost.json"), live, "record_cost.json")
    summary = invoke(stack, "RecordCostFunction", live)

    rows = dict(
        db.execute(
            "SELECT source_key, count(*) FROM batch_embedder.chunks "
            "WHERE source_key = ANY(%s) GROUP BY source_key",
            ([sample_key, urgent_key],),
        ).fetchall()
    )
    assert rows[sample_key] > 0 and rows[urgent_key] > 0
    assert summary["vectors_written"] == summary["chunks"] == sum(rows.values())
    assert summary["job_id"] == job_id and summary["documents"] == 2
    assert {r["key"]: r["status"] for r in summary["results"]} == {
        sample_key: "embedded",
        urgent_key: "embedded",
        uploads[2]["key"]: "rejected",
    }

    # The delete-only group's DeleteDocuments, on this run's sample key.
    delete = load("delete_documents.json") | {"job_id": f"{job_id}-delete", "deletes": [sample_key]}
    invoke(stack, "DeleteDocumentsFunction", {k: v for k, v in delete.items() if k not in OPTIONAL})
    left = db.execute(
        "SELECT count(*) FROM batch_embedder.chunks WHERE source_key = %s", (sample_key,)
    ).fetchone()
    assert left == (0,)


def test_failure_and_scheduled_events_replay(stack: Any) -> None:
    failure = invoke(stack, "RecordFailureFunction", load("record_failure.json"))
    assert failure["failed_state"] == "InvalidDocument"
    assert "docs/empty.txt" in failure["cause"]
    reconciled = service_models.ReconcileResult.model_validate(
        invoke(stack, "ReconcileBatchesFunction", load("reconcile_batches.json"))
    )
    assert reconciled.finished <= reconciled.open_batches
    service_models.SweepResult.model_validate(
        invoke(stack, "SweepReservationsFunction", load("sweep_reservations.json"))
    )


def test_recorded_webhook_is_refused_on_replay(stack: Any) -> None:
    """Its signature is over 300 s old (and made with another stack's secret): 400."""
    answer = invoke(stack, "WebhookReceiverFunction", load("webhook_receiver.json"))
    assert answer["statusCode"] == 400


def test_delete_only_group_is_a_valid_record_cost_input() -> None:
    # AnyChunks sends a group with nothing to embed straight from DeleteDocuments to RecordCost.
    handler_model("RecordCostFunction").model_validate(load("delete_documents.json"))
