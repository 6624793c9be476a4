"""LlamaIndex's incremental ingest: run by ``benchmarks/peers.py`` in its own venv.

An ``IngestionPipeline`` (``TokenTextSplitter`` on cl100k_base with ``--chunk-tokens`` /
``--overlap``, then ``OpenAIEmbedding``) writing to a ``PGVectorStore`` with an HNSW index
(``hnsw_kwargs``, ``vector_cosine_ops``), with a ``SimpleDocumentStore`` and an
``IngestionCache`` persisted under ``--state`` between runs, so that a document whose hash
is unchanged is skipped (``DocstoreStrategy.UPSERTS``) and a changed one is re-split,
re-embedded and replaced. Each document's id is its path under ``--corpus``.
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` come from the environment.

Docs: https://docs.llamaindex.ai/en/stable/module_guides/loading/ingestion_pipeline/

Prints one JSON line: ``{"seconds", "files", "nodes_written"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import tiktoken  # type: ignore[import-not-found,unused-ignore]
from llama_index.core import Document  # type: ignore[import-not-found,unused-ignore]
from llama_index.core.ingestion import (  # type: ignore[import-not-found,unused-ignore]
    DocstoreStrategy,
    IngestionCache,
    IngestionPipeline,
)
from llama_index.core.node_parser import (  # type: ignore[import-not-found,unused-ignore]
    TokenTextSplitter,
)
from llama_index.core.storage.docstore import (  # type: ignore[import-not-found,unused-ignore]
    SimpleDocumentStore,
)
from llama_index.embeddings.openai import (  # type: ignore[import-not-found,unused-ignore]
    OpenAIEmbedding,
)
from llama_index.vector_stores.postgres import (  # type: ignore[import-not-found,unused-ignore]
    PGVectorStore,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--corpus", "--db", "--state", "--model"):
        parser.add_argument(name, required=True)
    for name in ("--dimensions", "--chunk-tokens", "--overlap"):
        parser.add_argument(name, type=int, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    store = PGVectorStore.from_params(
        connection_string=args.db.replace("postgresql://", "postgresql+psycopg2://", 1),
        async_connection_string=args.db.replace("postgresql://", "postgresql+asyncpg://", 1),
        table_name="docs",
        embed_dim=args.dimensions,
        hnsw_kwargs={
            "hnsw_m": 16,
            "hnsw_ef_construction": 64,
            "hnsw_ef_search": 40,
            "hnsw_dist_method": "vector_cosine_ops",
        },
    )
    encoding = tiktoken.get_encoding("cl100k_base")
    pipeline = IngestionPipeline(
        transformations=[
            TokenTextSplitter(
                chunk_size=args.chunk_tokens,
                chunk_overlap=args.overlap,
                separator=" ",
                tokenizer=encoding.encode,
            ),
            OpenAIEmbedding(
                model=args.model,
                api_base=os.environ["OPENAI_BASE_URL"],
                api_key=os.environ["OPENAI_API_KEY"],
            ),
        ],
        vector_store=store,
        docstore=SimpleDocumentStore(),
        cache=IngestionCache(),
        docstore_strategy=DocstoreStrategy.UPSERTS,
    )
    persist_dir = Path(args.state) / "pipeline"
    if persist_dir.exists():
        pipeline.load(str(persist_dir))
    root = Path(args.corpus)
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    docs = [
        Document(
            text=p.read_text("utf-8"),
            id_=p.relative_to(root).as_posix(),
            metadata={"source": p.relative_to(root).as_posix()},
        )
        for p in paths
    ]
    nodes = pipeline.run(documents=docs)
    pipeline.persist(str(persist_dir))
    print(
        json.dumps(
            {
                "seconds": round(time.perf_counter() - started, 2),
                "files": len(paths),
                "nodes_written": len(nodes),
            }
        )
    )


if __name__ == "__main__":
    main()
