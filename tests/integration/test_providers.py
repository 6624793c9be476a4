"""Providers behind one interface, end to end on the local stack.

The stack runs with ``EmbeddingProvider=azure`` and a deployment name that differs from
the model: its emulator serves Azure OpenAI's URL shapes on the same address
(``/openai/deployments/{deployment}/embeddings?api-version=...``, ``/openai/files``,
``/openai/batches``, ``api-key`` header), and the handlers reach it through
``openai.AzureOpenAI``. The emulator maps the deployment to the model and maps the
*model name* to a model it does not serve, so a request that named the model instead of
the deployment would fail. A ``compatible`` run (an OpenAI-compatible server without
``/v1/batches``) goes all-synchronous.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import psycopg
import pytest

from batch_embedder.aws import budget
from batch_embedder.openai.pricing import AZURE_PRICES
from tests.utils import fresh, ledger, local_stack, usd

pytestmark = pytest.mark.integration

MODEL = "text-embedding-3-small"
DEPLOYMENT = "embed-small-prod"
API_VERSION = "2024-10-21"
API_KEY = "sk-local-emulator"  # the stack's key, in its OpenAIApiKeySecret
PRICE = AZURE_PRICES[MODEL]


@pytest.fixture(scope="module")
def azure_stack(home: Path, database_url: str) -> Iterator[Any]:
    """The local stack deployed with EmbeddingProvider=azure against its emulator."""
    with local_stack(
        home,
        "lambda-providers.log",
        EmbeddingProvider="azure",
        AzureOpenAIDeployment=DEPLOYMENT,
        AzureOpenAIApiVersion=API_VERSION,
        emulator_config={
            # The deployment serves the model; the model's own name serves nothing.
            "azure_deployments": {DEPLOYMENT: MODEL, MODEL: "text-embedding-retired"},
            "batch_validating_seconds": 0.05,
            "batch_in_progress_seconds": 0.05,
            "batch_finalizing_seconds": 0.05,
        },
    ) as stack:
        # The emulator's port is known once it runs: the endpoint a user would set as
        # AzureOpenAIEndpoint (the stack restores the environment when it stops).
        os.environ["AZURE_OPENAI_ENDPOINT"] = stack.emulator.url
        yield stack


@pytest.fixture()
def azure(azure_stack: Any) -> openai.AzureOpenAI:
    """What a user would inspect the resource with."""
    return openai.AzureOpenAI(
        azure_endpoint=azure_stack.emulator.url,
        api_key=API_KEY,
        api_version=API_VERSION,
        max_retries=0,
    )


def committed(model: str = MODEL) -> int:
    counter = (
        budget.budget_store(os.environ["JOBS_TABLE"], os.environ["USAGE_TABLE"])
        .counter(budget.utc_day(), f"model:{model}")
        .model_dump()
    )
    return int(counter["committed_tokens"])


def stored(db: psycopg.Connection[tuple[Any, ...]], key: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT text, model, dimensions, vector_dims(embedding), embedding::text "
        "FROM batch_embedder.chunks WHERE source_key = %s ORDER BY chunk_index",
        (key,),
    ).fetchall()


def test_azure_synchronous_path_sends_the_deployment_and_bills_once(
    azure_stack: Any, azure: openai.AzureOpenAI, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    emulator = azure_stack.emulator
    # The emulator refuses the model's name as a deployment: only the deployment works.
    with pytest.raises(openai.NotFoundError) as refused:
        azure.embeddings.create(model=MODEL, input="x")
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["code"] == "DeploymentNotFound"
    before, committed_before = emulator.stats(), committed()

    key = f"azure-{uuid.uuid4().hex[:8]}/whatnow.rst.txt"
    [result] = azure_stack.ingest([(key, fresh("whatnow.rst.txt", key))], timeout=300)
    assert result.status == "SUCCEEDED", (result.failed_state, result.cause)
    after = emulator.stats()
    out = result.output
    # Azure's Batch API takes no embeddings models: everything went synchronous.
    assert out["api"] == "sync" and out["batches"] == 0
    assert "EmbedSync" in result.states and "BuildAndUploadJsonl" not in result.states
    assert after["batches_created"] == before["batches_created"]
    assert after["sync_requests"] > before["sync_requests"]

    rows = stored(db, key)
    assert len(rows) == result.document(key)["chunks"] == out["vectors_written"] > 0
    # The content key is the model (and dimensions), never the deployment name.
    assert {(r[1], r[2], r[3]) for r in rows} == {(MODEL, 1536, 1536)}
    # The stored vector is what the deployment returns for that text.
    probe = azure.embeddings.create(model=DEPLOYMENT, input=rows[0][0])
    assert probe.model == MODEL
    stored_vector = np.array(rows[0][4].strip("[]").split(","), dtype=np.float32)
    assert np.allclose(stored_vector, np.array(probe.data[0].embedding, np.float32), atol=1e-6)

    # Tokens: billed by the emulator == committed to the budget == the ledger's.
    billed = after["sync_billed_tokens"] - before["sync_billed_tokens"]
    record = ledger(out)
    assert billed == int(record.tokens) == committed() - committed_before > 0
    assert record.api == "sync"
    assert float(record.price_per_million_usd) == float(PRICE.standard)
    assert float(record.cost_usd) == out["cost_usd"] == usd(billed, PRICE.standard)

    # `batch-embedder search --stack-name` asks as the functions do: the deployment.
    from batch_embedder_local import ops

    hits = ops.search_stack(ops.resources_from_local(azure_stack), rows[0][0], k=1, prefix=key)
    assert [h.key for h in hits] == [key]


def test_azure_batch_path_names_the_deployment_in_every_line(
    azure_stack: Any,
    azure: openai.AzureOpenAI,
    db: psycopg.Connection[tuple[Any, ...]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_BATCH", "true")  # a Global-Batch deployment
    emulator = azure_stack.emulator
    before, committed_before = emulator.stats(), committed()

    key = f"azure-batch-{uuid.uuid4().hex[:8]}/controlflow.rst.txt"
    [result] = azure_stack.ingest([(key, fresh("controlflow.rst.txt", key))], timeout=300)
    assert result.status == "SUCCEEDED", (result.failed_state, result.cause)
    after = emulator.stats()
    out = result.output
    assert out["api"] == "batch" and out["batches"] == 1
    assert after["batches_created"] == before["batches_created"] + 1

    # What the emulator saw: a batch on Azure's endpoint whose lines name the deployment.
    batch = next(
        b for b in azure.batches.list() if (b.metadata or {}).get("job_id") == out["job_id"]
    )
    assert batch.status == "completed" and batch.endpoint == "/embeddings"
    assert batch.model == DEPLOYMENT

    rows = stored(db, key)
    assert len(rows) == result.document(key)["chunks"] == out["vectors_written"] > 0
    assert {(r[1], r[2], r[3]) for r in rows} == {(MODEL, 1536, 1536)}

    billed = after["batch_billed_tokens"] - before["batch_billed_tokens"]
    record = ledger(out)
    assert billed == out["billed_tokens"] == int(record.tokens) > 0
    assert committed() - committed_before == billed
    assert record.api == "batch"
    assert float(record.cost_usd) == out["cost_usd"] == usd(billed, PRICE.batch)


def test_a_compatible_server_gets_every_document_synchronously(
    azure_stack: Any, db: psycopg.Connection[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same emulator as a plain OpenAI-compatible server at OPENAI_BASE_URL (/v1).
    monkeypatch.setenv("EMBEDDING_PROVIDER", "compatible")
    emulator = azure_stack.emulator
    before, committed_before = emulator.stats(), committed()

    keys = [f"compat-{uuid.uuid4().hex[:8]}/{n}" for n in ("errors.rst.txt", "venv.rst.txt")]
    results = azure_stack.ingest([(k, fresh(k.rsplit("/", 1)[1], k)) for k in keys], timeout=300)
    assert results and all(r.status == "SUCCEEDED" for r in results), [
        (r.failed_state, r.cause) for r in results
    ]
    after = emulator.stats()
    # No batch: not created, not even a file uploaded for one.
    assert after["batches_created"] == before["batches_created"]
    assert after["batch_requests"] == before["batch_requests"]
    billed = after["sync_billed_tokens"] - before["sync_billed_tokens"]
    outs = [r.output for r in results]
    assert all(o["api"] == "sync" and o["batches"] == 0 for o in outs)
    assert all("BuildAndUploadJsonl" not in r.states for r in results)
    for key in keys:
        rows = stored(db, key)
        [result] = [r for r in results if key in r.keys]
        assert len(rows) == result.document(key)["chunks"] > 0
        assert {(r[1], r[3]) for r in rows} == {(MODEL, 1536)}
    tokens = sum(int(ledger(o).tokens) for o in outs)
    assert billed == tokens == committed() - committed_before > 0
    # Your own server: no provider bill (no PRICE_OVERRIDES).
    assert all(o["cost_usd"] == 0 and float(ledger(o).cost_usd) == 0 for o in outs)
