"""The emulator posing as Azure OpenAI, driven through ``openai.AzureOpenAI``.

``AzureOpenAI(azure_endpoint=..., api_version=...)`` sends embeddings to
``/openai/deployments/{deployment}/embeddings?api-version=...`` and files / batches to
``/openai/files`` / ``/openai/batches``, with the key in an ``api-key`` header (or an
Entra ID token as ``Authorization: Bearer``), as the SDK's ``AzureOpenAI`` builds them
(https://github.com/openai/openai-python/blob/main/src/openai/lib/azure.py).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import httpx2
import numpy as np
import openai
import pytest

from batch_embedder_local.openai_server import EmulatorConfig, OpenAIEmulator

API_KEY = "azure-test-key-0001"
API_VERSION = "2024-10-21"
DEPLOYMENT = "embed-small-prod"
TEXTS = ["Ships relied on the lighthouse beam.", "The board approved a share buyback."]


@pytest.fixture(scope="module")
def emu() -> Iterator[OpenAIEmulator]:
    config = EmulatorConfig(
        api_key=API_KEY,
        azure_deployments={DEPLOYMENT: "text-embedding-3-small"},
        batch_validating_seconds=0.02,
        batch_in_progress_seconds=0.02,
        batch_finalizing_seconds=0.02,
        shuffle_output=False,
    )
    with OpenAIEmulator(config) as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def _fresh(emu: OpenAIEmulator) -> Iterator[None]:
    yield
    emu.reset()


def _azure(
    emu: OpenAIEmulator,
    api_key: str = API_KEY,
    api_version: str = API_VERSION,
    azure_deployment: str | None = None,
) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=emu.url,
        api_key=api_key,
        api_version=api_version,
        azure_deployment=azure_deployment,
        max_retries=0,
    )


def test_embeddings_through_a_deployment_match_the_openai_model(emu: OpenAIEmulator) -> None:
    azure = _azure(emu)
    emb = azure.embeddings.create(model=DEPLOYMENT, input=TEXTS)
    assert emb.model == "text-embedding-3-small"
    plain = openai.OpenAI(api_key=API_KEY, base_url=emu.base_url, max_retries=0)
    ref = plain.embeddings.create(model="text-embedding-3-small", input=TEXTS)
    assert [d.embedding for d in emb.data] == [d.embedding for d in ref.data]
    assert emb.usage.total_tokens == ref.usage.total_tokens > 0
    # A deployment named after its model needs no mapping; dimensions pass through.
    short = azure.embeddings.create(model="text-embedding-3-large", input="x", dimensions=256)
    assert short.model == "text-embedding-3-large" and len(short.data[0].embedding) == 256
    # With azure_deployment the client puts the deployment in its base URL.
    fixed = _azure(emu, azure_deployment=DEPLOYMENT)
    assert fixed.embeddings.create(model="ignored", input="x").model == "text-embedding-3-small"
    assert fixed.files.list().data == []
    assert emu.stats()["sync_requests"] == 4


def test_file_upload_and_batch_create_retrieve(emu: OpenAIEmulator) -> None:
    azure = _azure(emu)
    lines = [
        {
            "custom_id": f"doc-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": DEPLOYMENT, "input": text},
        }
        for i, text in enumerate(TEXTS)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = azure.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(data)
    batch = azure.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert batch.status == "validating"
    deadline = time.monotonic() + 10
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch.status
        time.sleep(0.02)
        batch = azure.batches.retrieve(batch.id)
    assert batch.status == "completed", batch.errors
    assert batch.request_counts is not None and batch.request_counts.completed == 2
    assert batch.output_file_id is not None
    out = [json.loads(x) for x in azure.files.content(batch.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == ["doc-0", "doc-1"]
    assert {o["response"]["body"]["model"] for o in out} == {"text-embedding-3-small"}
    plain = openai.OpenAI(api_key=API_KEY, base_url=emu.base_url, max_retries=0)
    ref = plain.embeddings.create(model="text-embedding-3-small", input=TEXTS)
    got = np.array([o["response"]["body"]["data"][0]["embedding"] for o in out], np.float32)
    assert np.array_equal(got, np.array([d.embedding for d in ref.data], np.float32))
    assert [b.id for b in azure.batches.list()] == [batch.id]
    assert emu.stats()["batch_requests"] == 2


def test_entra_id_bearer_token_is_accepted(emu: OpenAIEmulator) -> None:
    azure = openai.AzureOpenAI(
        azure_endpoint=emu.url,
        api_version=API_VERSION,
        azure_ad_token_provider=lambda: API_KEY,
        max_retries=0,
    )
    assert azure.embeddings.create(model=DEPLOYMENT, input="x").data


def test_azure_errors(emu: OpenAIEmulator) -> None:
    with pytest.raises(openai.AuthenticationError) as denied:
        _azure(emu, api_key="wrong-key").embeddings.create(model=DEPLOYMENT, input="x")
    assert denied.value.status_code == 401
    assert denied.value.body == {
        "code": "401",
        "message": "Access denied due to invalid subscription key or wrong API endpoint. Make "
        "sure to provide a valid key for an active subscription and use a correct regional "
        "API endpoint for your resource.",
    }
    with pytest.raises(openai.BadRequestError) as version:
        _azure(emu, api_version="1999-01-01").embeddings.create(model=DEPLOYMENT, input="x")
    assert version.value.body == {"code": "BadRequest", "message": "API version not supported"}
    with pytest.raises(openai.NotFoundError) as deployment:
        _azure(emu).embeddings.create(model="no-such-deployment", input="x")
    assert isinstance(deployment.value.body, dict)
    assert deployment.value.body["code"] == "DeploymentNotFound"
    # No api-version at all: Azure's 404 "Resource not found".
    missing = httpx2.post(
        f"{emu.url}/openai/deployments/{DEPLOYMENT}/embeddings",
        headers={"api-key": API_KEY},
        json={"input": "x"},
    )
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "404", "message": "Resource not found"}}
    assert emu.stats()["unauthorized"] == 1 and emu.stats()["sync_requests"] == 0
