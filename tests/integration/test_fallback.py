"""The local model inside the pipeline: the ``local`` fallback during an outage, and the
``local`` provider.

``FallbackProvider=local``: with the emulator refusing every connection (its outage
switch), an urgent document is embedded by the local model (rows ``local-minilm``, 384
dimensions) and its execution succeeds, while a document that is not urgent waits in
``ProviderDegradedUpload``. Once the emulator answers, the reconciler re-submits the
urgent document (an upload event into the upload queue, picked up by the pipe), the
pipeline re-embeds it with the provider's model and the fallback rows are gone; the
waiting one completes. billed == committed == ledger holds for the provider's model, and
the fallback's tokens are committed and in the ledger under ``local-minilm`` at $0.

``EMBEDDING_PROVIDER=local``: the Lambdas embed with the local model; no request reaches
the emulator and the ledger says $0 for the model's word pieces.

The module has its own stack: ``FallbackProvider=local``, ``ProviderOutageWaitSeconds`` of
1 s and one SDK retry, so that a degraded loop takes seconds.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from batch_embedder.aws import budget, provider_health
from batch_embedder.local_model import is_installed
from batch_embedder.settings import Settings
from batch_embedder_local.search import nearest
from tests.books import MODEL, Books, chunks_of, ledger_tokens, sdk, start
from tests.utils import fresh, local_stack, provider_healthy, until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not is_installed(), reason="the local-model extra is not installed"),
]

LOCAL = "local-minilm"
#: A question about ``samples/errors.rst.txt``.
QUESTION = "How do I handle an exception raised in a try block?"
Db = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture(scope="module")
def stack(home: Path, database_url: str) -> Iterator[Any]:
    """The local stack with the local fallback and short degraded-mode waits."""
    with local_stack(
        home, FallbackProvider="local", ProviderOutageWaitSeconds="1", OpenAIMaxRetries="1"
    ) as s:
        yield s


@pytest.fixture()
def healthy(stack: Any) -> Iterator[Settings]:
    """Settings of the stack's Lambdas; the provider's record is clear before and after."""
    with provider_healthy(stack) as settings:
        yield settings


def committed(model: str) -> int:
    """Tokens committed today on ``model``'s daily counter."""
    store = budget.budget_store(os.environ["JOBS_TABLE"], os.environ["USAGE_TABLE"])
    return store.counter(budget.utc_day(), f"model:{model}").committed_tokens


def rows_by_model(db: Db, key: str) -> list[tuple[str, int, int, int]]:
    """``(model, dimensions, vector length, rows)`` of ``key``'s chunks."""
    rows = db.execute(
        "SELECT model, dimensions, vector_dims(embedding), count(*) FROM batch_embedder.chunks "
        "WHERE source_key = %s GROUP BY 1, 2, 3 ORDER BY 1",
        (key,),
    ).fetchall()
    return [(str(m), int(d), int(v), int(n)) for m, d, v, n in rows]


def purchased(db: Db, owner: str) -> int:
    """Tokens of the content store's purchases of ``owner``."""
    row = db.execute(
        "SELECT coalesce(sum(tokens), 0) FROM batch_embedder.purchases WHERE job_id = %s",
        (owner,),
    ).fetchone()
    return int(row[0]) if row else 0


def fallback_row(db: Db, key: str) -> tuple[Any, ...] | None:
    return db.execute(
        "SELECT model, dimensions, resubmitted_at FROM batch_embedder.fallback_documents "
        "WHERE object_key = %s",
        (key,),
    ).fetchone()


def urgent_and_later(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, str]:
    """A fresh salt, an urgent key (under this test's ``SyncPrefixes``) and a later one."""
    salt = uuid.uuid4().hex[:8]
    monkeypatch.setenv("SYNC_PREFIXES", f"urgent-{salt}/")
    return salt, f"urgent-{salt}/errors.rst.txt", f"later-{salt}/controlflow.rst.txt"


def test_an_urgent_document_is_embedded_by_the_local_fallback_then_by_the_provider(
    stack: Any,
    emulator: Any,
    healthy: Settings,
    db: Db,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    salt, urgent, later = urgent_and_later(monkeypatch)
    books = Books(stack)
    local_before = committed(LOCAL)
    emulator.update_config(outage_seconds=600)  # refused until the test says otherwise
    urgent_arn = start(stack, urgent, fresh("errors.rst.txt", salt))
    later_arn = start(stack, later, fresh("controlflow.rst.txt", salt))

    # The urgent one is embedded by the local model and written: its execution succeeds.
    [first] = stack.wait({urgent_arn: urgent}, timeout=300)
    assert first.status == "SUCCEEDED", (first.failed_state, first.cause)
    assert first.output["billed_tokens"] == 0  # nothing bought from the provider
    assert "EmbedSync" in first.states
    assert "ProviderDegradedSync" not in first.states, first.states
    assert "BuildAndUploadJsonl" not in first.states
    assert rows_by_model(db, urgent) == [(LOCAL, 384, 384, first.output["chunks"])]
    assert fallback_row(db, urgent) is not None
    assert provider_health.current(healthy) is not None  # still degraded
    # Its fallback tokens are counted under the local model, at $0; the provider's
    # reservation committed nothing.
    owner = f"{urgent_arn.rsplit(':', 1)[-1]}#fallback"
    local_tokens = purchased(db, owner)
    assert local_tokens > 0
    assert committed(LOCAL) - local_before == local_tokens == ledger_tokens(owner)
    assert stack.ledger_record(owner).model == LOCAL
    assert float(stack.ledger_record(owner).cost_usd) == 0.0
    assert ledger_tokens(urgent_arn.rsplit(":", 1)[-1]) == 0

    # Search meanwhile: the provider cannot embed the query, the local model can; the
    # urgent document is found in its fallback rows, each hit naming its model.
    hits = nearest(database_url, sdk(stack), QUESTION, healthy, k=3, prefix=f"urgent-{salt}/")
    assert hits and {h.model for h in hits} == {LOCAL}, hits
    assert {h.key for h in hits} == {urgent}

    # The other one waits for the provider, with nothing bought.
    until(lambda: stack.current_state(later_arn) == "ProviderDegradedUpload", timeout=120,
          what="the degraded wait")  # fmt: skip
    assert stack.status(later_arn) == "RUNNING"
    assert chunks_of(db, later) == 0
    assert books.billed() == 0

    # The reconciler leaves the fallback rows alone while the provider does not answer.
    stack.reconcile()
    row = fallback_row(db, urgent)
    assert row is not None and row[2] is None

    # The provider is back: the reconciler re-submits the urgent document; the pipeline
    # re-embeds it with the provider's model and the fallback rows are gone.
    emulator.update_config(outage_seconds=0)
    found = db.execute(
        "SELECT sequencer FROM batch_embedder.objects WHERE object_key = %s", (urgent,)
    ).fetchone()
    assert found is not None
    stack.reconcile()
    resubmitted = {"detail": {"object": {"key": urgent, "sequencer": str(found[0])}}}
    [again] = stack.wait_for_groups([resubmitted], timeout=300)
    assert again.status == "SUCCEEDED", (again.failed_state, again.cause)
    assert rows_by_model(db, urgent) == [(MODEL, 1536, 1536, again.output["chunks"])]
    assert fallback_row(db, urgent) is None
    assert provider_health.current(healthy) is None

    [waited] = stack.wait({later_arn: later}, timeout=300)
    assert waited.status == "SUCCEEDED", (waited.failed_state, waited.cause)
    assert "ProviderDegradedUpload" in waited.states
    assert rows_by_model(db, later) == [(MODEL, 1536, 1536, waited.output["chunks"])]

    # Every provider token paid once: billed == committed == ledger over the three
    # executions, nothing re-paid, nothing left reserved; the fallback's bill unchanged.
    billed = books.check(db, urgent_arn, again.execution_arn, later_arn)
    assert billed == again.output["billed_tokens"] + waited.output["billed_tokens"] > 0
    assert again.output["repaid_tokens"] == waited.output["repaid_tokens"] == 0
    assert committed(LOCAL) - local_before == purchased(db, owner) == local_tokens
    # Nothing is left to re-submit: the next run sends nothing.
    stack.reconcile()
    assert fallback_row(db, urgent) is None
    # Search now finds the provider's rows (the query itself is billed: after the books).
    hits = nearest(database_url, sdk(stack), QUESTION, healthy, k=3, prefix=f"urgent-{salt}/")
    assert hits and {h.model for h in hits} == {MODEL}, hits


def test_in_a_mixed_group_the_urgent_document_is_searchable_while_the_rest_waits(
    stack: Any, emulator: Any, healthy: Settings, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    salt, urgent, later = urgent_and_later(monkeypatch)
    books = Books(stack)
    local_before = committed(LOCAL)
    emulator.update_config(outage_seconds=600)  # refused until the test says otherwise
    events = [
        stack.upload(urgent, fresh("errors.rst.txt", salt), deliver=False),
        stack.upload(later, fresh("controlflow.rst.txt", salt), deliver=False),
    ]
    arn = str(stack.start_execution(events))  # one group: sync+batch
    # EmbedSync writes the urgent document with the local model; the group waits.
    until(lambda: stack.current_state(arn) == "ProviderDegradedUpload", timeout=120,
          what="the degraded wait")  # fmt: skip
    [(model, dims, length, rows)] = rows_by_model(db, urgent)
    assert (model, dims, length) == (LOCAL, 384, 384) and rows > 0
    assert chunks_of(db, later) == 0
    row = fallback_row(db, urgent)
    assert row is not None and row[2] is not None  # its own group re-embeds it
    assert books.billed() == 0

    emulator.update_config(outage_seconds=0)
    [result] = stack.wait({arn: "mixed"}, timeout=300)
    assert result.status == "SUCCEEDED", (result.failed_state, result.cause)
    assert result.states.count("EmbedSync") == 2, result.states  # fallback, then the provider
    assert [m for m, *_ in rows_by_model(db, urgent)] == [MODEL]
    assert [m for m, *_ in rows_by_model(db, later)] == [MODEL]
    assert fallback_row(db, urgent) is None
    billed = books.check(db, arn)
    assert billed == result.output["billed_tokens"] > 0
    assert result.output["repaid_tokens"] == 0
    owner = f"{arn.rsplit(':', 1)[-1]}#fallback"
    assert committed(LOCAL) - local_before == purchased(db, owner) == ledger_tokens(owner) > 0


def test_the_local_provider_embeds_inside_the_lambdas_for_free(
    stack: Any, emulator: Any, healthy: Settings, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    salt = uuid.uuid4().hex[:8]
    monkeypatch.setenv("EMBEDDING_PROVIDER", "local")
    monkeypatch.setenv("EMBEDDING_MODEL", LOCAL)
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "0")
    key = f"local-{salt}/errors.rst.txt"
    requests_before = emulator.stats()["api_requests"]
    local_before = committed(LOCAL)
    [result] = stack.ingest([(key, fresh("errors.rst.txt", salt))], timeout=300)
    assert result.status == "SUCCEEDED", (result.failed_state, result.cause)
    assert result.output["api"] == "sync"
    assert rows_by_model(db, key) == [(LOCAL, 384, 384, result.output["chunks"])]
    job_id = result.execution_arn.rsplit(":", 1)[-1]
    tokens = purchased(db, job_id)
    assert tokens > 0  # the model's word pieces
    assert committed(LOCAL) - local_before == tokens == ledger_tokens(job_id)
    record = stack.ledger_record(job_id)
    assert record.model == LOCAL
    assert float(record.cost_usd) == 0.0
    assert emulator.stats()["api_requests"] == requests_before  # nothing reached it
    assert provider_health.current(healthy) is None
