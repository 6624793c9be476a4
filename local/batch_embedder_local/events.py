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
JOB_ID = "example-job-0001"
FAILED_JOB_ID = "example-job-0002"

#: Task state -> events/ file name.
FILES = {
    "ChunkAndEstimate": "chunk_and_estimate.json",
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
    results = stack.wait({ok: SAMPLE_KEY, bad: "docs/empty.txt"}, timeout=300)
    if results[0].status != "SUCCEEDED" or results[1].failed_state != "InvalidDocument":
        raise RuntimeError(f"sample run did not go as expected: {results}")
    out: dict[str, Any] = {"object_created.json": event}
    for arn in (ok, bad):
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
        with LocalStack(home, log_file=home / "lambda.log", persist=False) as stack:
            captured = capture(stack)
    for name, payload in captured.items():
        (folder / name).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        print(folder / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
