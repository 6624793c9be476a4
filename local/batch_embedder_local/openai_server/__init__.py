"""Local OpenAI-compatible server for the batch-embedder dev stack (never deployed).

Emulates ``/v1/embeddings``, ``/v1/files`` and ``/v1/batches`` (and Azure OpenAI's shapes of
them under ``/openai``) closely enough for the official ``openai`` SDK, following
``docs/openai-limits.md``; Starlette app (:mod:`.app`) served by uvicorn (:mod:`.server`).
The vectors are deterministic feature-hashing stand-ins, NOT OpenAI's embeddings, unless a
model backend is registered with :func:`register_model`.

Public API::

    from batch_embedder_local.openai_server import OpenAIEmulator, EmulatorConfig, embed_texts

    with OpenAIEmulator(EmulatorConfig(batch_in_progress_seconds=0.1)) as emu:
        client = openai.OpenAI(api_key="local", base_url=emu.base_url)
"""

from __future__ import annotations

from .config import EmulatorConfig
from .embeddings import MODELS, embed_texts, register_model
from .server import OpenAIEmulator, main

__all__ = ["MODELS", "EmulatorConfig", "OpenAIEmulator", "embed_texts", "main", "register_model"]
