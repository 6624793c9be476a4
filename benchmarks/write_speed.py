"""Benchmark of the vector write path against a bare COPY plus a one-off index build.

Prints figures, never asserts them. For ``--rows`` rows (default 20,000) of unit vectors
(seeded random, 1,536 dimensions; ``--dims 1536 3072`` adds a ``halfvec(3072)`` run) with
~2 KB of text each, on one Postgres (the embedded one, or ``--database-url``):

1. ``bare_copy_s``: a binary COPY of the rows (text, sha256, vector) into an unindexed
   table, and ``bare_copy_rows_s``;
2. ``create_index_s``: a one-off ``CREATE INDEX ... USING hnsw`` (cosine, pgvector's
   defaults ``m = 16``, ``ef_construction = 64``) over that table, with the same
   ``maintenance_work_mem`` the project's build asks for (``db/index.py``) and the
   server's parallel maintenance workers;
3. ``writer_s``: the project's ``ChunkWriter`` (stage, merge, commit and the index made
   valid again) loading the same rows into ``batch_embedder.chunks`` with the model's
   HNSW index in place before and after, and ``writer_rows_s``;
4. ``ratio``: the issue's figure, writer rows/s over rows/(COPY seconds + CREATE INDEX
   seconds) = ``(bare_copy_s + create_index_s) / writer_s`` (goal >= 0.5);
5. ``insert_rows_s``: rows/s of a small load (``--small-rows``, default 1,000) into that
   now-filled index, which inserts into the graph (the path of incremental loads).

Usage: ``python benchmarks/write_speed.py [--rows 20000] [--dims 1536 3072] [--json]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from common import bare_copy_seconds, machine
from psycopg import sql

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "write_speed"
MODEL = "bench-write-speed"
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "rows",
         "are", "written", "fast"]  # fmt: skip


def rows_for(n: int, dims: int, seed: int) -> list[tuple[str, str, np.ndarray[Any, Any]]]:
    """``(text, sha256, unit float32 vector)`` for ``n`` distinct chunks."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dims), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = []
    for i in range(n):
        text = f"[{seed}:{i}] " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(400))
        out.append((text, hashlib.sha256(text.encode()).hexdigest(), vectors[i]))
    return out


def bare(url: str, rows: list[tuple[str, str, Any]], dims: int) -> dict[str, float]:
    """COPY into an unindexed table, then one CREATE INDEX, each timed."""
    from pgvector.psycopg import register_vector

    from batch_embedder.db.index import build_memory_bytes
    from batch_embedder.db.schema import uses_halfvec, vector_type

    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        halfvec = uses_halfvec(conn, dims)
        copy_s = bare_copy_seconds(conn, rows)
        ops = sql.SQL("halfvec_cosine_ops" if halfvec else "vector_cosine_ops")
        memory = sql.Literal(f"{build_memory_bytes(len(rows), dims, halfvec) // 1024}kB")
        t = time.perf_counter()
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(memory))
            conn.execute(
                sql.SQL("CREATE INDEX ON bench_bare USING hnsw ((embedding::{}) {})").format(
                    vector_type(dims, halfvec), ops
                )
            )
        index_s = time.perf_counter() - t
        conn.execute("DROP TABLE bench_bare")
    return {"bare_copy_s": copy_s, "create_index_s": index_s}


def write(url: str, rows: list[tuple[str, str, Any]], dims: int, tag: str) -> tuple[float, bool]:
    """Load ``rows`` through ``ChunkWriter`` (50 chunks a document); seconds and whether
    the load went around the index."""
    from batch_embedder.db.connection import connect
    from batch_embedder.db.vectors import ChunkWriter
    from batch_embedder.records import ChunkRow

    with connect(url) as conn:
        t = time.perf_counter()
        writer = ChunkWriter(
            conn, bucket="bench", lock_keys=[f"{tag}/{i // 50}" for i in range(len(rows))],
            job_id=f"bench-{tag}", model=MODEL, dimensions=dims,
        )  # fmt: skip
        with writer:
            writer.copy_chunks(
                ChunkRow(seq=i, source_key=f"{tag}/{i // 50}", chunk_index=i % 50, text=text,
                         sha256=sha, token_count=400, char_start=0, char_end=len(text))
                for i, (text, sha, _) in enumerate(rows)
            )  # fmt: skip
            writer.copy_vectors((sha, vector) for _, sha, vector in rows)
            written, _, _ = writer.merge()
        seconds = time.perf_counter() - t
    assert written == len(rows), f"wrote {written} of {len(rows)}"
    return seconds, writer.rebuilt


def clean(url: str, dims: int) -> None:
    """Remove the benchmark's rows and index."""
    from batch_embedder.db.schema import index_name

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM batch_embedder.chunks WHERE model = %s AND dimensions = %s", (MODEL, dims)
        )
        conn.execute(
            sql.SQL("DROP INDEX IF EXISTS batch_embedder.{}").format(
                sql.Identifier(index_name(MODEL, dims))
            )
        )


def bench(url: str, n: int, small: int, dims: int) -> dict[str, Any]:
    """All figures for one dimension count."""
    from batch_embedder.db.connection import connect
    from batch_embedder.db.index import ensure_index, index_state

    rows = rows_for(n, dims, seed=dims)
    clean(url, dims)
    figures: dict[str, Any] = {"rows": n, "dimensions": dims}
    figures.update(bare(url, rows, dims))
    with connect(url) as conn:  # the index in place (empty) before the load
        ensure_index(conn, MODEL, dims)
        assert index_state(conn, MODEL, dims).valid
    writer_s, rebuilt = write(url, rows, dims, "bulk")
    with connect(url) as conn:
        assert index_state(conn, MODEL, dims).valid, "index not valid after the load"
    figures["writer_s"] = writer_s
    figures["writer_rebuilt_index"] = rebuilt
    bare_s = figures["bare_copy_s"] + figures["create_index_s"]
    figures["bare_copy_rows_s"] = round(n / figures["bare_copy_s"])
    figures["copy_plus_index_rows_s"] = round(n / bare_s)
    figures["writer_rows_s"] = round(n / writer_s)
    figures["ratio"] = round(bare_s / writer_s, 3)
    if small:
        small_s, small_rebuilt = write(url, rows_for(small, dims, seed=dims + 1), dims, "small")
        figures["insert_rows"] = small
        figures["insert_rows_s"] = round(small / small_s)
        figures["insert_rebuilt_index"] = small_rebuilt
    clean(url, dims)
    for key in ("bare_copy_s", "create_index_s", "writer_s"):
        figures[key] = round(figures[key], 2)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--small-rows", type=int, default=1_000, help="0 to skip")
    parser.add_argument("--dims", type=int, nargs="+", default=[1536])
    parser.add_argument("--database-url", default="", help="default: the embedded Postgres")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from batch_embedder_local.postgres import local_database_url

    if args.database_url:
        url = args.database_url
        from batch_embedder.db.connection import migrate_url

        migrate_url(url)
    else:
        WORK.mkdir(parents=True, exist_ok=True)
        url = local_database_url(WORK)
    with psycopg.connect(url) as conn:
        server = conn.execute(
            "SELECT current_setting('server_version'), extversion, "
            "current_setting('max_parallel_maintenance_workers'), "
            "current_setting('maintenance_work_mem'), current_setting('shared_buffers') "
            "FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
    assert server is not None
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "postgres": server[0],
        "pgvector": server[1],
        "max_parallel_maintenance_workers": int(server[2]),
        "maintenance_work_mem": server[3],
        "shared_buffers": server[4],
        "runs": [bench(url, args.rows, args.small_rows, d) for d in args.dims],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for key, value in report.items():
        if key != "runs":
            print(f"{key:34} {value}")
    columns = [
        ("dims", "dimensions"),
        ("rows", "rows"),
        ("COPY s", "bare_copy_s"),
        ("COPY rows/s", "bare_copy_rows_s"),
        ("CREATE INDEX s", "create_index_s"),
        ("writer s", "writer_s"),
        ("writer rows/s", "writer_rows_s"),
        ("ratio", "ratio"),
        ("insert rows/s", "insert_rows_s"),
    ]
    print()
    print(" | ".join(f"{title:>14}" for title, _ in columns))
    for run in report["runs"]:
        print(" | ".join(f"{run.get(key, '-')!s:>14}" for _, key in columns))
    print("\nratio = (COPY s + CREATE INDEX s) / writer s, per row; the issue's goal is >= 0.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
