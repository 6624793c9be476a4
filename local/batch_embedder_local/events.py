"""Write ``events/``: one real input per function, captured from a local run.

``python -m batch_embedder_local.events events`` runs the workflow on a sample document
(and on an empty file, for RecordFailure) and saves what each Task state received, plus
the EventBridge "Object Created" event that started it. Each file is what
``sam local invoke <Function> -e events/<file>.json`` feeds that function.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from .stack import LocalStack
from .template import ROOT

SAMPLE_KEY = "docs/appetite.rst.txt"
SAMPLE_FILE = ROOT / "samples" / "python-tutorial" / "appetite.rst.txt"
URGENT_KEY = "urgent/whatnow.rst.txt"
URGENT_FILE = ROOT / "samples" / "python-tutorial" / "whatnow.rst.txt"
JOB_ID = "example-job-0001"
FAILED_JOB_ID = "example-job-0002"
URGENT_JOB_ID = "example-job-0003"
DELETE_JOB_ID = "example-job-0004"
#: The sample takes the Batch API path (SyncMaxTokens=0); keys under urgent/ the sync one.
PARAMETERS = {"SyncMaxTokens": "0", "SyncPrefixes": '["urgent/"]'}

#: Task state -> events/ file name.
FILES = {
    "ChunkAndEstimate": "chunk_and_estimate.json",
    "CheckCache": "check_cache.json",
    "EmbedSync": "embed_sync.json",
    "DeleteDocument": "delete_document.json",
    "BudgetCheck": "budget_check.json",
    "BuildAndUploadJsonl": "build_and_upload_jsonl.json",
    "CreateBatch": "create_batch.json",
    "PollBatch": "poll_batch.json",
    "FetchAndWrite": "fetch_and_write.json",
    "RecordCost": "record_cost.json",
    "RecordFailure": "record_failure.json",
}


def state_inputs(stack: LocalStack, execution_arn: str) -> dict[str, Any]:
    """The first input each state of the execution received."""
    inputs: dict[str, Any] = {}
    for event in stack.history(execution_arn):
        details = event.get("stateEnteredEventDetails")
        if details and details["name"] not in inputs:
            inputs[details["name"]] = json.loads(details.get("input") or "{}")
    return inputs


def capture(stack: LocalStack) -> dict[str, Any]:
    """Run the sample and a failing upload; return ``{file name: event}``."""
    event = stack.upload(SAMPLE_KEY, SAMPLE_FILE.read_bytes())
    ok = stack.start_execution(event, name=JOB_ID)
    bad = stack.start_execution(stack.upload("docs/empty.txt", b""), name=FAILED_JOB_ID)
    urgent = stack.start_execution(
        stack.upload(URGENT_KEY, URGENT_FILE.read_bytes()), name=URGENT_JOB_ID
    )
    results = stack.wait({ok: SAMPLE_KEY, bad: "docs/empty.txt", urgent: URGENT_KEY}, timeout=300)
    if [r.status for r in results] != ["SUCCEEDED", "FAILED", "SUCCEEDED"]:
        raise RuntimeError(f"sample run did not go as expected: {results}")
    deleted_event = stack.delete(SAMPLE_KEY)
    delete = stack.start_execution(deleted_event, name=DELETE_JOB_ID)
    stack.wait({delete: SAMPLE_KEY}, timeout=120)
    out: dict[str, Any] = {"object_created.json": event, "object_deleted.json": deleted_event}
    for arn in (ok, bad, urgent, delete):
        for state, payload in state_inputs(stack, arn).items():
            if state in FILES and FILES[state] not in out:
                out[FILES[state]] = payload
    return out


def main(argv: list[str] | None = None) -> int:
    """Write the captured events into the folder given (default ``events``)."""
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0] if args else "events")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="batch-embedder-events-") as tmp:
        home = Path(tmp)  # a fresh database and tables: the same events every time
        with LocalStack(
            home, log_file=home / "lambda.log", persist=False, parameters=PARAMETERS
        ) as stack:
            captured = capture(stack)
    for name, payload in captured.items():
        (folder / name).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        print(folder / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
