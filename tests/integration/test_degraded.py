"""Degraded mode: an OpenAI outage pauses executions instead of failing them.

Each scenario runs the real ASL and handlers on the local stack, with the emulator's
outage switch (every ``/v1`` connection closed without an answer) on for longer than the
client's own retries: the execution waits in a ``ProviderDegraded*`` Wait state, runs the
step again, and completes by itself once the emulator answers, with its rows in pgvector
and every token paid once (billed == committed == ledger). The provider's degraded record
(usage table) and the ``ProviderDegraded`` metric are set during the outage and cleared
after. A refused key still fails at once; an outage longer than ``ProviderOutageSeconds``
fails with a cause that says so.

The module has its own stack: ``ProviderOutageWaitSeconds`` of 1 s (not 60) and one SDK
retry, so that a loop takes seconds.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from batch_embedder.aws import provider_health
from batch_embedder.settings import Settings
from tests.books import Books, counter, embedded_once, start
from tests.utils import fresh, local_stack, provider_healthy, until

pytestmark = pytest.mark.integration

#: Seconds of each emulated outage: several attempts' worth (one SDK retry, ~1 s each,
#: plus the 1 s ProviderDegraded wait), far more than the client alone survives.
OUTAGE_SECONDS = 8.0


@pytest.fixture(scope="module")
def stack(home: Path, database_url: str) -> Iterator[Any]:
    """The local stack with short degraded-mode waits (overrides conftest's ``stack``)."""
    with local_stack(home, ProviderOutageWaitSeconds="1", OpenAIMaxRetries="1") as s:
        yield s


@pytest.fixture()
def healthy(stack: Any) -> Iterator[Settings]:
    """Settings of the stack's Lambdas; the provider's record is clear before and after."""
    with provider_healthy(stack) as settings:
        yield settings


def metric_values(printed: str) -> list[float]:
    """Values of the ``ProviderDegraded`` metric in the EMF lines the Lambdas printed
    (what CloudWatch Logs would turn into the metric the alarm watches)."""
    values: list[float] = []
    for line in printed.splitlines():
        if '"ProviderDegraded"' not in line or '"_aws"' not in line:
            continue
        value = json.loads(line)["ProviderDegraded"]
        values += [float(v) for v in (value if isinstance(value, list) else [value])]
    return values


def start_with_an_outage_at(
    stack: Any, key: str, body: bytes, state: str, seconds: float = OUTAGE_SECONDS
) -> str:
    """Start an execution whose ``state`` Lambda is held until the emulator goes away for
    ``seconds``: the state's first attempt meets the outage. Returns the execution ARN."""
    gate = stack.adapter.hold(f"{state}Function")
    try:
        arn = start(stack, key, body)
        until(lambda: stack.current_state(arn) == state, timeout=120, what=state)
        stack.emulator.update_config(outage_seconds=seconds)
    finally:
        gate.set()
    return arn


def degraded_states(states: list[str]) -> list[str]:
    return [s for s in states if s.startswith(("ProviderDegraded", "ProviderOutage"))]


def test_an_outage_at_the_key_check_pauses_the_execution_which_then_completes(
    stack: Any,
    emulator: Any,
    healthy: Settings,
    db: psycopg.Connection[tuple[Any, ...]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"degraded-{salt}/errors.rst.txt"
    books = Books(stack)
    capsys.readouterr()
    emulator.update_config(outage_seconds=OUTAGE_SECONDS)
    arn = start(stack, key, fresh("errors.rst.txt", salt))
    until(
        lambda: stack.current_state(arn) == "ProviderDegradedBudget",
        timeout=60,
        what="the degraded wait",
    )
    record = provider_health.current(healthy)
    assert record is not None and int(record["failures"]) >= 1
    assert "APIConnectionError" in record["last_error"]
    assert counter()["reserved_tokens"] == 0  # nothing reserved while OpenAI is away
    [result] = stack.wait({arn: key}, timeout=300)
    assert embedded_once(result, books, db, key) > 0
    loops = result.states.count("ProviderDegradedBudget")
    assert loops >= 2, result.states  # waited more than once: longer than one attempt
    assert result.states.count("BudgetCheck") == loops + 1
    assert set(degraded_states(result.states)) == {"ProviderOutageBudget", "ProviderDegradedBudget"}
    assert emulator.stats()["outage_refused"] > books.stats["outage_refused"]
    assert provider_health.current(healthy) is None  # cleared by the success
    values = metric_values(capsys.readouterr().out)
    assert values.count(1.0) >= loops and values[-1] == 0.0, values


def test_an_outage_at_batch_creation_creates_each_batch_once(
    stack: Any, emulator: Any, healthy: Settings, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"degraded-create-{salt}/controlflow.rst.txt"
    books = Books(stack)
    arn = start_with_an_outage_at(stack, key, fresh("controlflow.rst.txt", salt), "CreateBatch")
    until(lambda: provider_health.current(healthy), timeout=60, what="the degraded record")
    [result] = stack.wait({arn: key}, timeout=300)
    assert embedded_once(result, books, db, key) > 0
    assert result.states.count("ProviderDegradedCreate") >= 2, result.states
    assert set(degraded_states(result.states)) == {"ProviderOutageCreate", "ProviderDegradedCreate"}
    batches = [
        b
        for b in emulator.batches.list_batches()
        if (b.metadata or {}).get("job_id") == arn.rsplit(":", 1)[-1]
    ]
    assert len(batches) == result.output["batches"] == 1  # created once, not per attempt
    assert provider_health.current(healthy) is None


def test_an_outage_while_reading_a_finished_batch_pauses_fetch_and_write(
    stack: Any, emulator: Any, healthy: Settings, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"degraded-fetch-{salt}/errors.rst.txt"
    books = Books(stack)
    # The batch is done; its output cannot be read.
    arn = start_with_an_outage_at(stack, key, fresh("errors.rst.txt", salt), "FetchAndWrite")
    [result] = stack.wait({arn: key}, timeout=300)
    assert embedded_once(result, books, db, key) > 0
    assert result.states.count("ProviderDegradedFetch") >= 1, result.states
    assert set(degraded_states(result.states)) == {"ProviderOutageFetch", "ProviderDegradedFetch"}
    assert result.output["batches"] == 1  # the batch was read again, not bought again
    assert provider_health.current(healthy) is None


def test_an_outage_during_the_synchronous_path_pauses_it_and_buys_each_content_once(
    stack: Any,
    emulator: Any,
    healthy: Settings,
    db: psycopg.Connection[tuple[Any, ...]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    salt = uuid.uuid4().hex[:8]
    monkeypatch.setenv("SYNC_PREFIXES", f"urgent-{salt}/")
    monkeypatch.setenv("BATCH_INPUTS_PER_REQUEST", "4")  # several requests, several checkpoints
    key = f"urgent-{salt}/errors.rst.txt"
    books = Books(stack)
    # Longer than EmbedSync's own backoff (8 attempts, 0.5 s doubling to 30 s: ~62 s).
    arn = start_with_an_outage_at(stack, key, fresh("errors.rst.txt", salt), "EmbedSync", 75)
    [result] = stack.wait({arn: key}, timeout=400)
    assert embedded_once(result, books, db, key) > 0
    assert "ProviderDegradedSync" in result.states, result.states
    assert "BuildAndUploadJsonl" not in result.states
    assert result.output["api"] == "sync"
    assert provider_health.current(healthy) is None


def test_batches_running_during_an_outage_are_left_to_the_reconciler(
    stack: Any, emulator: Any, healthy: Settings, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"degraded-wait-{salt}/errors.rst.txt"
    emulator.update_config(batch_in_progress_seconds=2.0)
    books = Books(stack)
    arn = start(stack, key, fresh("errors.rst.txt", salt))
    until(lambda: stack.current_state(arn) == "WaitForBatches", timeout=60, what="the wait")
    emulator.update_config(outage_seconds=OUTAGE_SECONDS)  # the batch ends during it
    during = stack.reconcile()
    assert "errorType" not in during, during  # it does not fail: the next run tries again
    assert during["open_batches"] >= 1 and during["finished"] == 0, during
    record = provider_health.current(healthy)
    assert record is not None and "APIConnectionError" in record["last_error"]
    [result] = stack.wait({arn: key}, timeout=300)
    assert embedded_once(result, books, db, key) > 0
    assert degraded_states(result.states) == []  # the execution's wait was not disturbed
    # The webhook, held by the outage, is delivered after it; its retrieve clears the record.
    until(lambda: provider_health.current(healthy) is None, timeout=30, what="the recovery")


def test_an_outage_longer_than_provider_outage_seconds_fails_with_its_cause(
    stack: Any,
    emulator: Any,
    healthy: Settings,
    db: psycopg.Connection[tuple[Any, ...]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"degraded-long-{salt}/errors.rst.txt"
    monkeypatch.setenv("PROVIDER_OUTAGE_SECONDS", "3")
    books = Books(stack)
    emulator.update_config(outage_seconds=120)
    arn = start(stack, key, fresh("errors.rst.txt", salt))
    [result] = stack.wait({arn: key}, timeout=120)
    assert result.status == "FAILED"
    assert result.failed_state == "PipelineError"
    assert result.error == "ProviderOutageTooLongError"
    assert result.cause is not None
    assert key in result.cause and "has not answered" in result.cause, result.cause
    assert "PROVIDER_OUTAGE_SECONDS=3" in result.cause
    assert "ProviderDegradedBudget" in result.states
    assert provider_health.current(healthy) is not None  # still degraded: nobody answered
    assert books.billed() == 0
    emulator.update_config(outage_seconds=0)
    books.check(db, arn)


def test_a_refused_key_still_fails_at_once_without_degraded_mode(
    stack: Any, emulator: Any, healthy: Settings, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    salt = uuid.uuid4().hex[:8]
    key = f"degraded-auth-{salt}/errors.rst.txt"
    emulator.update_config(api_key="sk-someone-else")  # a 401: OpenAI answered
    books = Books(stack)
    [result] = stack.ingest([(key, fresh("errors.rst.txt", salt))], timeout=120)
    assert result.status == "FAILED"
    assert result.failed_state == "ProviderAuthFailed"
    assert degraded_states(result.states) == []
    assert result.states.count("BudgetCheck") == 1
    assert provider_health.current(healthy) is None
    assert books.billed() == 0
    books.check(db, result.execution_arn)
