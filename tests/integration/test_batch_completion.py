"""A group's wait ends exactly once: by webhook (repeated, early, forged) or by the reconciler.

Nothing polls per document or per group: an execution waiting in WaitForBatches makes no
transition until the webhook receiver or the reconciler sends SendTaskSuccess.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
import pytest

from tests.utils import SAMPLES, until

pytestmark = pytest.mark.integration


def start_group(stack: Any, salt: str) -> tuple[str, list[str]]:
    """Upload two fresh documents (one group); returns the execution ARN and the keys."""
    keys = []
    events = []
    for name in ("appetite.rst.txt", "whatnow.rst.txt"):
        key = f"wait-{salt}/{name}"
        events.append(stack.upload(key, f"[{salt}] ".encode() + (SAMPLES / name).read_bytes()))
        keys.append(key)
    wanted = {(e["detail"]["object"]["key"], e["detail"]["object"]["sequencer"]) for e in events}
    groups = until(lambda: stack.pipe.groups_for(wanted), what="the pipe's group")
    assert len(groups) == 1
    return groups[0].execution_arn, keys


def entered(stack: Any, arn: str) -> list[str]:
    return [
        e["stateEnteredEventDetails"]["name"]
        for e in stack.history(arn)
        if "stateEnteredEventDetails" in e
    ]


def group_batch(stack: Any, arn: str) -> Any:
    """The emulator's batch of this execution (CreateBatch names the job in its metadata)."""
    job_id = arn.rsplit(":", 1)[-1]
    return next(
        (
            b
            for b in stack.emulator.batches.list_batches()
            if (b.metadata or {}).get("job_id") == job_id
        ),
        None,
    )


def waiting_with_batch_done(stack: Any, arn: str) -> bool:
    if "WaitForBatches" not in entered(stack, arn):
        return False
    batch = group_batch(stack, arn)
    return batch is not None and batch.status in ("completed", "failed", "expired", "cancelled")


def assert_completed_once(stack: Any, arn: str, keys: list[str], db: Any) -> None:
    result = stack.wait({arn: "group"}, timeout=120)[0]
    assert result.status == "SUCCEEDED", (result.failed_state, result.cause)
    states = entered(stack, arn)
    assert states.count("WaitForBatches") == 1
    assert states.count("FetchAndWrite") == 1  # the wait ended once
    for key in keys:
        stored = db.execute(
            "SELECT count(*), count(DISTINCT chunk_index) FROM batch_embedder.chunks "
            "WHERE source_key = %s",
            (key,),
        ).fetchone()
        assert stored[0] == stored[1] == result.document(key)["chunks"] > 0


def test_a_webhook_delivered_three_times_completes_once(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    emulator.update_config(webhook_duplicates=3)
    arn, keys = start_group(stack, uuid.uuid4().hex[:8])
    assert_completed_once(stack, arn, keys, db)
    batch_id = group_batch(stack, arn).id
    deliveries = until(
        lambda: [d for d in emulator.webhook_deliveries
                 if d["batch_id"] == batch_id and d["outcome"] == "delivered"]
        if len([d for d in emulator.webhook_deliveries if d["batch_id"] == batch_id]) >= 3
        else None,
        what="three deliveries",
    )  # fmt: skip
    assert len({d["event_id"] for d in deliveries}) == 1
    assert [d["status_code"] for d in deliveries] == [200, 200, 200]
    # Nothing of the group stays at OpenAI: input file deleted once the batch ended, output
    # (and error) file once every vector was stored and every token counted.
    batch = group_batch(stack, arn)
    for file_id in (batch.input_file_id, batch.output_file_id, batch.error_file_id):
        assert file_id is None or emulator.files.get(file_id) is None, file_id


def test_a_webhook_before_the_token_was_stored_completes_once(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    gate = stack.adapter.hold("WaitForBatchesFunction")
    try:
        arn, keys = start_group(stack, uuid.uuid4().hex[:8])
        until(lambda: "WaitForBatches" in entered(stack, arn), what="WaitForBatches entered")
        # The batch finishes and its webhook is handled while WaitForBatches is held.
        batch_id = until(lambda: getattr(group_batch(stack, arn), "id", None), what="the batch")
        until(
            lambda: any(d["batch_id"] == batch_id and d["status_code"] == 200
                        for d in emulator.webhook_deliveries),
            what="the webhook handled",
        )  # fmt: skip
        assert stack.status(arn) == "RUNNING"
    finally:
        gate.set()
    assert_completed_once(stack, arn, keys, db)
    assert emulator.batches.get(batch_id).status == "completed"


def test_lost_webhooks_are_covered_by_the_reconciler_and_nothing_polls(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    emulator.update_config(webhook_drop=True)
    arn, keys = start_group(stack, uuid.uuid4().hex[:8])
    until(lambda: waiting_with_batch_done(stack, arn), what="the batch done, the group waiting")
    before = len(stack.history(arn))
    time.sleep(2)
    # Waiting costs nothing: no state was entered, no Lambda ran for this execution.
    assert len(stack.history(arn)) == before
    assert stack.status(arn) == "RUNNING"
    result = stack.reconcile()
    assert result["completions_sent"] >= 1
    assert_completed_once(stack, arn, keys, db)
    again = stack.reconcile()
    assert again["completions_sent"] == 0


def test_a_forged_webhook_is_refused_and_changes_nothing(
    stack: Any, emulator: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    emulator.update_config(webhook_forge=True, webhook_max_attempts=1)
    arn, keys = start_group(stack, uuid.uuid4().hex[:8])
    until(lambda: waiting_with_batch_done(stack, arn), what="the batch done, the group waiting")
    batch_id = group_batch(stack, arn).id
    forged = until(
        lambda: [d for d in emulator.webhook_deliveries if d["batch_id"] == batch_id],
        what="the forged delivery",
    )
    assert [d["status_code"] for d in forged] == [400]
    time.sleep(1)
    assert stack.status(arn) == "RUNNING"  # the forged delivery ended nothing
    assert stack.reconcile()["completions_sent"] >= 1
    assert_completed_once(stack, arn, keys, db)
