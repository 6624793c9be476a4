"""A naive asyncio ingest, as people write it: run by ``benchmarks/peers.py`` in its own venv.

Per file: sha256 of its bytes; a file whose hash is already in ``files`` is skipped (one
SELECT); otherwise its old rows are deleted, its text split into windows of
``--chunk-tokens`` cl100k_base tokens overlapping by ``--overlap`` (tiktoken), and every
chunk embedded again with ``openai.AsyncOpenAI`` (one request per batch of
``BATCH`` chunks, ``CONCURRENCY`` requests in flight), then written with plain
``INSERT ... VALUES`` (executemany, no COPY) into a table with an HNSW index.
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` come from the environment.

Prints one JSON line: ``{"seconds", "files", "changed_files", "chunks_embedded"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from pathlib import Path

import psycopg  # type: ignore[import-not-found,unused-ignore]
import tiktoken  # type: ignore[import-not-found,unused-ignore]
from openai import AsyncOpenAI  # type: ignore[import-not-found,unused-ignore]
from pgvector.psycopg import register_vector  # type: ignore[import-not-found,unused-ignore]

BATCH = 100
CONCURRENCY = 8

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (path text PRIMARY KEY, sha256 text NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id bigserial PRIMARY KEY, path text NOT NULL, chunk_index int NOT NULL,
    text text NOT NULL, embedding vector({dims}) NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks (path);
CREATE INDEX IF NOT EXISTS chunks_hnsw ON chunks USING hnsw (embedding vector_cosine_ops);
"""


def split(enc: tiktoken.Encoding, text: str, size: int, overlap: int) -> list[str]:
    """Windows of ``size`` tokens, each starting ``size - overlap`` after the last."""
    tokens = enc.encode_ordinary(text)
    step = size - overlap
    return [enc.decode(tokens[i : i + size]) for i in range(0, max(len(tokens) - overlap, 1), step)]


async def embed_all(client: AsyncOpenAI, texts: list[str], model: str) -> list[list[float]]:
    """One request per ``BATCH`` texts, at most ``CONCURRENCY`` at a time."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(batch: list[str]) -> list[list[float]]:
        async with gate:
            answer = await client.embeddings.create(model=model, input=batch)
        return [d.embedding for d in answer.data]

    parts = await asyncio.gather(*(one(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)))
    return [v for part in parts for v in part]


async def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--corpus", "--db", "--state", "--model"):
        parser.add_argument(name, required=True)
    for name in ("--dimensions", "--chunk-tokens", "--overlap"):
        parser.add_argument(name, type=int, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    enc = tiktoken.get_encoding("cl100k_base")
    root = Path(args.corpus)
    with psycopg.connect(args.db, autocommit=True) as conn:
        conn.execute(SCHEMA.format(dims=int(args.dimensions)))
        register_vector(conn)
        changed: list[tuple[str, str, list[str]]] = []
        paths = sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            key = path.relative_to(root).as_posix()
            body = path.read_bytes()
            digest = hashlib.sha256(body).hexdigest()
            row = conn.execute("SELECT sha256 FROM files WHERE path = %s", (key,)).fetchone()
            if row and row[0] == digest:
                continue
            text = body.decode("utf-8")
            changed.append((key, digest, split(enc, text, args.chunk_tokens, args.overlap)))
        texts = [t for _, _, chunks in changed for t in chunks]
        client = AsyncOpenAI()
        vectors = await embed_all(client, texts, args.model)
        position = 0
        with conn.transaction(), conn.cursor() as cur:
            for key, digest, chunks in changed:
                cur.execute("DELETE FROM chunks WHERE path = %s", (key,))
                cur.executemany(
                    "INSERT INTO chunks (path, chunk_index, text, embedding) "
                    "VALUES (%s, %s, %s, %s::vector)",
                    [(key, i, chunk, str(vectors[position + i])) for i, chunk in enumerate(chunks)],
                )
                position += len(chunks)
                cur.execute(
                    "INSERT INTO files (path, sha256) VALUES (%s, %s) "
                    "ON CONFLICT (path) DO UPDATE SET sha256 = EXCLUDED.sha256",
                    (key, digest),
                )
    print(
        json.dumps(
            {
                "seconds": round(time.perf_counter() - started, 2),
                "files": len(paths),
                "changed_files": len(changed),
                "chunks_embedded": len(texts),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
