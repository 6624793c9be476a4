"""Search the local index: embed the query with the same provider, model and dimensions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import openai

from batch_embedder.db.connection import connect
from batch_embedder.db.vectors import SearchHit, search
from batch_embedder.openai.files import decode_embedding
from batch_embedder.settings import Settings, request_dimensions

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

    Model and dimensions are the template's defaults unless ``EMBEDDING_MODEL`` /
    ``EMBEDDING_DIMENSIONS`` are set, as for ingest.
    """
    params = parameter_defaults(load_template())
    settings = Settings(
        embedding_model=os.environ.get("EMBEDDING_MODEL", params["EmbeddingModel"]),
        embedding_dimensions=int(
            os.environ.get("EMBEDDING_DIMENSIONS", params["EmbeddingDimensions"])
        ),
    )
    url = local_database_url((home or default_home()).resolve())
    if openai_mode == "openai":
        return nearest(url, openai.OpenAI(), query, settings, k=k, prefix=prefix)
    from .openai_server import EmulatorConfig, OpenAIEmulator

    with OpenAIEmulator(config=EmulatorConfig(api_key=LOCAL_API_KEY)) as emulator:
        client = openai.OpenAI(api_key=LOCAL_API_KEY, base_url=emulator.base_url)
        return nearest(url, client, query, settings, k=k, prefix=prefix)


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
    starting with ``prefix``."""
    vector = _embed(client, query, settings)
    with connect(url) as conn:
        return search(
            conn,
            vector,
            model=settings.embedding_model,
            dimensions=settings.dimensions,
            k=k,
            prefix=prefix,
        )


def _embed(client: openai.OpenAI, text: str, settings: Settings) -> np.ndarray[Any, Any]:
    dims = request_dimensions(settings.embedding_model, settings.dimensions)
    response = client.embeddings.create(
        model=settings.embedding_model,
        input=[text],
        encoding_format="base64",
        dimensions=dims if dims else openai.omit,
    )
    # With encoding_format="base64" asked explicitly, the SDK hands back the base64 string.
    return decode_embedding(response.data[0].embedding)
