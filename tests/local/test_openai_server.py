"""The local OpenAI emulator, exercised only through the official ``openai`` SDK (3.54).

Admin routes are reached with the SDK's generic ``client.get`` / ``client.post`` on a
second client whose base URL is the emulator root (they live outside ``/v1``).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openai
import pytest
from openai import Omit

from batch_embedder.tokenizer import get_encoding
from batch_embedder_local.openai_server import OpenAIEmulator, embed_texts
from tests.emulator import (
    API_KEY,
    MODEL,
    decode,
    jsonl,
    read_lines,
    request_line,
    submit,
    wait_batch,
)

DURATION_RE = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?(ms|s))$")

DOC_A = (
    "The lighthouse keeper climbed the spiral staircase every evening to light the great lamp. "
    "Storms rolled in from the northern sea and battered the rocky island for weeks. "
    "Ships passing the reef relied on the beam to find the narrow channel into the harbour. "
    "In winter the keeper rationed oil and read old almanacs by candlelight."
)
DOC_B = (
    "Quarterly revenue grew by eight percent as the company expanded its cloud software "
    "business. Operating margins improved thanks to lower hardware costs and a leaner sales "
    "organisation. The board approved a share buyback and raised the dividend for investors. "
    "Analysts expect subscription income to dominate next year's results."
)


pytestmark = pytest.mark.usefixtures("reset_emulator")


# --- /v1/embeddings -----------------------------------------------------------------------


def test_embeddings_float_base64_and_dimensions(client: openai.OpenAI) -> None:
    texts = ["hello world", "a second, longer input about lighthouses"]
    default = client.embeddings.create(model=MODEL, input=texts)  # SDK asks base64, decodes
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    raw_b64 = client.embeddings.create(model=MODEL, input=texts, encoding_format="base64")
    expected = embed_texts(texts, 1536, MODEL)
    assert default.model == MODEL and default.object == "list"
    for i in range(2):
        assert default.data[i].index == i
        got_default = np.asarray(default.data[i].embedding, dtype=np.float32)
        got_float = np.asarray(floats.data[i].embedding, dtype=np.float32)
        got_b64 = decode(raw_b64.data[i].embedding)  # type: ignore[arg-type]
        assert got_default.shape == (1536,)
        # 9 significant digits round-trip float32: all three are the same bits.
        assert np.array_equal(got_default, expected[i])
        assert np.array_equal(got_float, expected[i])
        assert np.array_equal(got_b64, expected[i])
        assert abs(float(np.linalg.norm(got_float)) - 1.0) < 1e-5

    short = client.embeddings.create(model=MODEL, input=texts[0], dimensions=256)
    vec = np.asarray(short.data[0].embedding)
    assert vec.shape == (256,)
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5
    # Matryoshka-like: the prefix of the native vector, renormalised.
    prefix = expected[0][:256] / np.linalg.norm(expected[0][:256])
    assert np.allclose(vec, prefix, atol=1e-6)

    large = client.embeddings.create(model="text-embedding-3-large", input="x")
    assert len(large.data[0].embedding) == 3072


def test_embeddings_are_deterministic(client: openai.OpenAI) -> None:
    a = client.embeddings.create(model=MODEL, input="the same text").data[0].embedding
    b = client.embeddings.create(model=MODEL, input="the same text").data[0].embedding
    assert a == b
    other_model = client.embeddings.create(model="text-embedding-ada-002", input="the same text")
    cos = float(np.dot(a, other_model.data[0].embedding))
    assert abs(cos) < 0.5, "each model must give its own vectors"


def test_similarity_a_sentence_is_nearest_its_document(client: openai.OpenAI) -> None:
    sentence = "Ships passing the reef relied on the beam to find the narrow channel."
    resp = client.embeddings.create(model=MODEL, input=[DOC_A, DOC_B, sentence])
    vecs = {d.index: np.asarray(d.embedding) for d in resp.data}
    sim_a = float(vecs[2] @ vecs[0])
    sim_b = float(vecs[2] @ vecs[1])
    assert sim_a > sim_b + 0.2, (sim_a, sim_b)


def test_similarity_among_many_chunks() -> None:
    rng = np.random.default_rng(7)
    vocab = [f"w{i}" for i in range(5000)]
    chunks = [" ".join(rng.choice(vocab, size=300)) for _ in range(2000)]
    matrix = embed_texts(chunks, 1536, MODEL)
    for target in (3, 777, 1999):
        words = chunks[target].split()
        sentence = " ".join(words[100:115])
        query = embed_texts([sentence], 1536, MODEL)[0]
        assert int(np.argmax(matrix @ query)) == target


def test_token_array_inputs(client: openai.OpenAI) -> None:
    enc = get_encoding()
    tokens = enc.encode_ordinary("hello token world")
    by_tokens = client.embeddings.create(model=MODEL, input=[tokens], encoding_format="float")
    by_text = client.embeddings.create(
        model=MODEL, input="hello token world", encoding_format="float"
    )
    assert by_tokens.data[0].embedding == by_text.data[0].embedding
    assert by_tokens.usage.prompt_tokens == len(tokens)
    single = client.embeddings.create(model=MODEL, input=tokens)
    assert single.usage.prompt_tokens == len(tokens)


def test_usage_equals_tiktoken_count(client: openai.OpenAI) -> None:
    enc = get_encoding()
    texts = [DOC_A, DOC_B, "Short one.", "emoji ✨ and ünïcödé <|endoftext|> text"]
    resp = client.embeddings.create(model=MODEL, input=texts)
    expected = sum(len(enc.encode_ordinary(t)) for t in texts)
    assert resp.usage.prompt_tokens == expected
    assert resp.usage.total_tokens == expected


def test_request_limits(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input=["x"] * 2049)
    assert len(client.embeddings.create(model=MODEL, input=["x"] * 2048).data) == 2048

    too_long = "hello" + " hello" * 8192  # 8,193 tokens
    assert len(get_encoding().encode_ordinary(too_long)) == 8193
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input=too_long)
    assert "maximum context length is 8192" in str(info.value)
    ok = client.embeddings.create(model=MODEL, input="hello" + " hello" * 8191)
    assert ok.usage.prompt_tokens == 8192

    chunk = "hello" + " hello" * 7599  # 7,600 tokens; 40 of them = 304,000 > 300,000
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input=[chunk] * 40)
    assert info.value.code == "max_tokens_per_request"
    assert "Requested 304000 tokens, max 300000 tokens per request" in str(info.value)

    for bad in ("", ["ok", ""], []):
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model=MODEL, input=bad)
    for dims in (0, 1537):
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model=MODEL, input="x", dimensions=dims)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=256)
    with pytest.raises(openai.NotFoundError) as nf:
        client.embeddings.create(model="text-embedding-4-huge", input="x")
    assert nf.value.code == "model_not_found"
    assert nf.value.body == {
        "message": "The model `text-embedding-4-huge` does not exist or you do not have access "
        "to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }


def test_auth(client: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as missing:
        client.embeddings.create(model=MODEL, input="x", extra_headers={"Authorization": Omit()})
    assert missing.value.status_code == 401
    with pytest.raises(openai.AuthenticationError) as wrong:
        client.with_options(api_key="sk-wrong-key-0000").embeddings.create(model=MODEL, input="x")
    assert wrong.value.code == "invalid_api_key"


def test_ratelimit_headers(client: openai.OpenAI, emu: OpenAIEmulator) -> None:
    first = client.with_raw_response.embeddings.create(model=MODEL, input="count me")
    second = client.with_raw_response.embeddings.create(model=MODEL, input="count me")
    h1, h2 = first.headers, second.headers
    for name in ("requests", "tokens"):
        assert h1[f"x-ratelimit-limit-{name}"] == str(3000 if name == "requests" else 1_000_000)
        assert DURATION_RE.match(h2[f"x-ratelimit-reset-{name}"]), h2[f"x-ratelimit-reset-{name}"]
    assert (
        int(h2["x-ratelimit-remaining-requests"]) == int(h1["x-ratelimit-remaining-requests"]) - 1
    )
    assert int(h2["x-ratelimit-remaining-tokens"]) < int(h1["x-ratelimit-remaining-tokens"])
    assert h2["x-ratelimit-reset-requests"] == "40ms"  # 2 of 3,000 per minute used
    assert h1["x-request-id"].startswith("req_") and h1["x-request-id"] != h2["x-request-id"]
    assert first.parse().data[0].index == 0

    emu.update_config(remaining_override={"requests": 7, "tokens": 123})
    lowered = client.with_raw_response.embeddings.create(model=MODEL, input="x").headers
    assert lowered["x-ratelimit-remaining-requests"] == "7"
    assert lowered["x-ratelimit-remaining-tokens"] == "123"


def test_rate_limits_are_enforced(client: openai.OpenAI, emu: OpenAIEmulator) -> None:
    emu.update_config(rpm_limit=2)
    client.embeddings.create(model=MODEL, input="one")
    client.embeddings.create(model=MODEL, input="two")
    with pytest.raises(openai.RateLimitError) as rpm:
        client.embeddings.create(model=MODEL, input="three")
    assert rpm.value.code == "rate_limit_exceeded"
    assert rpm.value.body["type"] == "requests"  # type: ignore[index]
    assert float(rpm.value.response.headers["retry-after"]) > 50
    assert int(rpm.value.response.headers["retry-after-ms"]) > 50_000

    emu.reset()
    emu.update_config(tpm_limit=50)
    forty = "hello" + " hello" * 39
    client.embeddings.create(model=MODEL, input=forty)
    with pytest.raises(openai.RateLimitError) as tpm:
        client.embeddings.create(model=MODEL, input=forty)
    message = str(tpm.value)
    assert "on tokens per min (TPM): Limit 50, Used 40, Requested 40." in message
    assert re.search(r"Please try again in \d+(\.\d+)?s\.", message)
    assert tpm.value.body["type"] == "tokens"  # type: ignore[index]
    assert emu.stats()["rate_limited"] == 1  # the reset above cleared the RPM refusal


def test_injected_429_is_retried_by_the_sdk(emu: OpenAIEmulator, client: openai.OpenAI) -> None:
    emu.update_config(fail_next_requests_429=1, retry_after_seconds=0.2)
    retrying = openai.OpenAI(api_key=API_KEY, base_url=emu.base_url, max_retries=1)
    started = time.monotonic()
    resp = retrying.embeddings.create(model=MODEL, input="retry me")
    assert time.monotonic() - started >= 0.2  # waited retry-after-ms, not the 0.5 s backoff
    assert len(resp.data) == 1
    assert emu.stats()["rate_limited"] == 1

    emu.update_config(fail_next_requests_429=1, retry_after_seconds=3)
    with pytest.raises(openai.RateLimitError) as info:
        client.embeddings.create(model=MODEL, input="no retries")
    headers = info.value.response.headers
    assert headers["retry-after"] == "3" and headers["retry-after-ms"] == "3000"
    assert info.value.code == "rate_limit_exceeded"
    assert emu.config.fail_next_requests_429 == 0
    client.embeddings.create(model=MODEL, input="fine again")


def test_injected_5xx(emu: OpenAIEmulator, client: openai.OpenAI) -> None:
    emu.update_config(fail_next_requests_5xx=2)
    with pytest.raises(openai.InternalServerError) as info:
        client.embeddings.create(model=MODEL, input="x")
    assert info.value.status_code == 500
    assert info.value.body["type"] == "server_error"  # type: ignore[index]
    retrying = openai.OpenAI(api_key=API_KEY, base_url=emu.base_url, max_retries=1)
    assert retrying.embeddings.create(model=MODEL, input="x").data


def test_insufficient_quota(emu: OpenAIEmulator, client: openai.OpenAI) -> None:
    emu.update_config(insufficient_quota=True)
    with pytest.raises(openai.RateLimitError) as info:
        client.embeddings.create(model=MODEL, input="x")
    assert info.value.code == "insufficient_quota"
    assert info.value.body["type"] == "insufficient_quota"  # type: ignore[index]


def test_admin_routes(admin: openai.OpenAI, client: openai.OpenAI, emu: OpenAIEmulator) -> None:
    client.embeddings.create(model=MODEL, input=["a b", "c"])
    stats = admin.get("/_emulator/stats", cast_to=object)
    assert stats == {
        "embedding_requests": 1,
        "embedding_inputs": 2,
        "billed_tokens": 3,
        "batch_billed_tokens": 0,
        "sync_billed_tokens": 3,
        "billed_sync_tokens": 3,
        "billed_batch_tokens": 0,
        "sync_requests": 1,
        "batch_requests": 0,
        "api_requests": 1,
        "batches_created": 0,
        "files": 0,
        "rate_limited": 0,
        "server_errors": 0,
        "unauthorized": 0,
        "outage_refused": 0,
        "outage_remaining_seconds": 0,
    }
    new = admin.post("/_emulator/config", body={"rpm_limit": 5}, cast_to=object)
    assert new["rpm_limit"] == 5  # type: ignore[index]
    assert emu.config.rpm_limit == 5
    with pytest.raises(openai.BadRequestError):
        admin.post("/_emulator/config", body={"no_such_field": 1}, cast_to=object)
    admin.post("/_emulator/reset", cast_to=object)
    assert admin.get("/_emulator/config", cast_to=object)["rpm_limit"] == 3000  # type: ignore[index]
    assert emu.stats()["embedding_requests"] == 0


def test_models(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"} <= ids
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nothing")


# --- /v1/files ------------------------------------------------------------------------------


def test_files_lifecycle(client: openai.OpenAI, emu: OpenAIEmulator) -> None:
    content = jsonl([request_line(f"r{i}", f"text {i}") for i in range(100)])
    created = client.files.create(file=("data.jsonl", io.BytesIO(content)), purpose="batch")
    assert created.id.startswith("file-")
    assert (created.bytes, created.filename, created.purpose) == (
        len(content),
        "data.jsonl",
        "batch",
    )
    assert created.status == "processed"
    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).content == content
    with client.with_streaming_response.files.content(created.id) as streamed:
        assert b"".join(streamed.iter_bytes()) == content
    assert [f.id for f in client.files.list(purpose="batch")] == [created.id]
    assert emu.stats()["files"] == 1
    deleted = client.files.delete(created.id)
    assert deleted.deleted is True and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)


def test_files_from_disk_and_limits(
    client: openai.OpenAI, emu: OpenAIEmulator, tmp_path: Path
) -> None:
    path = tmp_path / "batch.jsonl"
    path.write_bytes(jsonl([request_line("a", "x")]) * 1)
    with path.open("rb") as fh:
        created = client.files.create(file=fh, purpose="batch")
    assert created.filename == "batch.jsonl" and created.bytes == path.stat().st_size
    with pytest.raises(openai.BadRequestError) as fmt:
        client.files.create(file=("notes.txt", b"hello"), purpose="batch")
    assert "Must be .jsonl" in str(fmt.value)
    emu.update_config(max_batch_file_bytes=100)
    with pytest.raises(openai.BadRequestError) as big:
        client.files.create(file=("big.jsonl", b"x" * 101), purpose="batch")
    assert big.value.code == "file_too_large"
    assert client.files.create(file=("ok.jsonl", b"x" * 100), purpose="batch").bytes == 100


# --- /v1/batches ----------------------------------------------------------------------------


def test_full_batch(client: openai.OpenAI, emu: OpenAIEmulator) -> None:
    enc = get_encoding()
    lines = []
    inputs: dict[str, list[str]] = {}
    for i in range(30):
        texts = [f"request {i} input {j}: " + DOC_A.split(". ")[j % 4] for j in range(1 + i % 3)]
        inputs[f"job-1:{i}"] = texts
        fmt = {"encoding_format": "float"} if i % 2 else {"encoding_format": "base64"}
        lines.append(request_line(f"job-1:{i}", texts, **fmt))
    batch = submit(client, lines, metadata={"job": "job-1", "part": "0"})
    assert batch.status == "validating" and batch.id.startswith("batch_")
    assert batch.metadata == {"job": "job-1", "part": "0"}
    assert batch.expires_at is not None and batch.expires_at - batch.created_at == 24 * 3600

    seen: list[str] = []
    done = wait_batch(client, batch.id, seen)
    assert done.status == "completed"
    assert seen[-3:] == ["in_progress", "finalizing", "completed"], seen
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (30, 30)
    assert done.request_counts.failed == 0
    assert done.error_file_id is None and done.errors is None
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.model == MODEL

    out = read_lines(client, done.output_file_id)
    order = [line["custom_id"] for line in out]
    assert sorted(order) == sorted(inputs) and order != list(inputs), "shuffled, all present"
    total_tokens = 0
    for line in out:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"].startswith("req_")
        body = response["body"]
        texts = inputs[line["custom_id"]]
        expected = embed_texts(texts, 1536, MODEL)
        assert [d["index"] for d in body["data"]] == list(range(len(texts)))
        for d in body["data"]:
            emb = d["embedding"]
            vec = decode(emb) if isinstance(emb, str) else np.asarray(emb, dtype=np.float32)
            assert np.array_equal(vec, expected[d["index"]])
        tokens = sum(len(enc.encode_ordinary(t)) for t in texts)
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
        total_tokens += tokens
    assert done.usage is not None and done.usage.input_tokens == total_tokens
    stats = emu.stats()
    assert stats["batch_billed_tokens"] == total_tokens and stats["batches_created"] == 1
    output_file = client.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output"


def test_invalid_input_file_fails_with_line_errors(client: openai.OpenAI) -> None:
    good = json.dumps(request_line("a", "fine"))
    raw = "\n".join(
        [
            good,
            "{not json",
            json.dumps(request_line("a", "duplicate id")),
            json.dumps({**request_line("c", "x"), "url": "/v1/chat/completions"}),
            json.dumps(
                request_line("d", "x") | {"body": {"model": "text-embedding-3-large", "input": "x"}}
            ),
            json.dumps({"method": "POST", "url": "/v1/embeddings", "body": {"model": MODEL}}),
            json.dumps(request_line("e", ["x"] * 2049)),
        ]
    )
    uploaded = client.files.create(file=("bad.jsonl", raw.encode()), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    done = wait_batch(client, batch.id)
    assert done.status == "failed" and done.failed_at is not None
    assert done.output_file_id is None and done.error_file_id is None
    assert done.errors is not None and done.errors.data is not None
    found = {(e.line, e.code) for e in done.errors.data}
    assert found == {
        (2, "invalid_json_line"),
        (3, "duplicate_custom_id"),
        (4, "url_mismatch"),
        (5, "model_mismatch"),
        (6, "missing_required_parameter"),
        (7, "too_many_inputs"),
    }


def test_batch_limits_and_create_validation(client: openai.OpenAI, emu: OpenAIEmulator) -> None:
    emu.update_config(max_batch_requests=3, max_batch_inputs=5)
    many = wait_batch(client, submit(client, [request_line(f"r{i}", "x") for i in range(4)]).id)
    assert many.status == "failed"
    assert many.errors is not None and many.errors.data is not None
    assert many.errors.data[0].code == "too_many_tasks"
    inputs = wait_batch(
        client, submit(client, [request_line(f"r{i}", ["x"] * 3) for i in range(2)]).id
    )
    assert inputs.status == "failed"
    assert inputs.errors is not None and inputs.errors.data is not None
    assert "6 embedding inputs" in inputs.errors.data[0].message

    uploaded = client.files.create(
        file=("in.jsonl", jsonl([request_line("a", "x")])), purpose="batch"
    )
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/embeddings",
            completion_window="1h",  # type: ignore[arg-type]
        )
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/embeddings",
            completion_window="24h",
            metadata={f"k{i}": "v" for i in range(17)},
        )
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/embeddings",
            completion_window="24h",
            metadata={"k": "v" * 513},
        )
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-missing", endpoint="/v1/embeddings", completion_window="24h"
        )
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")


def test_emulated_failure(client: openai.OpenAI, emu: OpenAIEmulator) -> None:
    emu.update_config(batch_outcome="failed")
    done = wait_batch(client, submit(client, [request_line("a", "x")]).id)
    assert done.status == "failed"
    assert done.errors is not None and done.errors.data is not None
    assert done.errors.data[0].code == "emulated_failure"


def test_enqueued_token_limit(client: openai.OpenAI, emu: OpenAIEmulator) -> None:
    emu.update_config(batch_enqueued_token_limit=10)
    done = wait_batch(client, submit(client, [request_line("a", "hello" + " hello" * 10)]).id)
    assert done.status == "failed"
    assert done.errors is not None and done.errors.data is not None
    assert done.errors.data[0].code == "token_limit_exceeded"
    assert "Limit: 10 enqueued tokens" in done.errors.data[0].message


def test_unknown_body_argument(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input="x", extra_body={"temperature": 0})
    assert "Unrecognized request argument supplied: temperature" in str(info.value)


def test_reset_forgets_everything(client: openai.OpenAI, emu: OpenAIEmulator) -> None:
    emu.update_config(batch_validating_seconds=5, rpm_limit=10)
    batch = submit(client, [request_line("a", "x")])
    emu.reset()
    assert emu.config.rpm_limit == 3000 and emu.config.batch_validating_seconds == 0.05
    assert emu.stats()["files"] == 0 and emu.stats()["batches_created"] == 0
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve(batch.id)
    assert client.files.list().data == []


def test_expired_batch(client: openai.OpenAI, emu: OpenAIEmulator) -> None:
    emu.update_config(batch_outcome="expired", expire_completed_fraction=0.4)
    lines = [request_line(f"r{i}", f"text number {i}") for i in range(10)]
    done = wait_batch(client, submit(client, lines).id)
    assert done.status == "expired" and done.expired_at is not None
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (4, 6)
    out = read_lines(client, done.output_file_id)
    err = read_lines(client, done.error_file_id)
    assert sorted(line["custom_id"] for line in out) == [f"r{i}" for i in range(4)]
    assert sorted(line["custom_id"] for line in err) == sorted(f"r{i}" for i in range(4, 10))
    for line in err:
        assert line["response"] is None and line["error"]["code"] == "batch_expired"
    billed = sum(line["response"]["body"]["usage"]["total_tokens"] for line in out)
    assert done.usage is not None and done.usage.input_tokens == billed
    assert emu.stats()["batch_billed_tokens"] == billed


def test_failed_lines_go_to_the_error_file(client: openai.OpenAI, emu: OpenAIEmulator) -> None:
    emu.update_config(fail_custom_id_pattern=r"^bad-")
    lines = [request_line(f"good-{i}", "fine text") for i in range(3)]
    lines += [request_line(f"bad-{i}", "doomed text") for i in range(2)]
    lines.append(request_line("empty-input", ["ok", ""]))
    done = wait_batch(client, submit(client, lines).id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 3)
    err = {line["custom_id"]: line for line in read_lines(client, done.error_file_id)}
    assert set(err) == {"bad-0", "bad-1", "empty-input"}
    assert err["bad-0"]["response"]["status_code"] == 500
    assert err["bad-0"]["response"]["body"]["error"]["type"] == "server_error"
    assert err["empty-input"]["response"]["status_code"] == 400
    assert len(read_lines(client, done.output_file_id)) == 3


def test_cancel(client: openai.OpenAI, emu: OpenAIEmulator) -> None:
    emu.update_config(batch_in_progress_seconds=5)
    batch = submit(client, [request_line(f"r{i}", f"t {i}") for i in range(5)])
    deadline = time.monotonic() + 5
    while client.batches.retrieve(batch.id).status != "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done = wait_batch(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    # The work finished before the cancel: it is in the output file.
    assert done.request_counts is not None and done.request_counts.completed == 5
    assert len(read_lines(client, done.output_file_id)) == 5
    emu.update_config(batch_in_progress_seconds=0.05)
    with pytest.raises(openai.BadRequestError):
        finished = wait_batch(client, submit(client, [request_line("x", "y")]).id)
        client.batches.cancel(finished.id)

    emu.update_config(batch_validating_seconds=5)
    early = submit(client, [request_line("r", "t")])
    client.batches.cancel(early.id)
    gone = wait_batch(client, early.id)
    assert gone.status == "cancelled" and gone.output_file_id is None


def test_list_batches(client: openai.OpenAI, emu: OpenAIEmulator) -> None:
    emu.update_config(batch_validating_seconds=5)
    ids = [submit(client, [request_line("r", f"t{i}")]).id for i in range(3)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == [ids[2], ids[1]]
    assert page.has_more is True
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # auto-paging
    rest = client.batches.list(limit=2, after=ids[1])
    assert [b.id for b in rest.data] == [ids[0]] and rest.has_more is False


# --- CLI ------------------------------------------------------------------------------------


def test_cli_prints_listening_line(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batch_embedder_local.openai_server",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path),
            "--batch-seconds",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:(\d+)/v1)", line)
        assert match, line
        cli_client = openai.OpenAI(api_key="any", base_url=match.group(1), max_retries=0)
        assert len(cli_client.embeddings.create(model=MODEL, input="x").data) == 1
        assert cli_client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch").bytes == 3
        assert any((tmp_path / "files").iterdir())
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
