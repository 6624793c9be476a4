"""Helpers the tests share (imported as ``tests.utils``; fixtures stay in conftest)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from pydantic import BaseModel

from batch_embedder import failure_models, models, service_models
from batch_embedder.aws import provider_health
from batch_embedder.aws.ledger import ledger_store
from batch_embedder.openai.pricing import cost_usd
from batch_embedder.records import LedgerRecord
from batch_embedder.settings import Settings
from batch_embedder_local.events import FILES
from batch_embedder_local.pipe import render_input_template
from batch_embedder_local.template import load_template

#: The repository, and the sample pages the tests ingest.
ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "python-tutorial"


@contextmanager
def local_stack(
    home: Path,
    log: str = "lambda.log",
    emulator_config: dict[str, Any] | None = None,
    **parameters: str,
) -> Iterator[Any]:
    """The local stack for a module: a 1 s upload window (each test's uploads become one
    group quickly), the reconciler run only when a test calls ``stack.reconcile()``
    (webhooks finish batches), and ``parameters`` (template parameters) on top."""
    from batch_embedder_local.stack import LocalStack

    with LocalStack(
        home,
        log_file=home / log,
        parameters={"UploadBatchWindowSeconds": "1", **parameters},
        emulator_config=emulator_config,
        reconcile_seconds=0,
    ) as stack:
        yield stack


@contextmanager
def provider_healthy(stack: Any) -> Iterator[Settings]:
    """Settings of the stack's Lambdas, with the provider's degraded record clear before;
    after, the emulator answers again and the record is cleared once more."""
    settings = Settings()
    provider_health.recovered(settings)
    try:
        yield settings
    finally:
        stack.emulator.update_config(outage_seconds=0)
        provider_health.recovered(settings)


def ledger(output: dict[str, Any]) -> LedgerRecord:
    """The ledger record (usage table) of the execution whose output is ``output``."""
    record = ledger_store(os.environ["USAGE_TABLE"]).get(output["day"], output["job_id"])
    assert record is not None, f"no ledger record for {output['job_id']}"
    return record


def usd(tokens: int, per_million: Any) -> float:
    """What ``tokens`` cost at ``per_million`` USD, as the output and the ledger carry it."""
    return float(cost_usd(tokens, per_million))


def brief(result: dict[str, Any] | None) -> dict[str, Any]:
    """A document's result without its cost shares: key, status, chunks (and reason)."""
    assert result is not None, "no result for that document"
    return {k: result[k] for k in ("key", "status", "chunks", "reason") if k in result}


def wait_for_batch(client: Any, batch_id: str, timeout: float = 60, interval: float = 0.05) -> Any:
    """Retrieve the batch through the SDK until it is terminal (tests only: the product
    never polls a batch per group)."""
    import time

    from batch_embedder.steps.batch import TERMINAL

    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch_id)).status not in TERMINAL:
        assert time.monotonic() < deadline, f"{batch_id} still {batch.status}"
        time.sleep(interval)
    return batch


def until(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Call ``check`` every 0.1 s until it returns something truthy; return that.

    Raises:
        TimeoutError: not reached within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what} not reached in {timeout} s")


def texts(db: Any, key: str) -> list[str]:
    """The stored chunk texts of the document ``key``, in chunk order."""
    rows = db.execute(
        "SELECT text FROM batch_embedder.chunks WHERE source_key = %s ORDER BY chunk_index",
        (key,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def fresh(name: str, salt: str) -> bytes:
    """A sample document made unique (every chunk differs), so the cache cannot serve it."""
    text = (SAMPLES / name).read_text(encoding="utf-8")
    return "\n\n".join(f"[{salt}] {p}" for p in text.split("\n\n")).encode()


# -- events/: the captured handler inputs ----------------------------------------------

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
    found = re.search(r"step_handler\((\w+)[,)]", code.read_text(encoding="utf-8"))
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
