"""Fault switches of the local OpenAI emulator, seen through the official ``openai`` SDK.

Outage (``outage_seconds``), random 429 / 5xx (``error_rate_*``), the ``cancelled`` batch
outcome, file expiry (``expires_after`` / ``output_expires_after``), a revoked key; plus
the ``--emulator`` CLI switches and the Lambda adapter's injected failures
(``crash_after`` / ``fail_before``). Fixtures come from
``tests/local/conftest.py``, helpers from ``tests/emulator.py``; the SDK is never patched.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any, cast

import openai
import pytest

from batch_embedder_local.cli import _parse_emulator
from batch_embedder_local.lambda_adapter import LambdaAdapter, LocalFunction
from batch_embedder_local.openai_server import EmulatorConfig, OpenAIEmulator
from batch_embedder_local.openai_server.server import build_parser, config_from_args
from tests.emulator import (
    API_KEY,
    MODEL,
    Receiver,
    jsonl,
    read_lines,
    request_line,
    submit,
    wait_batch,
)

# The emulator of tests/local/conftest.py (module-scoped), put back after each test.
pytestmark = pytest.mark.usefixtures("reset_emulator")


def _stats(admin: openai.OpenAI) -> dict[str, Any]:
    """``GET /_emulator/stats`` through the SDK's generic client."""
    return cast(dict[str, Any], admin.get("/_emulator/stats", cast_to=object))


def _set(admin: openai.OpenAI, **changes: Any) -> dict[str, Any]:
    """``POST /_emulator/config``; returns the new config."""
    return cast(dict[str, Any], admin.post("/_emulator/config", body=changes, cast_to=object))


def _wait(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _refused(call: Any) -> None:
    """``call()`` must fail the way an unreachable OpenAI does (not a timeout, no status)."""
    with pytest.raises(openai.APIConnectionError) as info:
        call()
    assert not isinstance(info.value, openai.APITimeoutError)


# --- outage ---------------------------------------------------------------------------------


def test_outage_refuses_v1_but_not_control_routes(
    client: openai.OpenAI, admin: openai.OpenAI
) -> None:
    client.embeddings.create(model=MODEL, input="before the outage")
    before = _stats(admin)

    assert _set(admin, outage_seconds=0.8)["outage_seconds"] == 0.8
    _refused(lambda: client.embeddings.create(model=MODEL, input="during"))
    _refused(lambda: client.files.list())
    _refused(lambda: client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch"))
    during = _stats(admin)  # control routes keep answering
    assert 0 < during["outage_remaining_seconds"] <= 0.8
    assert during["outage_refused"] == 3
    assert during["billed_tokens"] == before["billed_tokens"]
    assert during["files"] == 0
    assert admin.get("/_emulator/health", cast_to=object) == {"status": "ok"}

    _wait(lambda: _stats(admin)["outage_remaining_seconds"] == 0, what="the outage to end")
    assert client.embeddings.create(model=MODEL, input="after").data

    _set(admin, outage_seconds=60)
    _refused(lambda: client.embeddings.create(model=MODEL, input="long outage"))
    _set(admin, outage_seconds=0)  # ends it at once
    assert _stats(admin)["outage_remaining_seconds"] == 0
    assert client.embeddings.create(model=MODEL, input="back").data


def test_outage_is_retried_by_the_sdk_until_it_ends(emu: OpenAIEmulator) -> None:
    emu.update_config(outage_seconds=0.5)
    patient = openai.OpenAI(api_key=API_KEY, base_url=emu.base_url, max_retries=5)
    started = time.monotonic()
    assert patient.embeddings.create(model=MODEL, input="eventually").data
    assert time.monotonic() - started >= 0.4
    assert emu.stats()["outage_refused"] >= 1


def test_batches_progress_during_an_outage_and_webhooks_wait(
    client: openai.OpenAI, emu: OpenAIEmulator
) -> None:
    receiver = Receiver()
    receiver.thread.start()
    try:
        emu.update_config(webhook_url=receiver.url)
        batch = submit(client, [request_line(f"r{i}", f"text {i}") for i in range(4)])
        emu.update_config(outage_seconds=1.5)
        record = emu.batches.get(batch.id) if emu.batches else None
        assert record is not None
        _wait(lambda: record.status == "completed", what="the batch to complete")
        assert emu.stats()["outage_remaining_seconds"] > 0  # it finished during the outage
        time.sleep(0.2)
        assert receiver.got() == [] and emu.webhook_deliveries == []  # held, not sent
        _refused(lambda: client.batches.retrieve(batch.id))

        log = emu.wait_for_webhooks(1, timeout=5)
        assert emu.stats()["outage_remaining_seconds"] == 0
        assert log[0]["outcome"] == "delivered" and log[0]["batch_id"] == batch.id
        assert json.loads(receiver.got()[0][1])["type"] == "batch.completed"
        assert client.batches.retrieve(batch.id).status == "completed"
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


# --- random errors --------------------------------------------------------------------------


def test_error_rate_429_of_one_fails_every_call_and_bills_nothing(
    client: openai.OpenAI, emu: OpenAIEmulator
) -> None:
    emu.update_config(error_rate_429=1.0, retry_after_seconds=2)
    for i in range(5):
        with pytest.raises(openai.RateLimitError) as info:
            client.embeddings.create(model=MODEL, input=f"call {i}")
        assert info.value.status_code == 429 and info.value.code == "rate_limit_exceeded"
        assert info.value.response.headers["retry-after"] == "2"
    stats = emu.stats()
    assert (stats["billed_tokens"], stats["sync_requests"], stats["rate_limited"]) == (0, 0, 5)

    emu.update_config(error_rate_429=0.0, error_rate_5xx=1.0)
    with pytest.raises(openai.InternalServerError) as server:
        client.embeddings.create(model=MODEL, input="x")
    assert server.value.status_code == 500
    assert server.value.body["type"] == "server_error"  # type: ignore[index]
    assert emu.stats()["server_errors"] == 1 and emu.stats()["billed_tokens"] == 0


def _outcomes(client: openai.OpenAI, n: int) -> tuple[list[str], int]:
    """Outcome of ``n`` calls ('ok', '429' or '500') and the tokens the successes used."""
    outcomes: list[str] = []
    tokens = 0
    for i in range(n):
        try:
            resp = client.embeddings.create(model=MODEL, input=f"request number {i}")
        except openai.RateLimitError:
            outcomes.append("429")
        except openai.InternalServerError:
            outcomes.append("500")
        else:
            outcomes.append("ok")
            tokens += resp.usage.total_tokens
    return outcomes, tokens


def test_error_rates_are_seeded_and_failures_bill_nothing(
    client: openai.OpenAI, emu: OpenAIEmulator
) -> None:
    emu.update_config(error_rate_429=0.5, error_seed=42)
    first, tokens = _outcomes(client, 40)
    assert 10 <= first.count("429") <= 30 and "500" not in first
    stats = emu.stats()
    assert stats["sync_billed_tokens"] == stats["billed_sync_tokens"] == tokens
    assert stats["sync_requests"] == first.count("ok")
    assert stats["rate_limited"] == first.count("429")

    emu.update_config(error_seed=42)  # re-seeding replays the same sequence
    assert _outcomes(client, 40)[0] == first
    emu.update_config(error_rate_429=0.25, error_rate_5xx=0.25, error_seed=7)
    mixed, _ = _outcomes(client, 40)
    assert mixed.count("429") >= 3 and mixed.count("500") >= 3
    with pytest.raises(ValueError):
        emu.update_config(error_rate_429=0.7, error_rate_5xx=0.7)


# --- batch outcome: cancelled ---------------------------------------------------------------


def test_cancelled_outcome(client: openai.OpenAI, emu: OpenAIEmulator) -> None:
    emu.update_config(batch_outcome="cancelled", expire_completed_fraction=0.5)
    lines = [request_line(f"r{i}", f"text number {i}") for i in range(10)]
    done = wait_batch(client, submit(client, lines).id)
    assert done.status == "cancelled"
    assert done.cancelling_at is not None and done.cancelled_at is not None
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (10, 5)
    assert done.request_counts.failed == 0 and done.error_file_id is None
    out = read_lines(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in out) == [f"r{i}" for i in range(5)]
    billed = sum(line["response"]["body"]["usage"]["total_tokens"] for line in out)
    assert done.usage is not None and done.usage.input_tokens == billed
    stats = emu.stats()
    assert stats["billed_batch_tokens"] == stats["batch_billed_tokens"] == billed
    assert stats["batch_requests"] == 5 and stats["billed_sync_tokens"] == 0


# --- file expiry ----------------------------------------------------------------------------


def test_expires_after_sets_expires_at(client: openai.OpenAI) -> None:
    content = jsonl([request_line("a", "x")])
    hour = client.files.create(
        file=("in.jsonl", io.BytesIO(content)),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert hour.expires_at == hour.created_at + 3600
    assert client.files.retrieve(hour.id).expires_at == hour.expires_at
    default = client.files.create(file=("d.jsonl", io.BytesIO(content)), purpose="batch")
    assert default.expires_at == default.created_at + 30 * 24 * 3600

    with pytest.raises(openai.BadRequestError) as short:  # OpenAI: 3600 .. 2592000 s
        client.files.create(
            file=("in.jsonl", content),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": 60},
        )
    assert short.value.code == "integer_out_of_range"
    other_anchor: Any = {"anchor": "last_used", "seconds": 3600}
    with pytest.raises(openai.BadRequestError) as anchor:
        client.files.create(file=("in.jsonl", content), purpose="batch", expires_after=other_anchor)
    assert anchor.value.code == "invalid_value"

    batch = client.batches.create(
        input_file_id=hour.id,
        endpoint="/v1/embeddings",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 86400},
    )
    done = wait_batch(client, batch.id)
    assert done.output_file_id is not None
    output = client.files.retrieve(done.output_file_id)
    assert output.purpose == "batch_output"
    assert output.expires_at == output.created_at + 86400
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=hour.id,
            endpoint="/v1/embeddings",
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 10},
        )


def test_expired_files_are_gone(client: openai.OpenAI, emu: OpenAIEmulator) -> None:
    emu.update_config(file_expiry_min_seconds=1)
    content = jsonl([request_line(f"r{i}", f"text {i}") for i in range(3)])
    short = client.files.create(
        file=("short.jsonl", io.BytesIO(content)),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 1},
    )
    assert short.expires_at == short.created_at + 1
    # An N-second file lives N - 1 to N s (created_at is whole seconds): 2 s for the batch's
    # input and output, so that they are still there when read.
    source = client.files.create(
        file=("in.jsonl", io.BytesIO(content)),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 2},
    )
    batch = client.batches.create(
        input_file_id=source.id,
        endpoint="/v1/embeddings",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 2},
    )
    done = wait_batch(client, batch.id)
    assert done.status == "completed" and done.output_file_id is not None
    output = client.files.retrieve(done.output_file_id)
    assert output.expires_at == output.created_at + 2

    last = max(f.expires_at or 0 for f in (short, source, output))
    _wait(lambda: time.time() >= last + 0.05, timeout=5, what="the files to expire")
    for file_id in (short.id, source.id, output.id):
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(file_id)
        with pytest.raises(openai.NotFoundError):
            client.files.content(file_id)
    assert client.files.list().data == []
    assert emu.stats()["files"] == 0  # input and output cleaned up


# --- revoked key ----------------------------------------------------------------------------


def test_revoked_key_gets_openai_401_and_bills_nothing(
    client: openai.OpenAI, admin: openai.OpenAI, emu: OpenAIEmulator
) -> None:
    client.embeddings.create(model=MODEL, input="still valid")
    before = _stats(admin)
    _set(admin, api_key="sk-rotated-key-5678")  # revokes API_KEY
    with pytest.raises(openai.AuthenticationError) as info:
        client.embeddings.create(model=MODEL, input="revoked")
    assert info.value.status_code == 401
    body = info.value.body
    assert isinstance(body, dict)
    assert body["code"] == "invalid_api_key" and body["type"] == "invalid_request_error"
    assert body["message"].startswith("Incorrect API key provided: ")
    assert API_KEY not in body["message"]  # shown masked
    after = _stats(admin)
    assert after["billed_tokens"] == before["billed_tokens"]
    assert after["sync_requests"] == before["sync_requests"]
    assert after["unauthorized"] == before["unauthorized"] + 1
    rotated = client.with_options(api_key="sk-rotated-key-5678")
    assert rotated.embeddings.create(model=MODEL, input="new key").data


# --- CLI switches ---------------------------------------------------------------------------


def test_cli_emulator_switches_reach_the_config() -> None:
    switches = _parse_emulator(
        [
            "outage_seconds=30",
            "error_rate_429=0.2",
            "error_rate_5xx=0.1",
            "error_seed=7",
            "batch_outcome=cancelled",
            "file_expiry_min_seconds=1",
            "api_key=revoked",
        ]
    )
    config = EmulatorConfig.model_validate(switches)
    assert (config.outage_seconds, config.error_rate_429, config.error_rate_5xx) == (30, 0.2, 0.1)
    assert (config.error_seed, config.batch_outcome) == (7, "cancelled")
    assert (config.file_expiry_min_seconds, config.api_key) == (1, "revoked")
    # `local openai-server --emulator ...` passes them on as --config JSON.
    args = build_parser().parse_args(["--config", json.dumps(switches), "--outage-seconds", "5"])
    assert config_from_args(args).outage_seconds == 5
    with OpenAIEmulator(config_from_args(args)) as started:
        assert 4 < started.stats()["outage_remaining_seconds"] <= 5


# --- Lambda adapter: injected failures ------------------------------------------------------

APP = """
import json


def handler(event, context):
    with open(event["log"], "a") as fh:
        fh.write(json.dumps(event["n"]) + "\\n")
    return {"n": event["n"]}
"""


@pytest.fixture
def adapter(tmp_path: Path) -> LambdaAdapter:
    (tmp_path / "app.py").write_text(APP)
    adapter = LambdaAdapter()
    adapter.register(
        LocalFunction(
            logical_id="AppendFunction",
            name="stack-AppendFunction",
            arn="arn:aws:lambda:us-east-1:123456789012:function:stack-AppendFunction",
            code_dir=tmp_path,
            handler="app.handler",
            timeout_seconds=30,
            memory_mb=128,
        )
    )
    return adapter


def _call(adapter: LambdaAdapter, log: Path, n: int) -> tuple[dict[str, Any], bool]:
    body, errored = adapter.invoke("stack-AppendFunction", json.dumps({"log": str(log), "n": n}))
    payload: dict[str, Any] = json.loads(body)
    return payload, errored


def _lines(log: Path) -> list[int]:
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def test_crash_after_runs_the_handler_then_fails(adapter: LambdaAdapter, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    adapter.crash_after("AppendFunction", times=2)
    for n in (1, 2):
        payload, errored = _call(adapter, log, n)
        assert errored
        assert payload["errorType"] == "Lambda.Unknown"
        assert payload["errorMessage"] == "The function ran, then the invocation failed (injected)"
    assert _lines(log) == [1, 2]  # the work was done both times
    assert _call(adapter, log, 3) == ({"n": 3}, False)
    assert [(i[0], i[2]) for i in adapter.invocations] == [
        ("AppendFunction", True),
        ("AppendFunction", True),
        ("AppendFunction", False),
    ]


def test_fail_before_does_not_run_the_handler(adapter: LambdaAdapter, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    adapter.fail_before("AppendFunction")
    payload, errored = _call(adapter, log, 1)
    assert errored and payload["errorType"] == "Lambda.Unknown"
    assert _lines(log) == []  # no side effect
    assert _call(adapter, log, 2) == ({"n": 2}, False)
    assert _lines(log) == [2]
    assert [i[2] for i in adapter.invocations] == [True, False]
    with pytest.raises(ValueError):
        adapter.fail_before("AppendFunction", times=-1)


def test_injected_failures_count_down_across_threads(
    adapter: LambdaAdapter, tmp_path: Path
) -> None:
    log = tmp_path / "calls.log"
    adapter.crash_after("AppendFunction", times=5)
    results: list[bool] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        _, errored = _call(adapter, log, n)
        with lock:
            results.append(errored)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [False] * 7 + [True] * 5
    assert sorted(_lines(log)) == list(range(12))


def test_hold_still_gates_invocations(adapter: LambdaAdapter, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    gate = adapter.hold("AppendFunction")
    adapter.crash_after("AppendFunction")
    done: list[tuple[dict[str, Any], bool]] = []
    worker = threading.Thread(target=lambda: done.append(_call(adapter, log, 1)))
    worker.start()
    time.sleep(0.2)
    assert done == [] and _lines(log) == []
    gate.set()
    worker.join(10)
    assert done[0][1] is True and _lines(log) == [1]
