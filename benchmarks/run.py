"""Benchmark of the end-to-end pipeline over the Python 3.11 documentation sources.

Prints figures, never asserts them. Corpus: the 497 ``_sources/**/*.rst.txt`` files of
Debian's ``python3.11-doc`` (fetched once with ``apt-get download`` into
``benchmarks/.corpus``). With ``--chunk-tokens 128`` it yields over 20,000 chunks.

Figures:
1. chunk+estimate MB/s (decode, chunk, count, price) and its ratio to tiktoken's own
   ``encode_ordinary`` MB/s on the same text;
2. JSONL build MB/s (request lines for the batch input files);
3. pgvector write rows/s through the project's writer with the HNSW index in place, and
   its ratio to a bare binary COPY of the same vectors into an unindexed table (issue 10's
   figure 4, COPY + a one-off CREATE INDEX, is ``benchmarks/write_speed.py``);
4. peak RSS of FetchAndWrite on the largest document;
5. end-to-end seconds of ``local ingest`` on the whole corpus, and the same excluding the
   emulator's simulated batch wait (the longest time any execution spent in WaitForBatch).

Usage: ``python benchmarks/run.py [--chunk-tokens 128] [--overlap 16] [--skip-e2e]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from common import bare_copy_seconds, machine
from pgvector.psycopg import register_vector

HERE = Path(__file__).resolve().parent
CORPUS_DIR = HERE / ".corpus"
WORK = HERE / ".work"
SOURCES = "usr/share/doc/python3.11/html/_sources"


def corpus() -> Path:
    """The extracted ``_sources`` folder, downloaded with apt-get on first use."""
    root = CORPUS_DIR / SOURCES
    if root.exists():
        return root
    CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "python3.11-doc"], cwd=CORPUS_DIR, check=True)
    deb = next(CORPUS_DIR.glob("python3.11-doc_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(CORPUS_DIR)], check=True)
    return root


def files(root: Path) -> list[tuple[str, bytes]]:
    """``(key, bytes)`` of every .rst.txt file."""
    return [
        (p.relative_to(root).as_posix(), p.read_bytes()) for p in sorted(root.rglob("*.rst.txt"))
    ]


def bench_chunking(
    docs: list[tuple[str, bytes]], chunk_tokens: int, overlap: int
) -> dict[str, Any]:
    from batch_embedder.chunking import chunk_text
    from batch_embedder.documents import decode_document
    from batch_embedder.openai import pricing
    from batch_embedder.tokenizer import get_encoding

    enc = get_encoding()
    texts = [decode_document(k, b) for k, b in docs]
    mb = sum(len(b) for _, b in docs) / 1e6
    t = time.perf_counter()
    for text in texts:
        enc.encode_ordinary(text)
    encode_s = time.perf_counter() - t
    t = time.perf_counter()
    all_chunks = []
    for key, body in docs:
        chunks = chunk_text(
            decode_document(key, body),
            max_tokens=chunk_tokens,
            overlap_tokens=overlap,
            encoding=enc,
        )
        pricing.breakdown("text-embedding-3-small", sum(c.token_count for c in chunks))
        all_chunks.append((key, chunks))
    chunk_s = time.perf_counter() - t
    n = sum(len(c) for _, c in all_chunks)
    tokens = sum(c.token_count for _, cs in all_chunks for c in cs)
    return {
        "corpus_mb": round(mb, 2),
        "documents": len(docs),
        "chunks": n,
        "tokens": tokens,
        "encode_ordinary_mb_s": round(mb / encode_s, 2),
        "chunk_estimate_mb_s": round(mb / chunk_s, 2),
        "chunk_vs_encode_ratio": round(encode_s / chunk_s, 3),
        "_chunks": all_chunks,
    }


def bench_jsonl(all_chunks: list[tuple[str, Any]]) -> dict[str, Any]:
    from batch_embedder.openai.batch_files import write_batch_files

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        out_bytes = 0
        for i, (_, chunks) in enumerate(all_chunks):
            planned = write_batch_files(
                ((c.index, c.text, c.token_count) for c in chunks),
                job_id=f"bench-{i}", model="text-embedding-3-small", dimensions=None,
                directory=Path(tmp),
            )  # fmt: skip
            out_bytes += sum(f.bytes for f in planned)
        seconds = time.perf_counter() - t
    in_mb = sum(len(c.text.encode()) for _, cs in all_chunks for c in cs) / 1e6
    return {
        "jsonl_mb": round(out_bytes / 1e6, 2),
        "jsonl_build_mb_s": round(out_bytes / 1e6 / seconds, 2),
        "jsonl_chunk_text_mb": round(in_mb, 2),
    }


def bench_pgvector(url: str, all_chunks: list[tuple[str, Any]], rows: int) -> dict[str, Any]:
    from batch_embedder.db.connection import connect
    from batch_embedder.db.vectors import ChunkWriter
    from batch_embedder.records import ChunkRow
    from batch_embedder_local.openai_server import embed_texts

    flat = [c for _, cs in all_chunks for c in cs][:rows]
    t = time.perf_counter()
    vectors = embed_texts([c.text for c in flat], 1536, "text-embedding-3-small")
    embed_s = time.perf_counter() - t
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(conn)
        bare_s = bare_copy_seconds(
            conn, ((c.text, c.sha256, vectors[i]) for i, c in enumerate(flat))
        )
        conn.execute("DROP TABLE bench_bare")
    with connect(url) as conn:
        t = time.perf_counter()
        with ChunkWriter(
            conn, bucket="bench", lock_keys=[f"bench/{i}" for i in range(len(flat) // 50 + 1)],
            job_id="bench", model="text-embedding-3-small", dimensions=1536,
        ) as writer:  # fmt: skip
            writer.copy_chunks(
                ChunkRow(seq=i, source_key=f"bench/{i // 50}", chunk_index=i % 50, text=c.text,
                         sha256=c.sha256, token_count=c.token_count, char_start=c.char_start,
                         char_end=c.char_end)
                for i, c in enumerate(flat)
            )  # fmt: skip
            writer.copy_vectors((c.sha256, vectors[i]) for i, c in enumerate(flat))
            written, _, _ = writer.merge()
        indexed_s = time.perf_counter() - t
        conn.execute("DELETE FROM batch_embedder.chunks WHERE source_bucket = 'bench'")
        conn.commit()
    return {
        "pg_rows": len(flat),
        "emulator_embed_per_s": round(len(flat) / embed_s),
        "bare_copy_rows_s": round(len(flat) / bare_s),
        "hnsw_write_rows_s": round(written / indexed_s),
        "hnsw_vs_bare_ratio": round(bare_s / indexed_s, 3),
    }


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def fetch_and_write_rss(stack: Any, arn: str) -> dict[str, Any]:
    """Peak RSS FetchAndWrite adds, measured alone on the largest job once all are done.

    The job's FetchAndWrite input is taken from its history and run again in-process (it
    is idempotent: the same rows come out); Linux's VmHWM is reset first (clear_refs 5).
    """
    from batch_embedder.models import WriteInput
    from batch_embedder.settings import get_settings
    from batch_embedder.steps.write import fetch_and_write

    payload = next(
        json.loads(e["stateEnteredEventDetails"]["input"])
        for e in stack.history(arn)
        if e.get("stateEnteredEventDetails", {}).get("name") == "FetchAndWrite"
    )
    job = WriteInput.model_validate(payload)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    before = _status_kb("VmRSS")
    fetch_and_write(job, get_settings())
    peak = _status_kb("VmHWM")
    return {
        "fetch_and_write_job_chunks": job.chunks,
        "fetch_and_write_peak_rss_increase_mb": round((peak - before) / 1024, 1),
    }


def index_at_end(database_url: str, output: dict[str, Any]) -> dict[str, Any]:
    """The model's HNSW index once every execution has finished: whether it is valid
    (issue 10's figure 2 counts until the rows are searchable with the index in place) and
    the rows it holds (``db.index.index_state``)."""
    from batch_embedder.db.index import index_state

    with psycopg.connect(database_url) as conn:
        state = index_state(conn, str(output["model"]), int(output["dimensions"]))
    return {"index_valid_at_end": state.valid, "index_rows_at_end": state.rows}


def wait_seconds(stack: Any, arn: str) -> float:
    """Seconds the execution spent waiting for its batches (the WaitForBatches task)."""
    total = 0.0
    entered = None
    for event in stack.history(arn):
        name = (event.get("stateEnteredEventDetails") or event.get("stateExitedEventDetails")
                or {}).get("name")  # fmt: skip
        if name != "WaitForBatches":
            continue
        if event["type"] == "TaskStateEntered":
            entered = event["timestamp"]
        elif event["type"] == "TaskStateExited" and entered is not None:
            total += (event["timestamp"] - entered).total_seconds()
            entered = None
    return total


def bench_e2e(
    home: Path, docs: list[tuple[str, bytes]], chunk_tokens: int, overlap: int
) -> dict[str, Any]:
    from batch_embedder_local.stack import LocalStack

    params = {"ChunkTokens": str(chunk_tokens), "ChunkOverlapTokens": str(overlap)}
    with LocalStack(home, parameters=params, log_file=home / "lambda.log") as stack:
        t = time.perf_counter()
        results = stack.ingest(docs, timeout=3600, interval=1.0)  # the pipe groups them
        wall = time.perf_counter() - t
        waits = [wait_seconds(stack, r.execution_arn) for r in results]
        stats = stack.emulator.stats()
        largest = max(
            (r for r in results if r.status == "SUCCEEDED"), key=lambda r: r.output["chunks"]
        )
        index = index_at_end(stack.database_url, largest.output)
        rss = fetch_and_write_rss(stack, largest.execution_arn)
    ok = [r for r in results if r.status == "SUCCEEDED"]
    handler_s: dict[str, float] = {}
    for logical, seconds, _ in stack.adapter.invocations:
        handler_s[logical] = handler_s.get(logical, 0.0) + seconds
    return {
        "executions": len(results),
        "succeeded": len(ok),
        "chunks": sum(r.output.get("chunks", 0) for r in ok),
        "vectors_written": sum(r.output.get("vectors_written", 0) for r in ok),
        "billed_tokens": sum(r.output.get("billed_tokens", 0) for r in ok),
        "cost_usd": round(sum(r.output.get("cost_usd", 0.0) for r in ok), 6),
        "standard_cost_usd": round(sum(r.output.get("standard_cost_usd", 0.0) for r in ok), 6),
        "e2e_seconds": round(wall, 1),
        "longest_simulated_wait_s": round(max(waits, default=0.0), 1),
        "e2e_seconds_excluding_wait": round(wall - max(waits, default=0.0), 1),
        **index,
        **rss,
        "handler_seconds": {k: round(v, 1) for k, v in sorted(handler_s.items())},
        "emulator": stats,
        "failed": [(r.key, r.failed_state, r.cause) for r in results if r.status != "SUCCEEDED"][
            :5
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-tokens", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--pg-rows", type=int, default=20_000)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--limit", type=int, default=0, help="only the first N files (a quick check)"
    )
    args = parser.parse_args()

    from batch_embedder_local.postgres import local_database_url

    docs = files(corpus())
    if args.limit:
        docs = docs[: args.limit]
    for sub in ("pg", "e2e"):  # only this script's; peers.py keeps its venvs in WORK/peers
        shutil.rmtree(WORK / sub, ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "chunk_tokens": args.chunk_tokens,
        "overlap_tokens": args.overlap,
    }
    chunking = bench_chunking(docs, args.chunk_tokens, args.overlap)
    all_chunks = chunking.pop("_chunks")
    figures.update(chunking)
    figures.update(bench_jsonl(all_chunks))
    url = local_database_url(WORK / "pg")
    figures.update(bench_pgvector(url, all_chunks, args.pg_rows))
    if not args.skip_e2e:
        figures["e2e"] = bench_e2e(WORK / "e2e", docs, args.chunk_tokens, args.overlap)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
