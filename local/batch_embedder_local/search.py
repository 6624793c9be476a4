"""Search the local index: embed the query with the same provider, model and dimensions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import openai
from psycopg import sql

from batch_embedder.db.connection import connect
from batch_embedder.db.schema import SCHEMA
from batch_embedder.db.search import SearchHit, search_models
from batch_embedder.local_model import MODEL_NAME
from batch_embedder.openai.client import request_dimensions_for, request_model
from batch_embedder.openai.files import decode_embedding
from batch_embedder.openai.local_provider import embed_local
from batch_embedder.settings import Settings

from .postgres import local_database_url
from .stack import LOCAL_API_KEY, default_home
from .template import load_template, parameter_defaults


def search_local(
    query: str,
    *,
    k: int = 5,
    prefix: str = "",
    home: Path | None = None,
    openai_mode: str = "emulator",
    **_: object,
) -> list[SearchHit]:
    """The ``k`` chunks nearest to ``query`` in the local pgvector index, among keys
    starting with ``prefix``.

    The query is embedded with the model of the rows it searches: ``EMBEDDING_MODEL`` /
    ``EMBEDDING_DIMENSIONS`` when set, else the (model, dimensions) that holds the most
    rows of the index (``local-minilm`` after a default ``local ingest``), else the
    template's defaults.
    """
    url = local_database_url((home or default_home()).resolve())
    params = parameter_defaults(load_template())
    model = os.environ.get("EMBEDDING_MODEL", "")
    dimensions = int(os.environ.get("EMBEDDING_DIMENSIONS", "0"))
    if not model:
        indexed = indexed_models(url)
        model, dimensions = indexed[0][:2] if indexed else (params["EmbeddingModel"], 0)
    settings = Settings(embedding_model=model, embedding_dimensions=dimensions)
    if openai_mode == "openai":
        return nearest(url, openai.OpenAI(), query, settings, k=k, prefix=prefix)
    from .openai_server import EmulatorConfig, OpenAIEmulator

    with OpenAIEmulator(config=EmulatorConfig(api_key=LOCAL_API_KEY)) as emulator:
        client = openai.OpenAI(api_key=LOCAL_API_KEY, base_url=emulator.base_url)
        return nearest(url, client, query, settings, k=k, prefix=prefix)


def indexed_models(url: str) -> list[tuple[str, int, int]]:
    """``(model, dimensions, rows)`` of every model in the index, most rows first."""
    with connect(url) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT model, dimensions, count(*) FROM {}.chunks "
                "GROUP BY model, dimensions ORDER BY count(*) DESC, model"
            ).format(sql.Identifier(SCHEMA))
        ).fetchall()
    return [(str(m), int(str(d)), int(str(n))) for m, d, n in rows]


def nearest(
    url: str,
    client: openai.OpenAI,
    query: str,
    settings: Settings,
    *,
    k: int = 5,
    prefix: str = "",
) -> list[SearchHit]:
    """Embed ``query`` through ``client`` with the settings' model and dimensions (as the
    pipeline embeds), then the ``k`` nearest chunks in the database at ``url`` among keys
    starting with ``prefix``.

    Rows the local fallback wrote during an outage and the provider has not replaced yet
    are searched too, with the query embedded by the local model, and returned after the
    configured model's hits; every hit names its model (``db/search.search_models``).
    While the provider does not answer, only those rows are searched.
    """

    def embed_query(model: str, dimensions: int) -> np.ndarray[Any, Any]:
        if model == MODEL_NAME and settings.embedding_provider != "compatible":
            return embed_local([query]).vectors[0]
        scoped = settings.model_copy(
            update={"embedding_model": model, "embedding_dimensions": dimensions}
        )
        return _embed(client, query, scoped)

    with connect(url) as conn:
        return search_models(
            conn,
            embed_query,
            model=settings.embedding_model,
            dimensions=settings.dimensions,
            k=k,
            prefix=prefix,
            unavailable=(openai.APIConnectionError, openai.InternalServerError),
        )


def _embed(client: openai.OpenAI, text: str, settings: Settings) -> np.ndarray[Any, Any]:
    """The query's vector, asked as the pipeline asks (the provider's model name, e.g. an
    Azure deployment, and its ``dimensions``)."""
    model = settings.embedding_model
    dims = request_dimensions_for(settings, model, settings.dimensions)
    response = client.embeddings.create(
        model=request_model(settings, model),
        input=[text],
        encoding_format="base64",
        dimensions=dims if dims else openai.omit,
    )
    # With encoding_format="base64" asked explicitly, the SDK hands back the base64 string.
    return decode_embedding(response.data[0].embedding)
