"""text-embedding-3-large at 3,072 dimensions, end to end on the local stack.

pgvector's HNSW index on ``vector`` stops at 2,000 dimensions; the project indexes wider
vectors as ``halfvec`` (pgvector >= 0.7). A document embedded with the large model must
land in ``chunks`` with 3,072 dimensions, get an HNSW index on ``halfvec(3072)``, and be
found by a search through the same SDK path a user takes (``local search``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import psycopg
import pytest

from batch_embedder.db.connection import connect
from batch_embedder.db.index import index_state
from batch_embedder.db.schema import index_name, pgvector_version
from batch_embedder.settings import Settings
from tests.utils import fresh, local_stack

pytestmark = pytest.mark.integration

MODEL = "text-embedding-3-large"
DIMS = 3072
KEY = "large/errors.rst.txt"


@pytest.fixture(scope="module")
def large_stack(home: Path, database_url: str) -> Iterator[Any]:
    """The local stack configured for text-embedding-3-large at 3,072 dimensions."""
    with local_stack(
        home, "lambda-large.log", EmbeddingModel=MODEL, EmbeddingDimensions=str(DIMS)
    ) as s:
        yield s


@pytest.fixture(scope="module")
def ingested(large_stack: Any) -> Any:
    """One document, unique text (the cache cannot serve it), embedded with the large model."""
    [result] = large_stack.ingest([(KEY, fresh("errors.rst.txt", "halfvec"))], timeout=600)
    return result


def test_the_document_is_embedded_at_3072_dimensions(
    ingested: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    assert ingested.status == "SUCCEEDED", (ingested.failed_state, ingested.cause)
    assert [d["status"] for d in ingested.output["results"]] == ["embedded"]
    stored = db.execute(
        "SELECT model, dimensions, vector_dims(embedding), count(*) FROM batch_embedder.chunks "
        "WHERE source_key = %s GROUP BY 1, 2, 3",
        (KEY,),
    ).fetchall()
    assert stored == [(MODEL, DIMS, DIMS, ingested.document(KEY)["chunks"])]
    assert ingested.document(KEY)["chunks"] > 1


def test_an_hnsw_index_on_halfvec_3072_exists_and_is_valid(
    ingested: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    assert ingested.status == "SUCCEEDED"
    assert pgvector_version(db) >= (0, 7), "halfvec needs pgvector >= 0.7"
    row = db.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'batch_embedder' "
        "AND tablename = 'chunks' AND indexname = %s",
        (index_name(MODEL, DIMS),),
    ).fetchone()
    assert row is not None, "no index for text-embedding-3-large/3072"
    definition = str(row[0])
    assert "USING hnsw" in definition
    assert "halfvec(3072)" in definition and "halfvec_cosine_ops" in definition
    assert f"'{MODEL}'" in definition
    state = index_state(db, MODEL, DIMS)
    assert state.exists and state.valid


def test_search_finds_the_document_through_the_index(
    ingested: Any, large_stack: Any, database_url: str, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    from batch_embedder_local.search import nearest
    from batch_embedder_local.stack import LOCAL_API_KEY

    assert ingested.status == "SUCCEEDED"
    chunk_index, text = db.execute(
        "SELECT chunk_index, text FROM batch_embedder.chunks WHERE source_key = %s "
        "AND model = %s ORDER BY chunk_index LIMIT 1 OFFSET 1",
        (KEY, MODEL),
    ).fetchone() or (None, "")
    client = openai.OpenAI(api_key=LOCAL_API_KEY, base_url=large_stack.emulator.base_url)
    settings = Settings(embedding_model=MODEL, embedding_dimensions=DIMS)
    hits = nearest(database_url, client, text, settings, k=3)
    assert hits, "no hit"
    assert (hits[0].key, hits[0].chunk_index) == (KEY, chunk_index)
    assert hits[0].score == pytest.approx(1.0, abs=1e-2)  # halfvec rounds a little
    # The same search filtered by key prefix (an iterative index scan on pgvector >= 0.8).
    assert nearest(database_url, client, text, settings, k=3, prefix="large/")[0].key == KEY
    assert nearest(database_url, client, text, settings, k=3, prefix="elsewhere/") == []
    # The planner can answer the search from the halfvec index.
    with connect(database_url) as conn, conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = conn.execute(
            "EXPLAIN SELECT id FROM batch_embedder.chunks WHERE model = %s AND dimensions = %s "
            "ORDER BY embedding::halfvec(3072) <=> %s::halfvec(3072) LIMIT 3",
            (MODEL, DIMS, "[" + ",".join(["0.01"] * DIMS) + "]"),
        ).fetchall()
    assert index_name(MODEL, DIMS) in "\n".join(str(r[0]) for r in plan)
