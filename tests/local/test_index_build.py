"""The HNSW index around loads (db/index.py), on the real embedded Postgres.

A large load goes around the index and rebuilds it; a small one inserts into it; a build
that died is redone; loads in flight together get one build, by the last one out, and a
large load takes over a build in progress; filtered searches return ``k`` rows even when the
filter is selective.
Each test writes its own model name, so they share the database without seeing each other.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest

from batch_embedder.db.connection import connect
from batch_embedder.db.index import REBUILD_MIN_ROWS, ensure_index, index_state, should_bypass
from batch_embedder.db.schema import index_name, pgvector_version
from batch_embedder.db.search import search
from batch_embedder.db.vectors import ChunkWriter
from batch_embedder.records import ChunkRow

DIMS = 16

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture()
def conn(database_url: str) -> Iterator[Conn]:
    with connect(database_url) as c:
        yield c


@pytest.fixture()
def model(conn: Conn) -> Iterator[str]:
    """A model name of this test alone; its rows and index are removed after it."""
    name = f"test-index-{uuid.uuid4().hex[:8]}"
    yield name
    conn.execute("DELETE FROM batch_embedder.chunks WHERE model = %s", (name,))
    conn.execute(
        psycopg.sql.SQL("DROP INDEX IF EXISTS batch_embedder.{}").format(
            psycopg.sql.Identifier(index_name(name, DIMS))
        )
    )


def load(conn: Conn, model: str, n: int, *, doc: str, seed: int) -> ChunkWriter:
    """Write ``n`` distinct chunks (documents of 100 chunks named ``doc/<i>``) and commit."""
    writer, stage_and_merge = writer_for(conn, model, n, doc=doc, seed=seed)
    try:
        stage_and_merge()
    except BaseException as exc:
        writer.__exit__(type(exc), exc, exc.__traceback__)
        raise
    writer.__exit__(None, None, None)
    return writer


def index_oid(conn: Conn, model: str) -> int | None:
    row = conn.execute(
        "SELECT to_regclass(%s)::oid", (f"batch_embedder.{index_name(model, DIMS)}",)
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def test_the_first_write_builds_the_index(conn: Conn, model: str) -> None:
    assert not index_state(conn, model, DIMS).exists
    writer = load(conn, model, 50, doc="first", seed=1)
    state = index_state(conn, model, DIMS)
    assert state.exists and state.valid
    assert not writer.rebuilt  # there was no index to go around


def test_a_large_load_goes_around_the_index_and_rebuilds_it(conn: Conn, model: str) -> None:
    load(conn, model, 100, doc="seed", seed=1)
    before = index_oid(conn, model)
    n = REBUILD_MIN_ROWS + 500
    writer = load(conn, model, n, doc="bulk", seed=2)
    assert writer.rebuilt
    state = index_state(conn, model, DIMS)
    assert state.valid
    assert state.rows == n + 100  # the new build holds every row of the model
    assert index_oid(conn, model) != before


def test_a_small_load_inserts_into_the_index(conn: Conn, model: str) -> None:
    load(conn, model, REBUILD_MIN_ROWS + 100, doc="base", seed=3)
    before = index_oid(conn, model)
    writer = load(conn, model, 200, doc="more", seed=4)
    assert not writer.rebuilt
    assert index_oid(conn, model) == before
    assert index_state(conn, model, DIMS).valid


def test_the_share_decides(conn: Conn, model: str) -> None:
    base = 5 * REBUILD_MIN_ROWS
    load(conn, model, base, doc="base", seed=5)
    assert not should_bypass(conn, model, DIMS, REBUILD_MIN_ROWS)  # 20% of base
    assert should_bypass(conn, model, DIMS, REBUILD_MIN_ROWS + 1)
    assert not should_bypass(conn, model, DIMS, REBUILD_MIN_ROWS - 1)  # too few to matter


def test_a_build_that_died_is_redone(conn: Conn, model: str, database_url: str) -> None:
    load(conn, model, 50, doc="base", seed=6)
    conn.execute(
        psycopg.sql.SQL("DROP INDEX batch_embedder.{}").format(
            psycopg.sql.Identifier(index_name(model, DIMS))
        )
    )
    # A concurrent build waits for open writers after creating its (invalid) catalog entry:
    # cancelled there, it leaves what a killed build leaves.
    with (
        psycopg.connect(database_url) as writer,
        psycopg.connect(database_url, autocommit=True) as other,
    ):
        writer.execute("LOCK TABLE batch_embedder.chunks IN ROW EXCLUSIVE MODE")
        other.execute("SET statement_timeout = '1s'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            other.execute(
                psycopg.sql.SQL(
                    "CREATE INDEX CONCURRENTLY {} ON batch_embedder.chunks USING hnsw "
                    "((embedding::vector(16)) vector_cosine_ops) WHERE model = {}"
                ).format(
                    psycopg.sql.Identifier(index_name(model, DIMS)), psycopg.sql.Literal(model)
                )
            )
        writer.rollback()
    dead = index_state(conn, model, DIMS)
    assert dead.exists and not dead.valid
    assert ensure_index(conn, model, DIMS)
    assert index_state(conn, model, DIMS).valid


def test_a_selective_prefix_still_returns_k_rows(conn: Conn, model: str) -> None:
    if pgvector_version(conn) < (0, 8):
        pytest.skip("iterative index scans need pgvector >= 0.8")
    load(conn, model, 3000, doc="many", seed=7)
    load(conn, model, 8, doc="rare", seed=8)  # 8 rows among 3,008
    query = np.random.default_rng(9).standard_normal(DIMS).astype(np.float32)
    with conn.transaction():  # through the HNSW index
        conn.execute("SET LOCAL enable_seqscan = off")
        hits = search(conn, query, model=model, dimensions=DIMS, k=5, prefix="rare/")
    with conn.transaction():  # an exact scan
        conn.execute("SET LOCAL enable_indexscan = off")
        exact = search(conn, query, model=model, dimensions=DIMS, k=5, prefix="rare/")
    assert len(exact) == 5
    assert [(h.key, h.chunk_index) for h in hits] == [(h.key, h.chunk_index) for h in exact]


def writer_for(conn: Conn, model: str, n: int, *, doc: str, seed: int) -> tuple[ChunkWriter, Any]:
    """A writer of ``n`` chunks, entered but not merged: call ``finish`` to merge and commit."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIMS), dtype=np.float32)
    texts = [f"{doc} chunk {i} seed {seed}" for i in range(n)]
    shas = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    keys = [f"{doc}/{i // 100}" for i in range(n)]
    writer = ChunkWriter(
        conn, bucket="b", lock_keys=sorted(set(keys)), job_id=f"job-{doc}", model=model,
        dimensions=DIMS,
    )  # fmt: skip
    writer.__enter__()

    def stage_and_merge() -> None:
        writer.copy_chunks(
            ChunkRow(seq=i, source_key=keys[i], chunk_index=i % 100, text=texts[i],
                     token_count=3, sha256=shas[i], char_start=0, char_end=len(texts[i]))
            for i in range(n)
        )  # fmt: skip
        writer.copy_vectors(zip(shas, vectors, strict=True))
        written, _, _ = writer.merge()
        assert written == n

    return writer, stage_and_merge


def test_one_build_for_loads_in_flight_together(conn: Conn, model: str, database_url: str) -> None:
    """Two loads of one model overlap: the first out builds nothing, the last builds once."""
    with connect(database_url) as other:
        late, merge_late = writer_for(other, model, 300, doc="late", seed=10)
        merge_late()  # written without an index (there is none): a load in flight
        load(conn, model, 200, doc="early", seed=11)  # commits while the other is open
        assert not index_state(conn, model, DIMS).exists  # left to the load in flight
        # Meanwhile searches scan exactly and see the committed rows.
        query = np.random.default_rng(12).standard_normal(DIMS).astype(np.float32)
        assert len(search(conn, query, model=model, dimensions=DIMS, k=5)) == 5
        late.__exit__(None, None, None)  # the last load out builds, over every row
    state = index_state(conn, model, DIMS)
    assert state.exists and state.valid and state.rows == 500


def test_a_large_load_takes_over_a_build_in_progress(
    conn: Conn, model: str, database_url: str
) -> None:
    """An earlier group's concurrent build is cancelled by a larger load, which builds once."""
    load(conn, model, 100, doc="base", seed=13)
    conn.execute(
        psycopg.sql.SQL("DROP INDEX batch_embedder.{}").format(
            psycopg.sql.Identifier(index_name(model, DIMS))
        )
    )
    with (
        connect(database_url) as big_conn,
        psycopg.connect(database_url, autocommit=True) as builder_conn,
    ):
        big, merge_big = writer_for(big_conn, model, REBUILD_MIN_ROWS + 200, doc="big", seed=14)
        # The big load's transaction has written to the table: a concurrent build started
        # now waits for it after creating its (invalid) catalog entry.
        big_conn.execute("LOCK TABLE batch_embedder.chunks IN ROW EXCLUSIVE MODE")
        outcome: list[object] = []
        build = threading.Thread(
            target=lambda: outcome.append(ensure_index(builder_conn, model, DIMS))
        )
        build.start()
        deadline = time.monotonic() + 30
        while not building(conn, model):
            assert time.monotonic() < deadline, "the concurrent build did not start"
            time.sleep(0.05)
        merge_big()  # goes around the invalid index: cancels its build and drops it
        assert big.rebuilt
        build.join(timeout=30)
        assert outcome == [True]  # the cancelled builder returned quietly
        big.__exit__(None, None, None)
    state = index_state(conn, model, DIMS)
    assert state.exists and state.valid and state.rows == REBUILD_MIN_ROWS + 300


def building(conn: Conn, model: str) -> bool:
    """Whether a CREATE INDEX of the model's index is running."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_progress_create_index WHERE index_relid = to_regclass(%s)",
        (f"batch_embedder.{index_name(model, DIMS)}",),
    ).fetchone()
    return bool(row and row[0])
