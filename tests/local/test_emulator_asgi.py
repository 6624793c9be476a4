"""The emulator's ASGI app, called in process (httpx ``ASGITransport``) and over a socket.

The same scenario runs both ways through the official SDK: ``openai.AsyncOpenAI`` on an
``httpx2.AsyncClient`` whose transport calls the Starlette app directly (httpx's ASGI
transport is async only), and ``openai.OpenAI`` against the uvicorn-served socket. Both
must give the same vectors, usage, files, batch lifecycle and OpenAI error wording.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import httpx2
import numpy as np
import openai
import pytest

from batch_embedder.tokenizer import get_encoding
from batch_embedder_local.openai_server import (
    MODELS,
    EmulatorConfig,
    OpenAIEmulator,
    register_model,
)
from tests.emulator import wait_batch

API_KEY = "sk-asgi-test-key-0001"
MODEL = "text-embedding-3-small"
TEXTS = ["The lighthouse keeper lit the lamp.", "Quarterly revenue grew by eight percent."]
CONFIG = EmulatorConfig(
    api_key=API_KEY,
    batch_validating_seconds=0.02,
    batch_in_progress_seconds=0.02,
    batch_finalizing_seconds=0.02,
    shuffle_output=False,
)


def _batch_lines() -> bytes:
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/embeddings"}
        | {"body": {"model": MODEL, "input": text}}
        for i, text in enumerate(TEXTS)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@pytest.fixture
def in_process() -> Iterator[OpenAIEmulator]:
    emu = OpenAIEmulator(CONFIG).open()
    try:
        yield emu
    finally:
        emu.stop()


async def _scenario_async(emu: OpenAIEmulator) -> dict[str, Any]:
    transport = httpx2.ASGITransport(app=emu.asgi_app())
    async with httpx2.AsyncClient(transport=transport) as http:
        client = openai.AsyncOpenAI(
            api_key=API_KEY, base_url="http://emulator/v1", http_client=http, max_retries=0
        )
        emb = await client.embeddings.create(model=MODEL, input=TEXTS)
        raw = await client.embeddings.with_raw_response.create(model=MODEL, input="x")
        upload = await client.files.create(
            file=("in.jsonl", io.BytesIO(_batch_lines())), purpose="batch"
        )
        batch = await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        deadline = time.monotonic() + 10
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            assert time.monotonic() < deadline, batch.status
            await anyio.sleep(0.02)
            batch = await client.batches.retrieve(batch.id)
        assert batch.output_file_id is not None
        output = (await client.files.content(batch.output_file_id)).text
        bad = openai.AsyncOpenAI(
            api_key="sk-wrong-key-9999", base_url="http://emulator/v1", http_client=http
        )
        with pytest.raises(openai.AuthenticationError) as denied:
            await bad.models.list()
        with pytest.raises(openai.NotFoundError) as missing:
            await client.embeddings.create(model="no-such-model", input="x")
        emu.update_config(outage_seconds=30)
        with pytest.raises(openai.APIConnectionError):
            await client.models.list()
        emu.update_config(outage_seconds=0)
        return {
            "vectors": [d.embedding for d in emb.data],
            "usage": emb.usage.total_tokens,
            "headers": raw.headers,
            "batch": batch,
            "output": output,
            "denied": denied.value,
            "missing": missing.value,
        }


def _scenario_socket(emu: OpenAIEmulator) -> dict[str, Any]:
    client = openai.OpenAI(api_key=API_KEY, base_url=emu.base_url, max_retries=0)
    emb = client.embeddings.create(model=MODEL, input=TEXTS)
    raw = client.embeddings.with_raw_response.create(model=MODEL, input="x")
    upload = client.files.create(file=("in.jsonl", io.BytesIO(_batch_lines())), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    batch = wait_batch(client, batch.id)
    assert batch.output_file_id is not None
    output = client.files.content(batch.output_file_id).text
    bad = openai.OpenAI(api_key="sk-wrong-key-9999", base_url=emu.base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        bad.models.list()
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="no-such-model", input="x")
    emu.update_config(outage_seconds=30)
    with pytest.raises(openai.APIConnectionError):
        client.models.list()
    emu.update_config(outage_seconds=0)
    return {
        "vectors": [d.embedding for d in emb.data],
        "usage": emb.usage.total_tokens,
        "headers": raw.headers,
        "batch": batch,
        "output": output,
        "denied": denied.value,
        "missing": missing.value,
    }


def _check(result: dict[str, Any], emu: OpenAIEmulator) -> None:
    enc = get_encoding()
    assert result["usage"] == sum(len(enc.encode_ordinary(t)) for t in TEXTS)
    vectors = np.array(result["vectors"], dtype=np.float32)
    assert vectors.shape == (2, 1536)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    headers = result["headers"]
    assert headers["x-request-id"].startswith("req_")
    assert headers["x-ratelimit-limit-requests"] == "3000"
    assert headers["openai-model"] == MODEL
    batch = result["batch"]
    assert batch.status == "completed"
    assert batch.request_counts.completed == 2 and batch.request_counts.failed == 0
    lines = [json.loads(line) for line in result["output"].splitlines()]
    assert [line["custom_id"] for line in lines] == ["c0", "c1"]
    batch_vectors = [line["response"]["body"]["data"][0]["embedding"] for line in lines]
    assert np.array_equal(np.array(batch_vectors, dtype=np.float32), vectors)
    denied = result["denied"]
    assert denied.status_code == 401
    assert denied.body["code"] == "invalid_api_key"
    assert denied.body["message"] == (
        "Incorrect API key provided: sk-****9999. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    missing = result["missing"]
    assert missing.status_code == 404 and missing.body == {
        "message": "The model `no-such-model` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
    stats = emu.stats()
    assert stats["sync_requests"] == 2 and stats["batch_requests"] == 2
    assert stats["unauthorized"] == 1 and stats["outage_refused"] == 1


def test_in_process_through_the_asgi_transport(in_process: OpenAIEmulator) -> None:
    result = anyio.run(_scenario_async, in_process)
    _check(result, in_process)


def test_over_a_socket_and_same_answers_as_in_process(in_process: OpenAIEmulator) -> None:
    in_proc = anyio.run(_scenario_async, in_process)
    with OpenAIEmulator(CONFIG) as emu:
        over_socket = _scenario_socket(emu)
        _check(over_socket, emu)
    assert over_socket["vectors"] == in_proc["vectors"]
    assert over_socket["usage"] == in_proc["usage"]


def test_unknown_route_and_method_get_openai_invalid_url(in_process: OpenAIEmulator) -> None:
    async def call() -> list[httpx2.Response]:
        transport = httpx2.ASGITransport(app=in_process.asgi_app())
        auth = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx2.AsyncClient(transport=transport, base_url="http://e") as http:
            return [
                await http.get("/v1/nothing-here", headers=auth),
                await http.delete("/v1/batches", headers=auth),
                await http.get("/v1/files/", headers=auth),
            ]

    nothing, wrong_method, trailing = anyio.run(call)
    assert nothing.status_code == 404
    assert nothing.json()["error"]["message"] == "Invalid URL (GET /v1/nothing-here)"
    assert wrong_method.status_code == 404
    assert wrong_method.json()["error"]["message"] == "Invalid URL (DELETE /v1/batches)"
    assert trailing.status_code == 200 and trailing.json()["object"] == "list"


def test_a_registered_backend_serves_its_model(in_process: OpenAIEmulator) -> None:
    """One ``register_model`` line adds a model: its vectors, its token counts, its limits."""

    def embed(texts: Sequence[str], dimensions: int) -> np.ndarray:
        out = np.zeros((len(texts), dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row, len(text) % dimensions] = 1.0
        return out

    def count_tokens(texts: Sequence[str]) -> list[int]:
        return [len(text.split()) for text in texts]

    register_model("toy-words", 8, embed, count_tokens)
    try:

        async def call() -> Any:
            transport = httpx2.ASGITransport(app=in_process.asgi_app())
            async with httpx2.AsyncClient(transport=transport) as http:
                client = openai.AsyncOpenAI(
                    api_key=API_KEY, base_url="http://e/v1", http_client=http, max_retries=0
                )
                models = [m.id async for m in client.models.list()]
                emb = await client.embeddings.create(model="toy-words", input=["a bc", "d e f"])
                with pytest.raises(openai.BadRequestError) as dims:
                    await client.embeddings.create(model="toy-words", input="x", dimensions=4)
                return models, emb, dims.value

        models, emb, dims = anyio.run(call)
    finally:
        MODELS.pop("toy-words", None)
    assert "toy-words" in models
    assert emb.model == "toy-words" and emb.usage.total_tokens == 2 + 3
    assert [int(np.argmax(d.embedding)) for d in emb.data] == [4, 5]
    assert dims.status_code == 400 and dims.body["code"] == "unsupported_parameter"
    assert in_process.stats()["sync_billed_tokens"] == 5
