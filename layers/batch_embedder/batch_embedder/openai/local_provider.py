"""The ``local`` provider: the local model (``local_model.py``) behind the synchronous path.

``EMBEDDING_PROVIDER=local`` (with ``EMBEDDING_MODEL=local-minilm``) embeds every document
in EmbedSync, in-process: no HTTP request, no API key, no rate limit (there is no remote
requests- or tokens-per-minute to respect, so the token bucket is not consulted). The same
function embeds urgent documents during a provider outage with ``FALLBACK_PROVIDER=local``
(``steps/fallback.py``).

Usage is counted as the provider would count it: the model's own word pieces per input
(``LocalEmbeddingModel.count_tokens``, ``[CLS]`` and ``[SEP]`` included), priced at 0 (the
``local`` table of ``openai/pricing.py``). The local emulator serving ``local-minilm``
counts the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..local_model import DIMENSIONS, MODEL_NAME, get_local_model

__all__ = ["DIMENSIONS", "MODEL_NAME", "LocalResult", "embed_local"]


@dataclass(frozen=True)
class LocalResult:
    """Vectors in input order and each input's usage.

    Attributes:
        vectors: float32 arrays of 384 dimensions, L2 norm 1.
        tokens: word pieces of each input (``[CLS]``/``[SEP]`` included, before the
            model's 256-piece truncation): what the usage counts.
    """

    vectors: list[np.ndarray[Any, Any]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    @property
    def billed_tokens(self) -> int:
        """Every input's word pieces (priced 0)."""
        return sum(self.tokens)


def embed_local(texts: Sequence[str]) -> LocalResult:
    """Embed ``texts`` with the local model (one process-wide instance).

    Returns:
        :class:`LocalResult`; empty for no texts.

    Raises:
        LocalModelUnavailableError: the ``local-model`` extra is not installed, or a model
            file does not have its pinned SHA-256 (``local_model.py``).
        TypeError: ``texts`` is a single string or holds a non-string.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    if not texts:
        return LocalResult()
    model = get_local_model()
    vectors = model.embed(texts)
    return LocalResult(
        vectors=[vectors[i] for i in range(len(texts))], tokens=model.count_tokens(texts)
    )
