"""Batch webhooks of the local OpenAI emulator, checked with the official SDK's verifier.

A tiny stdlib HTTP server on 127.0.0.1 receives the deliveries; ``client.webhooks.unwrap``
(Standard Webhooks signature, 300 s tolerance) must accept the genuine ones and reject
forged ones. Batches are created through the SDK like in ``test_openai_server.py``.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import ValidationError

from batch_embedder_local.openai_server import EmulatorConfig, OpenAIEmulator
from batch_embedder_local.openai_server.webhooks import DEFAULT_WEBHOOK_SECRET
from tests.emulator import API_KEY, MODEL, Receiver
from tests.utils import wait_for_batch

SECRET = "whsec_" + base64.b64encode(b"emulator-webhook-test-key-32byte").decode()
# The emulator below (this module's own), put back after each test; `client` comes from
# tests/local/conftest.py.
pytestmark = pytest.mark.usefixtures("reset_emulator")


@pytest.fixture(scope="module")
def emu() -> Iterator[OpenAIEmulator]:
    config = EmulatorConfig(
        api_key=API_KEY,
        batch_validating_seconds=0.02,
        batch_in_progress_seconds=0.02,
        batch_finalizing_seconds=0.02,
        batch_cancel_seconds=0.02,
    )
    with OpenAIEmulator(config) as emulator:
        yield emulator


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    rec.thread.start()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


def _submit(client: openai.OpenAI, n: int = 2) -> Any:
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": MODEL, "input": f"text number {i}"},
        }
        for i in range(n)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )


def test_completed_batch_sends_one_verified_event(
    emu: OpenAIEmulator, client: openai.OpenAI, receiver: Receiver
) -> None:
    batch = _submit(client)
    # Set after the batch started: the sender reads the current config when the batch ends.
    emu.update_config(webhook_url=receiver.url, webhook_secret=SECRET)
    log = emu.wait_for_webhooks(1)
    assert wait_for_batch(client, batch.id, timeout=5.0, interval=0.01).status == "completed"
    got = receiver.got()
    assert len(got) == 1
    headers, body = got[0]
    event = client.webhooks.unwrap(body, headers, secret=SECRET)
    assert event.type == "batch.completed"
    assert event.data.id == batch.id
    assert event.object == "event"
    assert headers["webhook-id"] == event.id and event.id.startswith("evt_")
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["content-type"] == "application/json"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body, headers, secret=DEFAULT_WEBHOOK_SECRET)
    assert log == [
        {
            "event_id": event.id,
            "type": "batch.completed",
            "batch_id": batch.id,
            "copy": 1,
            "attempt": 1,
            "outcome": "delivered",
            "status_code": 200,
            "error": None,
            "forged": False,
            "url": receiver.url,
            "sent_at": log[0]["sent_at"],
        }
    ]
    admin = openai.OpenAI(api_key="unused", base_url=emu.url, max_retries=0)
    served = admin.get("/_emulator/webhooks", cast_to=object)
    assert served == {"object": "list", "data": log}


def test_duplicates_share_the_webhook_id(
    emu: OpenAIEmulator, client: openai.OpenAI, receiver: Receiver
) -> None:
    emu.update_config(webhook_url=receiver.url, webhook_secret=SECRET, webhook_duplicates=3)
    batch = _submit(client)
    log = emu.wait_for_webhooks(3)
    got = receiver.got()
    assert len(got) == 3
    events = [client.webhooks.unwrap(body, headers, secret=SECRET) for headers, body in got]
    assert {e.id for e in events} == {h["webhook-id"] for h, _ in got} == {log[0]["event_id"]}
    assert all(e.data.id == batch.id for e in events)
    assert [entry["copy"] for entry in log] == [1, 2, 3]


def test_forged_signature_is_rejected(
    emu: OpenAIEmulator, client: openai.OpenAI, receiver: Receiver
) -> None:
    emu.update_config(webhook_url=receiver.url, webhook_secret=SECRET, webhook_forge=True)
    _submit(client)
    log = emu.wait_for_webhooks(1)
    assert log[0]["forged"] is True
    [(headers, body)] = receiver.got()
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body, headers, secret=SECRET)


def test_dropped_events_are_logged_not_sent(
    emu: OpenAIEmulator, client: openai.OpenAI, receiver: Receiver
) -> None:
    emu.update_config(webhook_url=receiver.url, webhook_secret=SECRET, webhook_drop=True)
    batch = _submit(client)
    [entry] = emu.wait_for_webhooks(1)
    assert entry["outcome"] == "dropped" and entry["batch_id"] == batch.id
    assert entry["attempt"] == 0
    assert receiver.got() == []


def test_no_url_no_webhook(emu: OpenAIEmulator, client: openai.OpenAI) -> None:
    batch = _submit(client)
    wait_for_batch(client, batch.id, timeout=5.0, interval=0.01)
    time.sleep(0.05)
    assert emu.webhook_deliveries == []


def test_errors_are_retried_until_2xx(
    emu: OpenAIEmulator, client: openai.OpenAI, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503]
    emu.update_config(webhook_url=receiver.url, webhook_secret=SECRET)
    _submit(client)
    log = emu.wait_for_webhooks(3)
    assert [(e["attempt"], e["outcome"], e["status_code"]) for e in log] == [
        (1, "http_error", 500),
        (2, "http_error", 503),
        (3, "delivered", 200),
    ]
    got = receiver.got()
    assert len(got) == 3 and len({h["webhook-id"] for h, _ in got}) == 1
    for headers, body in got:
        client.webhooks.unwrap(body, headers, secret=SECRET)


def test_attempts_are_bounded_on_connection_errors(
    emu: OpenAIEmulator, client: openai.OpenAI
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    emu.update_config(webhook_url=f"http://127.0.0.1:{port}/hook", webhook_max_attempts=2)
    _submit(client)
    log = emu.wait_for_webhooks(2)
    time.sleep(0.2)  # longer than the next backoff: no third attempt
    log = emu.webhook_deliveries
    assert [(e["attempt"], e["outcome"]) for e in log] == [
        (1, "connection_error"),
        (2, "connection_error"),
    ]


@pytest.mark.parametrize("status", ["failed", "expired", "cancelled"])
def test_terminal_status_event_types(
    emu: OpenAIEmulator, client: openai.OpenAI, receiver: Receiver, status: str
) -> None:
    emu.update_config(webhook_url=receiver.url, webhook_secret=SECRET)
    if status == "cancelled":
        emu.update_config(batch_validating_seconds=5.0)  # the cancel always lands in time
    else:
        emu.update_config(batch_outcome=status)
    batch = _submit(client)
    if status == "cancelled":
        client.batches.cancel(batch.id)
    emu.wait_for_webhooks(1)
    assert wait_for_batch(client, batch.id, timeout=5.0, interval=0.01).status == status
    [(headers, body)] = receiver.got()
    event = client.webhooks.unwrap(body, headers, secret=SECRET)
    assert event.type == f"batch.{status}"
    assert event.data.id == batch.id


def test_delay_and_reorder_send_newest_first(
    emu: OpenAIEmulator, client: openai.OpenAI, receiver: Receiver
) -> None:
    emu.update_config(
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_reorder=True,
        webhook_delay_seconds=0.6,
        batch_validating_seconds=5.0,  # each batch ends by its cancel
    )
    t0 = time.monotonic()
    first = _submit(client)
    client.batches.cancel(first.id)
    wait_for_batch(client, first.id, timeout=5.0, interval=0.01)
    second = _submit(client)
    client.batches.cancel(second.id)
    wait_for_batch(client, second.id, timeout=5.0, interval=0.01)
    assert receiver.got() == []  # still held
    log = emu.wait_for_webhooks(2)
    assert time.monotonic() - t0 >= 0.6
    assert [e["batch_id"] for e in log] == [second.id, first.id]
    assert [json.loads(body)["data"]["id"] for _, body in receiver.got()] == [second.id, first.id]


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        EmulatorConfig(webhook_url="ftp://127.0.0.1/hook")
    with pytest.raises(ValidationError):
        EmulatorConfig(webhook_secret="whsec_not base64!")
    with pytest.raises(ValidationError):
        EmulatorConfig(webhook_duplicates=0)
    assert EmulatorConfig(webhook_secret=SECRET).webhook_secret == SECRET
