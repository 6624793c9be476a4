"""LangChain's incremental ingest: run by ``benchmarks/peers.py`` in its own venv.

``langchain_core.indexing.index()`` (cleanup ``incremental``, ``source_id_key`` the file's
path) with an ``SQLRecordManager`` in the same database, a ``PGVector`` store
(langchain-postgres, JSONB metadata) whose table gets an HNSW index (``vector_cosine_ops``)
before the first row, and ``CacheBackedEmbeddings`` over ``OpenAIEmbeddings`` with a
``LocalFileStore`` under ``--state`` (keys: sha256 of the text). Chunks:
``TokenTextSplitter`` (cl100k_base, ``--chunk-tokens`` / ``--overlap``).
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` come from the environment.

Docs: https://python.langchain.com/docs/how_to/indexing/ and
https://python.langchain.com/docs/how_to/caching_embeddings/

Prints one JSON line: ``{"seconds", "files", "chunks", "num_added", "num_updated",
"num_skipped", "num_deleted"}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from langchain_classic.embeddings import (  # type: ignore[import-not-found,unused-ignore]
    CacheBackedEmbeddings,
)
from langchain_classic.indexes import (  # type: ignore[import-not-found,unused-ignore]
    SQLRecordManager,
)
from langchain_classic.storage import LocalFileStore  # type: ignore[import-not-found,unused-ignore]
from langchain_core.documents import Document  # type: ignore[import-not-found,unused-ignore]
from langchain_core.indexing import index  # type: ignore[import-not-found,unused-ignore]
from langchain_openai import OpenAIEmbeddings  # type: ignore[import-not-found,unused-ignore]
from langchain_postgres import PGVector  # type: ignore[import-not-found,unused-ignore]
from langchain_text_splitters import (  # type: ignore[import-not-found,unused-ignore]
    TokenTextSplitter,
)
from sqlalchemy import text  # type: ignore[import-not-found,unused-ignore]

COLLECTION = "docs"


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--corpus", "--db", "--state", "--model"):
        parser.add_argument(name, required=True)
    for name in ("--dimensions", "--chunk-tokens", "--overlap"):
        parser.add_argument(name, type=int, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    url = args.db.replace("postgresql://", "postgresql+psycopg://", 1)
    underlying = OpenAIEmbeddings(model=args.model, check_embedding_ctx_length=False)
    embeddings = CacheBackedEmbeddings.from_bytes_store(
        underlying,
        LocalFileStore(str(Path(args.state) / "embedding-cache")),
        namespace=args.model,
        key_encoder="sha256",
    )
    store = PGVector(
        embeddings=embeddings,
        collection_name=COLLECTION,
        connection=url,
        embedding_length=args.dimensions,
        use_jsonb=True,
    )
    with store.session_maker() as session:
        session.execute(
            text(
                "CREATE INDEX IF NOT EXISTS langchain_pg_embedding_hnsw ON langchain_pg_embedding "
                "USING hnsw (embedding vector_cosine_ops)"
            )
        )
        session.commit()
    records = SQLRecordManager(f"pgvector/{COLLECTION}", db_url=url)
    records.create_schema()
    splitter = TokenTextSplitter(
        encoding_name="cl100k_base", chunk_size=args.chunk_tokens, chunk_overlap=args.overlap
    )
    root = Path(args.corpus)
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    docs = [
        Document(
            page_content=p.read_text("utf-8"), metadata={"source": p.relative_to(root).as_posix()}
        )
        for p in paths
    ]
    chunks = splitter.split_documents(docs)
    result = index(
        chunks, records, store, cleanup="incremental", source_id_key="source", key_encoder="sha256"
    )
    print(
        json.dumps(
            {
                "seconds": round(time.perf_counter() - started, 2),
                "files": len(paths),
                "chunks": len(chunks),
                **{k: int(v) for k, v in result.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
