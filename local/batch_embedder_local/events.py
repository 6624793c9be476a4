"""Write ``events/``: one real input per function, captured from a local run.

``python -m batch_embedder_local.events events`` (``make events``) starts three group
executions on a fresh local stack (``SyncPrefixes=urgent/``, webhooks on, no scheduled
reconciler, so OpenAI's ``batch.completed`` webhook ends the wait):

1. ``example-job-0001``: a sample document, an urgent one (under ``urgent/``) and an empty
   file (rejected and reported, not fatal): ChunkAndEstimate, CheckCache, BudgetCheck,
   EmbedSync, BuildAndUploadJsonl, CreateBatch, WaitForBatches, FetchAndWrite, RecordCost,
   and the WebhookReceiver's Function URL request;
2. ``example-job-0002``: the sample's deletion only: DeleteDocuments;
3. ``example-job-0003``: an empty file only: RecordFailure (``InvalidDocument``).

What a Task state sent its function is read from the execution history
(``taskScheduledEventDetails.parameters``' ``Payload``: for WaitForBatches it holds the
task token); the receiver's request is what the emulator's webhook reached the local
Function URL with. The scheduled functions get an EventBridge "Scheduled Event". Each
file is what ``sam local invoke <Function> -e events/<file>.json`` feeds that function.

``env.json`` (``sam local invoke --env-vars events/env.json``) gives every function of
template.yaml the Globals environment resolved with the names the events use: the local
stack's buckets and tables (``batch-embedder-local-<logical id>``: fixed names, so the
events and env.json agree run after run), its secrets by name, and ``OPENAI_BASE_URL``
pointing at the emulator on the Docker host (``batch-embedder local openai-server``).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from .stack import ACCOUNT, REGION, STACK, LocalStack
from .template import ROOT

SAMPLES = ROOT / "samples" / "python-tutorial"
SAMPLE_KEY = "docs/appetite.rst.txt"
SAMPLE_FILE = SAMPLES / "appetite.rst.txt"
URGENT_KEY = "urgent/whatnow.rst.txt"
URGENT_FILE = SAMPLES / "whatnow.rst.txt"
EMPTY_KEY = "docs/empty.txt"
#: Execution names (the workflow's job ids): fixed, so the files stay the same.
JOB_ID = "example-job-0001"
DELETE_JOB_ID = "example-job-0002"
FAILED_JOB_ID = "example-job-0003"
#: Keys under urgent/ take the synchronous API; no scheduled reconciler: the webhook ends
#: the wait (the reconciler's input is a scheduled event, written below).
PARAMETERS = {"SyncPrefixes": "urgent/"}

#: Task state -> events/ file name.
FILES = {
    "ChunkAndEstimate": "chunk_and_estimate.json",
    "DeleteDocuments": "delete_documents.json",
    "CheckCache": "check_cache.json",
    "BudgetCheck": "budget_check.json",
    "EmbedSync": "embed_sync.json",
    "BuildAndUploadJsonl": "build_and_upload_jsonl.json",
    "CreateBatch": "create_batch.json",
    "WaitForBatches": "wait_for_batches.json",
    "FetchAndWrite": "fetch_and_write.json",
    "RecordCost": "record_cost.json",
    "RecordFailure": "record_failure.json",
}
#: Every file ``capture`` writes (README.md aside).
ALL_FILES = sorted(
    {
        *FILES.values(),
        "group.json",
        "object_created.json",
        "object_deleted.json",
        "webhook_receiver.json",
        "reconcile_batches.json",
        "sweep_reservations.json",
    }
)
#: The ``--env-vars`` file of ``sam local invoke`` (not an event).
ENV_FILE = "env.json"
#: Where a function in SAM's container reaches the emulator started on the host with
#: ``batch-embedder local openai-server --port 8787``.
DOCKER_OPENAI_BASE_URL = "http://host.docker.internal:8787/v1"
#: The schedules of template.yaml's scheduled functions (SAM names the rules like this).
SCHEDULES = {
    "reconcile_batches.json": "ReconcileBatchesFunctionReconcile",
    "sweep_reservations.json": "SweepReservationsFunctionHourly",
}


def task_inputs(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The first payload each Lambda Task state sent its function, by state name.

    ``TaskScheduled`` events hold the resolved ``Parameters`` (``Payload`` is what the
    function receives); a state without one falls back to its entered input.
    """
    inputs: dict[str, Any] = {}
    state = ""
    for event in history:
        entered = event.get("stateEnteredEventDetails")
        if entered:
            state = entered["name"]
            continue
        scheduled = event.get("taskScheduledEventDetails")
        if scheduled and state not in inputs:
            parameters = json.loads(scheduled.get("parameters") or "{}")
            if "Payload" in parameters:
                inputs[state] = parameters["Payload"]
    for event in history:  # states whose scheduling the history lacks
        entered = event.get("stateEnteredEventDetails")
        if entered and entered["name"] not in inputs:
            inputs[entered["name"]] = json.loads(entered.get("input") or "null")
    return inputs


def execution_input(history: list[dict[str, Any]]) -> Any:
    """The input the execution started with (for a group: the pipe's list of uploads)."""
    started = next(e for e in history if "executionStartedEventDetails" in e)
    return json.loads(started["executionStartedEventDetails"]["input"])


def scheduled_event(rule: str, event_id: str) -> dict[str, Any]:
    """An EventBridge "Scheduled Event" as a ``Schedule`` rule delivers it."""
    return {
        "version": "0",
        "id": event_id,
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": "2025-01-01T00:00:00Z",
        "region": REGION,
        "resources": [f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{STACK}-{rule}"],
        "detail": {},
    }


def _record_invocations(stack: LocalStack) -> list[tuple[str, Any]]:
    """Keep ``(logical id, event)`` of every Lambda invocation of the stack."""
    seen: list[tuple[str, Any]] = []
    adapter = stack.adapter
    invoke = adapter.invoke

    def recording(function_name: str, payload: bytes | str | None) -> tuple[bytes, bool]:
        fn = adapter.functions.get(function_name) or adapter.functions.get(
            function_name.split(":function:")[-1].split(":")[0]
        )
        if fn is not None:
            seen.append((fn.logical_id, json.loads(payload or "null")))
        return invoke(function_name, payload)

    adapter.invoke = recording  # type: ignore[method-assign]
    return seen


def _expect(result: Any, status: str, what: str) -> None:
    if result.status != status:
        raise RuntimeError(
            f"{what}: {result.status} (expected {status}) in {result.failed_state}: "
            f"{result.error}: {result.cause}; states {result.states}"
        )


def capture(stack: LocalStack) -> dict[str, Any]:
    """Run the three groups; return ``{file name: event}``."""
    invocations = _record_invocations(stack)
    created = stack.upload(SAMPLE_KEY, SAMPLE_FILE.read_bytes(), deliver=False)
    urgent = stack.upload(URGENT_KEY, URGENT_FILE.read_bytes(), deliver=False)
    empty = stack.upload(EMPTY_KEY, b"", deliver=False)
    ok = stack.start_execution([created, urgent, empty], name=JOB_ID)
    (result,) = stack.wait({ok: SAMPLE_KEY}, timeout=300)
    _expect(result, "SUCCEEDED", JOB_ID)
    deleted = stack.delete(SAMPLE_KEY, deliver=False)
    delete = stack.start_execution([deleted], name=DELETE_JOB_ID)
    (result,) = stack.wait({delete: SAMPLE_KEY}, timeout=120)
    if "DeleteDocuments" not in result.states:
        raise RuntimeError(f"{DELETE_JOB_ID} never reached DeleteDocuments: {result.states}")
    _expect(result, "SUCCEEDED", DELETE_JOB_ID)
    bad = stack.start_execution([stack.upload(EMPTY_KEY, b"", deliver=False)], name=FAILED_JOB_ID)
    (result,) = stack.wait({bad: EMPTY_KEY}, timeout=120)
    _expect(result, "FAILED", FAILED_JOB_ID)
    if result.failed_state != "InvalidDocument":
        raise RuntimeError(f"{FAILED_JOB_ID} ended in {result.failed_state}, not InvalidDocument")

    out: dict[str, Any] = {
        "group.json": execution_input(stack.history(ok)),
        "object_created.json": created,
        "object_deleted.json": deleted,
    }
    # Each group gives the states it is there for (the others repeat the first's).
    sources = {"DeleteDocuments": delete, "RecordFailure": bad}
    inputs = {arn: task_inputs(stack.history(arn)) for arn in (ok, delete, bad)}
    for state, name in FILES.items():
        payload = inputs[sources.get(state, ok)].get(state)
        if payload is not None:
            out[name] = payload
    hooks = [e for logical, e in invocations if logical == "WebhookReceiverFunction"]
    if not hooks:
        raise RuntimeError("the emulator's webhook never reached the receiver")
    out["webhook_receiver.json"] = hooks[0]
    for i, (name, rule) in enumerate(sorted(SCHEDULES.items()), start=1):
        out[name] = scheduled_event(rule, f"00000000-0000-4000-8000-{i:012d}")
    missing = sorted(set(ALL_FILES) - set(out))
    if missing:
        raise RuntimeError(f"not captured: {missing}")
    return out


def env_vars(stack: LocalStack) -> dict[str, dict[str, str]]:
    """``{function logical id: {VAR: value}}`` for ``sam local invoke --env-vars``.

    Each function gets the variables template.yaml gives it (SAM only passes variables the
    template declares; each function declares only those of its settings mixins) with the
    stack's values: its bucket and table names, its secrets by name (an ARN's random suffix
    would change every run), the emulator on the Docker host.
    """
    import boto3

    lam = boto3.client("lambda", region_name=REGION)
    secrets = boto3.client("secretsmanager", region_name=REGION)
    template = stack.template
    functions = {
        logical: res
        for logical, res in sorted(template["Resources"].items())
        if res["Type"] == "AWS::Serverless::Function"
    }
    # Every function's variables have one value each (the local stack refuses otherwise),
    # so a function the local stack does not create (MigrateDatabase, whose Condition is
    # false locally) takes its values from the ones it does.
    values: dict[str, str] = {}
    for logical in functions:
        if logical in stack.refs:
            config = lam.get_function_configuration(FunctionName=stack.refs[logical])
            values.update(config.get("Environment", {}).get("Variables", {}))
    shared = template["Globals"]["Function"].get("Environment", {}).get("Variables", {})
    out: dict[str, dict[str, str]] = {}
    for logical, res in functions.items():
        own = res["Properties"].get("Environment", {}).get("Variables", {})
        env: dict[str, str] = {}
        for var in {**shared, **own}:
            value = values.get(var, "")
            if var.endswith("_SECRET_ID") and value:
                value = str(secrets.describe_secret(SecretId=value)["Name"])
            env[var] = value
        if "OPENAI_BASE_URL" in env:
            env["OPENAI_BASE_URL"] = DOCKER_OPENAI_BASE_URL
        env["TIKTOKEN_CACHE_DIR"] = "/opt/tiktoken"  # the layer's baked cache
        env["POWERTOOLS_LOG_LEVEL"] = "INFO"
        out[logical] = dict(sorted(env.items()))
    return out


def main(argv: list[str] | None = None) -> int:
    """Write the captured events into the folder given (default ``events``)."""
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0] if args else "events")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="batch-embedder-events-") as tmp:
        home = Path(tmp)  # a fresh database and tables: the same events every time
        with LocalStack(
            home,
            log_file=home / "lambda.log",
            persist=False,
            parameters=PARAMETERS,
            reconcile_seconds=0,
        ) as stack:
            captured = capture(stack)
            env = env_vars(stack)
            # DocumentsBucket is no function's variable (the events carry it); named here
            # so env.json lists every name the events use (SAM ignores undeclared ones).
            for values in env.values():
                values.setdefault("DOCUMENTS_BUCKET", stack.documents_bucket)
            captured[ENV_FILE] = env
    for name in sorted(captured):
        text = json.dumps(captured[name], indent=2, ensure_ascii=False) + "\n"
        (folder / name).write_text(text, encoding="utf-8")
        print(folder / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
