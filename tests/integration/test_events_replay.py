"""The captured events/ chain replays through the real handlers on the local stack, and
the failure, scheduled and webhook events replay too."""

from __future__ import annotations

import json
import uuid
from typing import Any

import openai

from batch_embedder import models, service_models
from batch_embedder.steps.batch import overall_status, to_ref
from batch_embedder_local.events import FILES
from batch_embedder_local.stack import LOCAL_API_KEY
from tests.utils import (
    OPTIONAL,
    fresh,
    invoke,
    load,
    same_shape,
    to_upload,
    wait_for_batch,
)


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
